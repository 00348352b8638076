"""TLS on the front listener (`tls:` in config.yaml): h2 and HTTP/1.1 chosen by ALPN and driven by
curl and httpx, client certificates, `sheaf check` on bad files, and the connections TLS must not
serve or keep: cleartext, stalled handshakes."""
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from conftest import BIN, fan_out_sheaf

N = 50


def nginx_upstream(nginx):
    return f'{{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}'


def tls_sheaf(workdir, name, nginx, test_ca, client_ca=False, top=(), item_path="/users/{item}"):
    tls = {"certificate": test_ca.server_cert, "private_key": test_ca.server_key}
    if client_ca:
        tls["client_ca"] = test_ca.ca
    return fan_out_sheaf(workdir, name, nginx_upstream(nginx), item_path, top=top, tls=tls)


def check_207(text, n=N):
    """Every item exactly once, each nginx's own answer."""
    doc = json.loads(text)
    ids = [r["id"] for r in doc["results"]]
    assert sorted(ids, key=int) == [str(i) for i in range(n)], ids
    for r in doc["results"]:
        assert r["status"] == 200 and r["body"] == {"id": int(r["id"]), "via": "nginx"}, r
    assert doc["summary"] == {"total": n, "succeeded": n, "failed": 0}


def curl(workdir, url, *args, n=N):
    """POSTs the batch [0, n) with curl; returns (exit status, HTTP status, HTTP version, body)."""
    out = os.path.join(workdir, "curl-body")
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run(["curl", "-sS", "-o", out, "-w", "%{http_code} %{http_version}", "--max-time", "20",
                        "-H", "content-type: application/json", "--data-binary", json.dumps(list(range(n))),
                        *args, url], capture_output=True, text=True)
    code, version = p.stdout.split()
    body = open(out).read() if os.path.exists(out) else ""
    return p.returncode, int(code), version, body, p.stderr


def closed_within(sock, seconds):
    """Reads until EOF or reset; the seconds it took, or None if still open after `seconds`."""
    sock.settimeout(0.1)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            pass
        except (ConnectionResetError, ssl.SSLError):
            return time.monotonic() - start
    return None


def client_hello():
    """The bytes of a real TLS ClientHello (Python's ssl, never sent anywhere else)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.fixture(scope="module")
def front(workdir, nginx, test_ca):
    s = tls_sheaf(workdir, "front-tls", nginx, test_ca)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mtls(workdir, nginx, test_ca):
    s = tls_sheaf(workdir, "front-mtls", nginx, test_ca, client_ca=True)
    yield s
    s.stop()


@pytest.mark.parametrize("flag, version", [("--http2", "2"), ("--http1.1", "1.1")])
def test_curl_gets_the_207_over_tls_with_the_alpn_protocol(workdir, front, test_ca, flag, version):
    status, code, got, body, err = curl(workdir, front.url + "/b", flag, "--cacert", test_ca.ca)
    assert status == 0, err
    assert (code, got) == (207, version)
    check_207(body)


def test_curl_verifies_the_certificate_for_localhost(workdir, front, test_ca):
    status, code, _, body, err = curl(workdir, f"https://localhost:{front.port}/b", "--cacert", test_ca.ca,
                                      "--resolve", f"localhost:{front.port}:127.0.0.1")
    assert (status, code) == (0, 207), err
    check_207(body)


def test_httpx_http2_over_tls(front, test_ca):
    verify = ssl.create_default_context(cafile=test_ca.ca)
    with httpx.Client(http2=True, verify=verify, timeout=30) as client:
        for _ in range(2):  # two batches on one connection
            r = client.post(front.url + "/b", json=list(range(N)))
            assert r.http_version == "HTTP/2"
            assert r.status_code == 207
            check_207(r.text)


def test_the_listener_says_it_speaks_tls(front):
    assert 'protocols=h2, http/1.1 over TLS' in front.process.output()


def test_a_client_certificate_from_client_ca_is_required(workdir, mtls, test_ca):
    status, code, version, body, err = curl(workdir, mtls.url + "/b", "--http2", "--cacert", test_ca.ca,
                                            "--cert", test_ca.client_cert, "--key", test_ca.client_key)
    assert (status, code, version) == (0, 207, "2"), err
    check_207(body)
    # No certificate: the handshake fails (with TLS 1.3 the client may only learn it at its first
    # read or write, so curl's message varies; no HTTP status ever comes).
    status, code, _, body, err = curl(workdir, mtls.url + "/b", "--http2", "--cacert", test_ca.ca)
    assert status != 0 and code == 0 and body == "", (status, code, err)
    # A certificate from another CA: refused too.
    other = os.path.join(workdir, "other-client")
    os.makedirs(other, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=stranger"], cwd=other, check=True, capture_output=True)
    status, code, _, body, err = curl(workdir, mtls.url + "/b", "--cacert", test_ca.ca,
                                      "--cert", os.path.join(other, "c.pem"), "--key", os.path.join(other, "k.pem"))
    assert status != 0 and code == 0 and body == "", (status, code, err)


@pytest.mark.parametrize("first_bytes", [
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[1]",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
], ids=["http1", "h2c"])
def test_cleartext_to_the_tls_port_is_not_served(front, test_ca, first_bytes):
    sock = socket.create_connection(("127.0.0.1", front.port))
    sock.sendall(first_bytes)
    sock.settimeout(3)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    assert b"HTTP/" not in data and b"results" not in data, data
    # And the closed socket did not take the listener with it.
    assert httpx.get(front.url + "/healthz", verify=ssl.create_default_context(cafile=test_ca.ca)).status_code == 200


@pytest.mark.parametrize("sends", ["nothing", "half a ClientHello", "a ClientHello byte by byte"])
def test_a_stalled_handshake_is_closed_after_client_timeout(workdir, nginx, test_ca, sends):
    s = tls_sheaf(workdir, f"tls-stall-{sends.split()[0]}", nginx, test_ca, top=["client_timeout: 1s"])
    try:
        hello = client_hello()
        sock = socket.create_connection(("127.0.0.1", s.port))
        if sends == "half a ClientHello":
            sock.sendall(hello[:len(hello) // 2])
        if sends == "a ClientHello byte by byte":
            # Each byte would restart a byte-level idle timer: this must not keep it open.
            def trickle():
                for b in hello:
                    try:
                        sock.sendall(bytes([b]))
                    except OSError:
                        return
                    time.sleep(0.05)
            threading.Thread(target=trickle, daemon=True).start()
        took = closed_within(sock, 6)
        assert took is not None, "the stalled handshake was still open after 6 s"
        assert 0.8 < took < 3, took
    finally:
        s.stop()


def test_sheaf_check_reports_bad_tls_files_at_their_value(workdir, test_ca):
    def check(certificate, private_key):
        path = os.path.join(workdir, "check-tls.yaml")
        with open(path, "w") as f:
            f.write(f"""listen: "127.0.0.1:8443"
tls:
  certificate: {certificate}
  private_key: {private_key}
upstreams:
  up: {{url: "http://127.0.0.1:9090", protocol: h2c}}
routes:
  - {{name: r, method: POST, path: /b, upstream: up}}
""")
        p = subprocess.run([BIN, "check", "--config", path], capture_output=True, text=True)
        return path, p.returncode, p.stdout + p.stderr

    path, status, out = check(test_ca.server_cert, test_ca.server_key)
    assert status == 0, out
    missing = os.path.join(test_ca.dir, "no-such.pem")
    path, status, out = check(missing, test_ca.server_key)
    assert status != 0
    assert f'{path}:3:16: tls certificate: cannot read "{missing}"' in out, out
    path, status, out = check(test_ca.server_key, test_ca.server_key)
    assert status != 0
    assert f'{path}:3:16: tls certificate: "{test_ca.server_key}" holds no PEM certificate' in out, out
    # Both files fine on their own; the pair is not.
    path, status, out = check(test_ca.server_cert, test_ca.client_key)
    assert status != 0
    assert f'{path}:4:16: tls private_key: "{test_ca.client_key}" does not match the certificate' in out, out


def tls_socket(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")


def read_head(sock):
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_connection_limit_and_metrics_over_tls(workdir, nginx, test_ca):
    s = tls_sheaf(workdir, "tls-limit", nginx, test_ca, top=["max_connections_per_client: 2"])
    verify = ssl.create_default_context(cafile=test_ca.ca)
    try:
        time.sleep(0.3)  # the start-up probe's connection has closed on Sheaf's side too
        held = [tls_socket(s.port, test_ca.ca) for _ in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", s.port))
        assert closed_within(extra, 3) is not None, "a third connection from one address was kept"
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 200")
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with httpx.Client(http2=True, verify=verify, timeout=30) as client:
            check_207(client.post(s.url + "/b", json=list(range(N))).text)
            text = client.get(s.url + "/metrics").text
        assert "sheaf_connections_refused_total 1" in text
        assert 'sheaf_batches_total{route="r",outcome="complete"} 1' in text, text
        assert f'sheaf_items_total{{route="r",status="200"}} {N}' in text, text
    finally:
        s.stop()


def test_drain_over_tls_finishes_the_h2_batch_and_closes_idle_connections(workdir, nginx, test_ca):
    """SIGTERM: an idle HTTP/1.1 keep-alive connection over TLS and one still in its handshake are
    closed, an h2 batch in flight (nginx sleeps 2 s per item) still gets its whole 207, and Sheaf
    exits 0."""
    s = tls_sheaf(workdir, "tls-drain", nginx, test_ca, top=["drain_timeout: 10s"], item_path="/sleep/{item}")
    idle = tls_socket(s.port, test_ca.ca)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_head(idle).startswith(b"HTTP/1.1 200")
    handshaking = socket.create_connection(("127.0.0.1", s.port))
    handshaking.sendall(client_hello()[:100])
    result = {}

    def post():
        # curl, not httpx: httpcore fails every open stream on GOAWAY, even ones the server still serves.
        result["got"] = curl(workdir, s.url + "/b", "--http2", "--cacert", test_ca.ca, n=2)

    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.5)
    os.kill(s.process.pid, signal.SIGTERM)
    assert closed_within(idle, 3) is not None, "an idle keep-alive TLS connection stayed open while draining"
    assert closed_within(handshaking, 1) is not None, "a connection in its handshake stayed open while draining"
    t.join(15)
    status, code, version, body, err = result["got"]
    assert (status, code, version) == (0, 207, "2"), result
    items = json.loads(body)["results"]
    assert sorted(int(x["id"]) for x in items) == [0, 1] and all(x["status"] == 200 for x in items), items
    assert s.process.proc.wait(timeout=15) == 0


def tls_metric(s, ca, name):
    text = httpx.get(s.url + "/metrics", verify=ssl.create_default_context(cafile=ca), timeout=10).text
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_client_timeout_over_tls_spares_a_steady_reader_and_cuts_one_that_stops(workdir, nginx, test_ca, http2):
    """20 × 1 MiB items: read at about 5 MB/s (longer than client_timeout, 2 s), the 207 arrives
    whole; not read at all, the batch is cut after client_timeout and counted as a stall. The
    TLS layer between the response writer and the socket changes neither."""
    s = tls_sheaf(workdir, f"tls-reader-{http2}", nginx, test_ca, top=["client_timeout: 2s"], item_path="/blob/{item}")
    try:
        verify = ssl.create_default_context(cafile=test_ca.ca)
        with httpx.Client(http1=not http2, http2=http2, verify=verify, timeout=30) as client:
            with client.stream("POST", s.url + "/b", json=list(range(20))) as r:
                assert r.status_code == 207 and r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                data = b""
                started = time.monotonic()
                for chunk in r.iter_bytes(chunk_size=65536):
                    data += chunk
                    time.sleep(0.012)
                took = time.monotonic() - started
        assert took > 3, took  # slower than client_timeout, or the test proves nothing
        items = json.loads(data)["results"]
        assert sorted(int(x["id"]) for x in items) == list(range(20)) and all(x["status"] == 200 for x in items)
        assert tls_metric(s, test_ca.ca, "sheaf_client_stalls_total") == 0

        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ctx = ssl.create_default_context(cafile=test_ca.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        body = json.dumps(list(range(200))).encode()
        sock.sendall(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        started = time.monotonic()
        while time.monotonic() < started + 20 and tls_metric(s, test_ca.ca, "sheaf_client_stalls_total") < 1:
            time.sleep(0.2)
        took = time.monotonic() - started
        assert tls_metric(s, test_ca.ca, "sheaf_client_stalls_total") == 1, "the client that stopped reading was not cut"
        assert 2 <= took < 15, took
        sock.close()
    finally:
        s.stop()
