"""Against nginx with its default HTTP/2 settings (128 concurrent streams, GOAWAY every 1000
requests): every item of batches up to 5000 is accounted for exactly once, and the upstream
requests really travel over HTTP/2."""
import httpx
import pytest

from helpers import parse_xml_207, results_by_id, status_code


@pytest.mark.parametrize("n", [1, 100, 1000, 5000])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_batches_over_h2c_account_for_every_item(sheaf, nginx, n, fmt):
    before = len(nginx.access_lines())
    ids = list(range(1, n + 1))
    accept = "application/xml" if fmt == "xml" else "application/json"
    r = httpx.post(sheaf.url + "/nginx/users", json=ids, headers={"accept": accept}, timeout=120)
    assert r.status_code == 207
    if fmt == "json":
        doc, by_id = results_by_id(r.text)
        assert len(by_id) == n
        assert sorted(int(k) for k in by_id) == list(range(n))
        for k, v in by_id.items():
            assert v["status"] == 200, v
            assert v["body"] == {"id": int(k) + 1, "via": "nginx"}
        assert doc["summary"] == {"total": n, "succeeded": n, "failed": 0}
    else:
        _, responses = parse_xml_207(r.content)
        assert len(responses) == n
        assert sorted(int(h.rsplit("/", 1)[1]) for h, _, _, _ in responses) == ids
        assert all(status_code(line) == 200 for _, line, _, _ in responses)
    lines = nginx.access_lines()[before:]
    assert len(lines) == n, "nginx saw a different number of requests than items"
    assert all(line.endswith("HTTP/2.0 200") for line in lines), lines[:3]
    # nginx ends each HTTP/2 connection with GOAWAY after 1000 requests (keepalive_requests):
    # a 5000-item batch must have crossed several GOAWAYs without losing or doubling an item.
    per_connection = {}
    for line in lines:
        conn, count = line.split()[:2]
        per_connection[conn] = max(per_connection.get(conn, 0), int(count))
    assert max(per_connection.values()) <= 1000
    if n == 5000:
        assert len(per_connection) >= 5


def test_batch_over_http1_to_nginx(sheaf, nginx):
    before = len(nginx.access_lines())
    r = httpx.post(sheaf.url + "/nginx1/users", json=list(range(1, 1001)), timeout=120)
    doc, by_id = results_by_id(r.text)
    assert len(by_id) == 1000 and all(v["status"] == 200 for v in by_id.values())
    lines = nginx.access_lines()[before:]
    assert len(lines) == 1000 and all(line.endswith("HTTP/1.1 200") for line in lines)


def test_not_found_items_come_back_as_404(sheaf, nginx):
    r = httpx.post(sheaf.url + "/nginx/users", json=["12", "abc"], timeout=30)
    _, by_id = results_by_id(r.text)
    assert by_id["0"]["status"] == 200 and by_id["1"]["status"] == 404


def test_slow_reader_pauses_the_fan_out_and_loses_nothing(sheaf, nginx):
    """Backpressure: while the client does not read, Sheaf stops starting items (memory stays
    bounded by concurrency); once it reads, every item still arrives exactly once."""
    import json
    import socket
    import time
    n = 10000
    body = json.dumps(list(range(1, n + 1))).encode()
    before = len(nginx.access_lines())
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", sheaf.port))
    s.sendall(b"POST /nginx/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(1.5)
    seen_while_stalled = len(nginx.access_lines()) - before
    data = bytearray()
    s.settimeout(60)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    # ~2 KB of 207 per item: 20 MB in all, far more than the kernel's socket buffers hold.
    assert seen_while_stalled < n * 0.6, f"Sheaf fanned out {seen_while_stalled} items although nobody read the 207"
    head, _, raw = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 207"), head[:300]
    # De-chunk.
    out, rest = bytearray(), raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    _, by_id = results_by_id(out.decode())
    assert len(by_id) == n and all(v["status"] == 200 for v in by_id.values())
    assert all(v["body"]["pad"] == "x" * 2000 for v in by_id.values())


def test_batch_deadline_cancels_http2_streams_on_the_wire(sheaf, nginx):
    """deadline: 500ms, items that take 2 s, concurrency 4: the 207 comes at the deadline with
    every item 504, and nginx sees each of the 4 running streams reset by Sheaf (RST_STREAM
    CANCEL, which nginx logs as "client canceled stream") instead of running to the end."""
    import time
    errors_before = len(nginx.error_lines())
    start = time.monotonic()
    r = httpx.post(sheaf.url + "/nginx/sleep", json=list(range(1, 11)), timeout=30)
    elapsed = time.monotonic() - start
    assert r.status_code == 207
    _, by_id = results_by_id(r.text)
    assert len(by_id) == 10
    assert all(v["status"] == 504 and "batch deadline (500ms)" in v["error"] for v in by_id.values())
    assert 0.4 < elapsed < 1.9, elapsed
    deadline = time.monotonic() + 5
    cancelled = []
    while len(cancelled) < 4 and time.monotonic() < deadline:
        cancelled = [l for l in nginx.error_lines()[errors_before:] if "client canceled stream" in l and "/sleep/" in l]
        time.sleep(0.05)
    assert len(cancelled) == 4, cancelled


def test_batch_deadline_removes_http1_transfers(sheaf, nginx):
    """Over HTTP/1.1 (2 keep-alive connections, concurrency 4): at the deadline the 2 running
    transfers are removed from the curl multi handle, which closes their connections, and the 2
    waiting for a connection are never sent. nginx only notices a closed HTTP/1.1 connection after
    its 2 s sleep, so the test waits for that."""
    import time
    access_before = len(nginx.access_lines())
    errors_before = len(nginx.error_lines())
    r = httpx.post(sheaf.url + "/nginx1/sleep", json=list(range(1, 11)), timeout=30)
    _, by_id = results_by_id(r.text)
    assert all(v["status"] == 504 for v in by_id.values()) and len(by_id) == 10
    time.sleep(2.8)
    sent = [l for l in nginx.access_lines()[access_before:] if "/sleep/" in l]
    assert len(sent) == 2, sent  # without cancellation curl would have sent the 2 queued ones too
    # The removed transfers' connections were closed by curl: nginx notices when it answers
    # (as a plain close or a reset, depending on timing).
    ended = ("closed keepalive connection", "reset by peer", "prematurely closed", "broken pipe")
    closed = [l for l in nginx.error_lines()[errors_before:] if any(e in l.lower() for e in ended)]
    assert len(closed) >= 2, nginx.error_lines()[errors_before:]


def test_https_upstream_over_http1(sheaf, nginx):
    """An HTTPS upstream through libcurl: trusted with the route's ca_file, refused (502, with the
    TLS reason) when the certificate does not chain to a trusted CA."""
    r = httpx.post(sheaf.url + "/tls/users", json=[1, 2, 3], timeout=30)
    _, by_id = results_by_id(r.text)
    assert [by_id[k]["status"] for k in "012"] == [200, 200, 200]
    assert by_id["0"]["body"] == {"id": 1, "via": "nginx-tls"}
    r = httpx.post(sheaf.url + "/tls-untrusted/users", json=[1], timeout=30)
    _, by_id = results_by_id(r.text)
    assert by_id["0"]["status"] == 502
    assert "TLS with upstream tls-untrusted" in by_id["0"]["error"] and "certificate" in by_id["0"]["error"]


def test_proxy_environment_variables_are_not_used_for_upstream_calls(workdir, nginx):
    """Both engines go straight to the upstream: an `http_proxy` meant for the host's outgoing
    traffic (here a dead port) must not capture HTTP/1.1 items (libcurl would read it per transfer)."""
    from conftest import Sheaf, free_port
    dead = f"http://127.0.0.1:{free_port()}"
    s = Sheaf(workdir, "proxy-env", f"""
        upstreams:
          up: {{url: "http://127.0.0.1:{nginx.http1}", protocol: http1}}
        routes:
          - {{name: r, method: POST, path: /b, upstream: up, fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
        """, env={"http_proxy": dead, "HTTP_PROXY": dead, "ALL_PROXY": dead, "all_proxy": dead})
    try:
        r = httpx.post(s.url + "/b", json=[1, 2], timeout=10)
        assert r.status_code == 207
        assert [x["status"] for x in r.json()["results"]] == [200, 200], r.text
    finally:
        s.stop()
