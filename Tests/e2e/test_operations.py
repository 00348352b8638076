"""What an operator sees: `sheaf check`, the metrics endpoint, health, shutdown."""
import os
import shutil
import subprocess

import httpx
import pytest

from conftest import BIN, ROOT, Sheaf, one_route_sheaf


def test_check_accepts_the_shipped_config():
    out = subprocess.run([BIN, "check", "--config", os.path.join(ROOT, "config.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and out.stdout.count("\n") == 1


def test_check_prints_every_problem_with_position(workdir):
    path = os.path.join(workdir, "bad.yaml")
    with open(path, "w") as f:
        f.write("listen: \"127.0.0.1:1\"\n"
                "upstreams:\n"
                "  a:\n"
                "    url: http://127.0.0.1:1\n"
                "    timeout: soon\n"
                "    colour: blue\n"
                "routes:\n"
                "  - name: r\n"
                "    method: POST\n"
                "    path: /x\n"
                "    upstream: b\n")
    out = subprocess.run([BIN, "check", "--config", path], capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert f"{path}:5:14: upstream 'a' timeout: \"soon\" is not a duration (write e.g. 250ms, 5s, 1m)" in lines
    assert any(l.startswith(f"{path}:6:5: unknown key 'colour'") for l in lines)
    assert any(l.startswith(f"{path}:11:15: route 'r': unknown upstream \"b\"") for l in lines)
    serve = subprocess.run([BIN, "serve", "--config", path], capture_output=True, text=True, timeout=30)
    assert serve.returncode == 1 and "unknown upstream" in serve.stderr


def test_metrics_are_valid_prometheus_text(sheaf):
    httpx.post(sheaf.url + "/bulk/users", json={"ids": [1, 13]})
    r = httpx.get(sheaf.url + "/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'sheaf_items_total{route="users",status="200"}' in text
    assert 'sheaf_items_total{route="users",status="403"}' in text
    assert 'sheaf_batches_total{route="users",outcome="partial"}' in text
    assert "sheaf_item_duration_seconds_bucket" in text and "sheaf_batch_duration_seconds_count" in text
    assert "sheaf_items_in_flight" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_health_and_head_on_one_keep_alive_connection(sheaf):
    with httpx.Client(timeout=10) as client:
        head = client.head(sheaf.url + "/metrics")
        assert head.status_code == 200 and int(head.headers["content-length"]) > 0 and head.content == b""
        assert client.get(sheaf.url + "/healthz").json() == {"status": "ok"}
        assert client.get(sheaf.url + "/readyz").status_code == 200
        # They answer GET and HEAD, as /metrics does; a POST is not a health check.
        for path in ("/healthz", "/readyz"):
            refused = client.post(sheaf.url + path, json=[1])
            assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD", refused.text


def test_default_config_serves_a_mixed_207_with_its_embedded_demo(workdir):
    """What a newcomer runs: the shipped config.yaml, with ports moved so the test can run anywhere."""
    from conftest import free_port
    with open(os.path.join(ROOT, "config.yaml")) as f:
        text = f.read()
    demo = free_port()
    text = text.replace("127.0.0.1:9090", f"127.0.0.1:{demo}")
    body = "\n".join(l for l in text.splitlines() if not l.startswith("listen:"))
    s = Sheaf(workdir, "default", body)
    try:
        r = httpx.post(s.url + "/bulk/users", json={"ids": [1, 2, 13, 999]}, timeout=30)
        assert r.status_code == 207
        assert sorted(x["status"] for x in r.json()["results"]) == [200, 200, 403, 404]
        r = httpx.post(s.url + "/bulk/docs/delete", json={"names": ["a.pdf", "locked.doc", "nope"]},
                       headers={"accept": "application/xml"}, timeout=30)
        assert r.status_code == 207 and b"HTTP/1.1 423 Locked" in r.content
    finally:
        assert s.stop() == 0, "sheaf did not exit cleanly on SIGTERM"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def test_memory_does_not_grow_across_batches(sheaf):
    """A leaked batch keeps its items (~150 KB per 1000-item batch here); 60 batches would add
    several MiB. After a warm-up, resident memory must stay flat."""
    with httpx.Client(timeout=60) as client:
        def batch():
            r = client.post(sheaf.url + "/nginx/users", json=list(range(1, 1001)))
            assert r.status_code == 207
        for _ in range(20):
            batch()
        before = rss_kib(sheaf.process.pid)
        for _ in range(60):
            batch()
        after = rss_kib(sheaf.process.pid)
    assert after - before < 4096, f"RSS grew by {after - before} KiB over 60 batches"


def test_sigterm_drains_batches_in_flight(workdir, demo):
    import signal
    import threading
    import time
    s = one_route_sheaf(workdir, "drain", demo, top="drain_timeout: 5s")
    result = {}

    def client():
        body = {"requests": [{"method": "GET", "url": f"/users/{i}?delay_ms=1200"} for i in range(1, 6)]}
        r = httpx.post(s.url + "/slow", json=body, timeout=30)
        result["status"] = r.status_code
        result["statuses"] = sorted(x["status"] for x in r.json()["results"])

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.4)
    os.kill(s.process.pid, signal.SIGTERM)
    t.join(timeout=30)
    assert s.process.proc.wait(timeout=15) == 0
    assert result == {"status": 207, "statuses": [200] * 5}
    assert "draining" in s.process.output()


def test_client_timeout_closes_idle_and_trickling_connections_not_busy_ones(workdir, demo):
    import socket
    import time
    s = one_route_sheaf(workdir, "timeouts", demo, top="client_timeout: 1s")
    try:
        # A connection that never sends a request is closed.
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.settimeout(10)
            start = time.monotonic()
            assert c.recv(100) == b""
            assert 0.8 < time.monotonic() - start < 5
        # A body that stops arriving gets 408.
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.settimeout(10)
            c.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"req")
            answer = c.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        # A head trickled in byte by byte (each byte would restart an idle timer) is cut too.
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            start = time.monotonic()
            closed_after = None
            while time.monotonic() - start < 6:
                try:
                    c.sendall(b"a")
                    c.settimeout(0.2)
                    if c.recv(100) == b"":
                        closed_after = time.monotonic() - start
                        break
                except socket.timeout:
                    continue
                except OSError:
                    closed_after = time.monotonic() - start
                    break
            assert closed_after is not None and closed_after < 3, closed_after
        # A batch that runs longer than the timeout, silent meanwhile, is not cut.
        r = httpx.post(s.url + "/slow", json={"requests": [{"method": "GET", "url": "/users/1?delay_ms=2500"}]}, timeout=30)
        assert r.status_code == 207 and r.json()["results"][0]["status"] == 200
    finally:
        s.stop()


@pytest.mark.parametrize("protocol", ["h2c", "http1"])
def test_upstream_dying_mid_batch_fails_only_with_reasons(workdir, protocol):
    """The upstream process is killed while items are in flight: every item still gets exactly
    one outcome, 502 with what happened, and the batch ends promptly."""
    import signal
    import threading
    import time
    from conftest import Process, free_port
    port = free_port()
    upstream = Process([BIN, "demo-upstream", "--listen", f"127.0.0.1:{port}"], os.path.join(workdir, f"doomed-{protocol}.log"), port)
    s = one_route_sheaf(workdir, f"doomed-{protocol}", port, upstream=f"protocol: {protocol}, connections: 2, timeout: 10s",
                        path="/doomed")
    try:
        result = {}

        def client():
            body = {"requests": [{"method": "GET", "url": f"/users/{i}?delay_ms=1500"} for i in range(1, 21)]}
            start = time.monotonic()
            r = httpx.post(s.url + "/doomed", json=body, timeout=30)
            result["elapsed"] = time.monotonic() - start
            result["response"] = r

        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.5)
        os.kill(upstream.pid, signal.SIGKILL)
        t.join(timeout=30)
        r = result["response"]
        assert r.status_code == 207
        doc = r.json()
        assert doc["summary"] == {"total": 20, "succeeded": 0, "failed": 20}
        for item in doc["results"]:
            assert item["status"] == 502, item
            assert item["error"], item
        assert result["elapsed"] < 8
        if protocol == "h2c":
            # The operator hears of it once, with the reason the items carry.
            lost = [line for line in s.process.output().splitlines() if "upstream connection lost" in line]
            assert lost and "reason=upstream demo" in lost[0], lost
    finally:
        s.stop()
        upstream.stop()


def test_memory_a_big_batch_took_is_given_back_once_sheaf_is_quiet(workdir, nginx):
    """After a batch of tens of thousands of items, the allocator holds what the batch freed.
    Sheaf hands it back to the system a second after it goes quiet (whichever allocator it runs
    on), so an operator does not see the burst's peak as RSS for the life of the process."""
    import time
    from conftest import fan_out_sheaf
    s = fan_out_sheaf(workdir, "memory-return", f'{{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}',
                      "/users/{item}", max_items=40_000)
    try:
        with httpx.Client(timeout=120) as client:
            assert client.post(s.url + "/b", json=list(range(1, 1001))).status_code == 207
            time.sleep(1.5)
            before = rss_kib(s.process.pid)
            r = client.post(s.url + "/b", json=list(range(1, 40_001)))
            assert r.status_code == 207 and r.json()["summary"]["total"] == 40_000
            grown = rss_kib(s.process.pid) - before
        assert grown > 8 * 1024, f"the batch grew RSS by {grown} KiB only: nothing to give back"
        given_back = 0
        for _ in range(30):  # up to 3 s: the return comes after a second of quiet
            time.sleep(0.1)
            given_back = before + grown - rss_kib(s.process.pid)
            if given_back > grown / 2:
                break
        assert given_back > grown / 2, f"of {grown} KiB the batch took, {given_back} KiB were given back"
    finally:
        s.stop()
