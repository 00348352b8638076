"""Upstreams behind TLS, against nginx with a CA made by openssl in the test: HTTP/2 over TLS
(`protocol: h2`), ALPN auto-detection (`protocol: auto`, the default), `server_name`, mTLS,
`insecure_skip_verify`, and TLS failures named per item and counted by kind."""
import contextlib
import os
import re
import shutil
import socket
import ssl
import struct
import threading
import time

import httpx
import pytest

from conftest import fan_out_sheaf
from helpers import results_by_id


def _tls_sheaf(workdir, name, port, extra="", protocol="protocol: h2, "):
    return fan_out_sheaf(workdir, name, f'{{url: "https://127.0.0.1:{port}", {protocol}{extra}}}', "/users/{item}",
                         max_items=5000)


def _items(s, ids):
    r = httpx.post(s.url + "/b", json=ids, timeout=120)
    assert r.status_code == 207
    doc, by_id = results_by_id(r.text)
    assert sorted(int(k) for k in by_id) == list(range(len(ids))), "an item is missing"
    return [by_id[str(i)] for i in range(len(ids))]


def _tls_failures(s):
    text = httpx.get(s.url + "/metrics").text
    found = {}
    for kind, value in re.findall(r'^sheaf_upstream_tls_failures_total\{[^}]*kind="(\w+)"[^}]*\} (\S+)$', text, re.M):
        found[kind] = float(value)
    return found


def test_h2_over_tls_to_nginx(workdir, nginx):
    """protocol: h2 with an https url: HTTP/2 over TLS (ALPN h2), the certificate checked against ca_file."""
    s = _tls_sheaf(workdir, "h2tls", nginx.h2tls, f"ca_file: {nginx.ca}")
    try:
        items = _items(s, list(range(30)))
        assert all(x["status"] == 200 and x["body"]["via"] == "nginx-h2-tls" for x in items), items
        lines = [l for l in nginx.access_lines() if "/users/" in l and "HTTP/2.0" in l]
        assert len(lines) >= 30
    finally:
        s.stop()


def test_5000_items_over_h2_tls_cross_nginx_goaway(workdir, nginx):
    """nginx ends each HTTP/2 connection after 1000 requests: over TLS too, every item exactly once."""
    s = _tls_sheaf(workdir, "h2tls-5000", nginx.h2tls, f"ca_file: {nginx.ca}")
    try:
        before = len(nginx.access_lines())
        items = _items(s, list(range(1, 5001)))
        assert all(x["status"] == 200 and x["body"]["id"] == i + 1 for i, x in enumerate(items))
        lines = nginx.access_lines()[before:]
        assert len(lines) == 5000, "nginx saw a different number of requests than items"
        assert all(line.endswith("HTTP/2.0 200") for line in lines), lines[:3]
        connections = {line.split()[0] for line in lines}
        assert len(connections) >= 5
    finally:
        s.stop()


def test_h2_over_tls_failures_are_named_per_item(workdir, nginx):
    untrusted = _tls_sheaf(workdir, "h2tls-untrusted", nginx.h2tls)
    no_h2 = _tls_sheaf(workdir, "h2tls-alpn", nginx.https, f"ca_file: {nginx.ca}")
    try:
        items = _items(untrusted, [1, 2])
        assert [x["status"] for x in items] == [502, 502]
        assert all("certificate verify failed" in x["error"] for x in items), items
        # BoringSSL's reason, not a dump of NIOSSL's error values.
        assert all("CERTIFICATE_VERIFY_FAILED" in x["error"] and "NIOSSL" not in x["error"] for x in items), items
        assert _tls_failures(untrusted).get("certificate", 0) >= 1
        items = _items(no_h2, [1, 2])
        assert [x["status"] for x in items] == [502, 502]
        assert all("did not agree to HTTP/2 over TLS" in x["error"] for x in items), items
        assert _tls_failures(no_h2).get("alpn", 0) >= 1
    finally:
        untrusted.stop()
        no_h2.stop()


@pytest.mark.parametrize("port_name,via,wire", [("h2tls", "nginx-h2-tls", "HTTP/2.0"), ("https", "nginx-tls", "HTTP/1.1")])
def test_auto_on_https_follows_what_alpn_picks(workdir, nginx, port_name, via, wire):
    """The default protocol on an https url offers h2 and http/1.1 and speaks what nginx picks."""
    s = _tls_sheaf(workdir, f"auto-{port_name}", getattr(nginx, port_name), f"ca_file: {nginx.ca}", protocol="")
    try:
        before = len(nginx.access_lines())
        for _ in range(2):
            items = _items(s, list(range(1, 21)))
            assert all(x["status"] == 200 and x["body"]["via"] == via for x in items), items
        lines = nginx.access_lines()[before:]
        assert len(lines) == 40 and all(wire in line for line in lines), lines[:3]
        decisions = [l for l in s.process.output().splitlines() if "using HTTP/1.1" in l]
        assert len(decisions) == (1 if wire == "HTTP/1.1" else 0), decisions
    finally:
        s.stop()


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_server_name_sets_sni_and_the_name_verified(workdir, nginx, protocol):
    port = nginx.h2tls
    right = _tls_sheaf(workdir, f"sni-ok-{protocol}", port, f"ca_file: {nginx.ca}, server_name: localhost",
                       protocol=f"protocol: {protocol}, ")
    wrong = _tls_sheaf(workdir, f"sni-bad-{protocol}", port, f"ca_file: {nginx.ca}, server_name: wrong.example",
                       protocol=f"protocol: {protocol}, ")
    try:
        assert all(x["status"] == 200 for x in _items(right, [1, 2, 3]))
        items = _items(wrong, [1, 2])
        assert [x["status"] for x in items] == [502, 502]
        assert all("hostname mismatch" in x["error"] and "wrong.example" in x["error"] for x in items), items
        assert _tls_failures(wrong).get("hostname", 0) >= 1
    finally:
        right.stop()
        wrong.stop()


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_mtls_client_certificate_accepted_and_refused(workdir, nginx, protocol):
    with_cert = _tls_sheaf(workdir, f"mtls-{protocol}", nginx.mtls,
                           f"ca_file: {nginx.ca}, client_certificate: {nginx.client_cert}, client_key: {nginx.client_key}",
                           protocol=f"protocol: {protocol}, ")
    without = _tls_sheaf(workdir, f"mtls-none-{protocol}", nginx.mtls, f"ca_file: {nginx.ca}",
                         protocol=f"protocol: {protocol}, ")
    try:
        items = _items(with_cert, [1, 2, 3])
        assert all(x["status"] == 200 and "CN=sheaf-test-client" in x["body"]["client"] for x in items), items
        # nginx completes the handshake and answers 400 when no certificate was sent.
        items = _items(without, [1, 2])
        assert [x["status"] for x in items] == [400, 400], items
    finally:
        with_cert.stop()
        without.stop()


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_insecure_skip_verify_trusts_anything_and_warns(workdir, nginx, protocol):
    s = _tls_sheaf(workdir, f"insecure-{protocol}", nginx.h2tls, "insecure_skip_verify: true",
                   protocol=f"protocol: {protocol}, ")
    try:
        assert all(x["status"] == 200 for x in _items(s, [1, 2]))
        warnings = [l for l in s.process.output().splitlines() if "insecure_skip_verify" in l and "warning" in l]
        assert len(warnings) == 1, s.process.output()
    finally:
        s.stop()


def test_check_names_tls_files_that_cannot_be_used(workdir, nginx):
    """`sheaf check` finds a client key that is not the certificate's, at its FILE:LINE:COLUMN."""
    import os
    import subprocess
    from conftest import BIN
    path = os.path.join(workdir, "bad-tls.yaml")
    with open(path, "w") as f:
        f.write(f"""upstreams:
  up:
    url: https://127.0.0.1:{nginx.mtls}
    client_certificate: {nginx.client_cert}
    client_key: {os.path.join(os.path.dirname(nginx.ca), "server.key")}
routes:
  - {{name: r, method: POST, path: /b, upstream: up}}
""")
    r = subprocess.run([BIN, "check", "--config", path], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"{path}:5:17: upstream 'up' client_key: the key does not belong to client_certificate" in out, out


class _SilentListener:
    """Accepts TCP connections and never says a word: a TLS handshake to it stalls."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.done.is_set():
            try:
                self.accepted.append(self.listener.accept()[0])
            except socket.timeout:
                pass

    def close(self):
        self.done.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.listener.close()


@pytest.mark.parametrize("protocol", ["h2", "auto", "http1"])
def test_a_tls_handshake_that_stalls_fails_within_connect_timeout(workdir, protocol):
    """An upstream that accepts TCP and never answers the ClientHello: its items are 502s
    naming a TLS handshake failure within connect_timeout (counted as one), not a wait for a
    connection that never comes, and SIGTERM still ends Sheaf at once."""
    silent = _SilentListener()
    s = _tls_sheaf(workdir, f"tls-stall-{protocol}", silent.port, "connect_timeout: 500ms, timeout: 10s",
                   protocol=f"protocol: {protocol}, ")
    try:
        for _ in range(2):  # the second batch finds no connection stuck from the first
            began = time.monotonic()
            items = _items(s, [1, 2, 3])
            assert time.monotonic() - began < 3
            for item in items:
                assert item["status"] == 502, item
                assert item["error"].startswith("TLS with upstream up failed: handshake failure ("), item
                assert "within 500ms" in item["error"], item
        assert _tls_failures(s).get("handshake", 0) >= 2
        began = time.monotonic()
        assert s.stop() == 0
        assert time.monotonic() - began < 5, "SIGTERM waited for the stalled handshake"
    finally:
        s.stop()
        silent.close()


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_tls_files_are_read_once_so_removing_them_later_breaks_nothing(workdir, nginx, protocol):
    """A running upstream keeps the CA it started with, on both engines: libcurl read ca_file
    again for every new connection, so a CA file rotated away (or a reload refused because of
    it) failed the HTTP/1.1 upstream's next connections while the running config kept serving."""
    ca = os.path.join(workdir, f"ca-{protocol}.pem")
    shutil.copy(nginx.ca, ca)
    port = nginx.h2tls if protocol == "h2" else nginx.https
    s = _tls_sheaf(workdir, f"tls-files-{protocol}", port, f"ca_file: {ca}, connections: 4",
                   protocol=f"protocol: {protocol}, ")
    try:
        assert [x["status"] for x in _items(s, [1])] == [200]
        os.remove(ca)
        items = _items(s, list(range(1, 41)))
        assert all(x["status"] == 200 for x in items), [x for x in items if x["status"] != 200][:2]
    finally:
        s.stop()


class _TLSUpstream:
    """A TLS server with the test CA's certificate that misbehaves on purpose: `reset` sends a
    TCP reset as soon as the ClientHello is in; `cut` answers every request (HTTP/2 or
    HTTP/1.1, as ALPN picked) with a 200 promising 1000 bytes, sends 10, and closes without
    TLS's close_notify."""

    def __init__(self, ca, mode):
        import h2.config
        import h2.connection
        import h2.events
        self.h2 = (h2.config, h2.connection, h2.events)
        self.mode = mode
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(ca.server_cert, ca.server_key)
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.silent = _SilentListener()  # accepting only; the threads below serve each socket
        self.port = self.silent.port
        self.served = set()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.silent.done.is_set():
            for conn in list(self.silent.accepted):
                if id(conn) not in self.served:
                    self.served.add(id(conn))
                    threading.Thread(target=self._one, args=(conn,), daemon=True).start()
            time.sleep(0.01)

    def _one(self, conn):
        try:
            if self.mode == "reset":
                conn.settimeout(5)
                conn.recv(1024)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            tls = self.context.wrap_socket(conn, server_side=True)
            tls.settimeout(5)
            if tls.selected_alpn_protocol() == "h2":
                config, connection, events = self.h2
                h2c = connection.H2Connection(config=config.H2Configuration(client_side=False))
                h2c.initiate_connection()
                tls.sendall(h2c.data_to_send())
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return
                    for event in h2c.receive_data(data):
                        if isinstance(event, events.RequestReceived):
                            h2c.send_headers(event.stream_id, [(":status", "200"), ("content-length", "1000")])
                            h2c.send_data(event.stream_id, b"x" * 10)
                            tls.sendall(h2c.data_to_send())
                            time.sleep(0.05)
                            conn.close()  # the raw socket: no close_notify
                            return
                    tls.sendall(h2c.data_to_send())
            else:
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                time.sleep(0.05)
                conn.close()
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.silent.close()


@contextlib.contextmanager
def _sheaf_before(workdir, ca, mode, protocol):
    """A Sheaf whose one route goes to a `_TLSUpstream` misbehaving by `mode`, over `protocol`."""
    upstream = _TLSUpstream(ca, mode)
    s = _tls_sheaf(workdir, f"tls-{mode}-{protocol}", upstream.port, f"ca_file: {ca.ca}, connect_timeout: 2s",
                   protocol=f"protocol: {protocol}, ")
    try:
        yield s
    finally:
        s.stop()
        upstream.close()


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_a_reset_during_the_tls_handshake_is_a_handshake_failure_on_both_engines(workdir, test_ca, protocol):
    """Both engines word TLS failures alike: a connection reset before the handshake finished
    is a handshake failure (counted as one), not an HTTP/2 "connection failed"."""
    with _sheaf_before(workdir, test_ca, "reset", protocol) as s:
        for item in _items(s, [1, 2]):
            assert item["status"] == 502, item
            assert item["error"].startswith("TLS with upstream up failed: handshake failure ("), item
        assert _tls_failures(s).get("handshake", 0) >= 1


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_a_tls_answer_cut_without_close_notify_reads_as_a_cut_answer(workdir, test_ca, protocol):
    """An answer cut short by a close without close_notify: a 502 that says the connection
    closed before the response completed, not swift-nio-ssl's `uncleanShutdown`."""
    with _sheaf_before(workdir, test_ca, "cut", protocol) as s:
        [item] = _items(s, [1])
        assert item["status"] == 502, item
        assert "uncleanShutdown" not in item["error"], item
        if protocol == "h2":
            assert item["error"] == "upstream up closed the connection before the response completed", item
        else:
            assert item["error"].startswith("upstream up connection failed: transfer closed with 990 bytes remaining"), item
