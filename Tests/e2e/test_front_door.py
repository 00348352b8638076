"""The front door under clients that misbehave: h2c connections that only ping or trickle, bodies
the answer does not need, Expect: 100-continue, and draining on SIGTERM."""
import os
import signal
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events

from conftest import one_route_sheaf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def closed_within(sock, seconds, keep_alive=None):
    """Reads until EOF; returns the seconds it took, or None if still open after `seconds`.
    `keep_alive` is called every 200 ms (e.g. to send a PING)."""
    sock.settimeout(0.2)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if keep_alive:
            try:
                keep_alive()
            except OSError:
                return time.monotonic() - start
    return None


def h2_client(port):
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def test_an_h2c_connection_that_only_pings_is_closed_after_client_timeout(workdir, demo):
    s = one_route_sheaf(workdir, "pinger", demo, top="client_timeout: 1s")
    try:
        sock, conn = h2_client(s.port)

        def ping():
            conn.ping(b"12345678")
            sock.sendall(conn.data_to_send())

        took = closed_within(sock, 6, keep_alive=ping)
        assert took is not None, "the pinging connection was still open after 6 s"
        assert 0.8 < took < 3, took
    finally:
        s.stop()


def test_a_trickled_preface_is_cut_at_client_timeout(workdir, demo):
    s = one_route_sheaf(workdir, "trickle", demo, top="client_timeout: 1s")
    try:
        sock = socket.create_connection(("127.0.0.1", s.port))
        sent = iter(PREFACE)

        def trickle():
            b = next(sent, None)
            if b is not None:
                sock.sendall(bytes([b]))

        took = closed_within(sock, 6, keep_alive=trickle)
        assert took is not None, "the trickling connection was still open after 6 s"
        assert took < 3, took
    finally:
        s.stop()


def read_head(sock, timeout=3):
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_body_the_answer_does_not_need_is_not_waited_for(sheaf):
    # A 100 MB body announced for a path with no route: the 404 comes at once, the connection closes.
    sock = socket.create_connection(("127.0.0.1", sheaf.port))
    sock.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{")
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 404"), head
    assert b"connection: close" in head.lower()
    assert closed_within(sock, 5) is not None
    # Chunked and trickling: the same.
    sock = socket.create_connection(("127.0.0.1", sheaf.port))
    sock.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 404"), head


def test_expect_100_continue(sheaf):
    body = b'{"ids":[1,2]}'
    sock = socket.create_connection(("127.0.0.1", sheaf.port))
    sock.sendall(b"POST /bulk/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 100 Continue"), head
    sock.sendall(body)
    head = read_head(sock)
    assert b"HTTP/1.1 207" in head, head
    # Expect on a request the head alone answers: the answer comes without the body.
    sock = socket.create_connection(("127.0.0.1", sheaf.port))
    sock.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 404")


def test_drain_sends_goaway_then_finishes_the_batch(workdir, demo):
    s = one_route_sheaf(workdir, "drain-h2", demo, top="drain_timeout: 10s")
    sock, conn = h2_client(s.port)
    body = b'{"requests":[{"method":"GET","url":"/users/1?delay_ms=1500"},{"method":"GET","url":"/users/2?delay_ms=1500"}]}'
    conn.send_headers(1, [(":method", "POST"), (":path", "/slow"), (":scheme", "http"), (":authority", "x"),
                          ("content-type", "application/json"), ("content-length", str(len(body)))])
    conn.send_data(1, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    time.sleep(0.3)
    os.kill(s.process.pid, signal.SIGTERM)
    # Read raw frames: the h2 library stops reading a connection once it sees GOAWAY.
    sock.settimeout(5)
    buf = b""
    saw_goaway = False
    status207 = None
    data_207 = b""
    ended = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ended:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if len(buf) < 9 + length:
                break
            ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = buf[9:9 + length]
            buf = buf[9 + length:]
            if ftype == 7:
                saw_goaway = True
            elif ftype == 1 and stream == 1:
                status207 = True  # the 207 head (HPACK-coded); its body is checked below
            elif ftype == 0 and stream == 1:
                pad = payload[0] if flags & 0x8 else 0
                data_207 += payload[1 if flags & 0x8 else 0:len(payload) - pad]
                if flags & 0x1:
                    ended = True
    assert saw_goaway
    assert status207 and ended
    import json
    assert sorted(x["status"] for x in json.loads(data_207)["results"]) == [200, 200]
    assert s.process.proc.wait(timeout=15) == 0
