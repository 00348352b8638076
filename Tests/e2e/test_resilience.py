"""Upstream resilience seen from outside: retries within the budget, the circuit breaker and
the upstream metrics, against nginx."""
import os
import re
import shutil
import subprocess
import time

import httpx

from conftest import Sheaf, fan_out_sheaf


def _metrics(s):
    text = httpx.get(s.url + "/metrics").text
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if os.path.exists(promtool):
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    values = {}
    for name, labels, value in re.findall(r'^(sheaf_upstream_\w+)(\{[^}]*\})? (\S+)$', text, re.M):
        values[name + (labels or "")] = float(value)
    return values


def test_an_outage_is_retried_within_the_budget_then_the_circuit_opens(workdir, nginx):
    s = fan_out_sheaf(workdir, "outage", f'''{{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c,
        retry: {{attempts: 3, backoff: 1ms, budget: 20%, min_retries: 3}},
        circuit_breaker: {{min_requests: 50, failure_ratio: 0.5, open_for: 1m}}}}''', "/unavailable/{item}")
    try:
        before = len(nginx.access_lines())
        r = httpx.post(s.url + "/b", json=list(range(100)), timeout=30)
        assert r.status_code == 207
        doc = r.json()
        assert sorted(int(x["id"]) for x in doc["results"]) == list(range(100))
        assert all(x["status"] == 503 for x in doc["results"])
        assert doc["summary"]["retry_after"] == 0
        seen = len(nginx.access_lines()) - before
        assert 100 <= seen <= 123, f"nginx saw {seen} requests for 100 items"
        m = _metrics(s)
        assert m['sheaf_upstream_retries_total{upstream="up",reason="503"}'] == seen - 100
        assert m['sheaf_upstream_retry_budget_exhausted_total{upstream="up"}'] >= 1
        assert m['sheaf_upstream_circuit_state{upstream="up",state="open"}'] == 1
        assert m['sheaf_upstream_circuit_transitions_total{upstream="up",to="open"}'] == 1
        # Open: the next batch fails fast and nginx sees nothing.
        before = len(nginx.access_lines())
        r = httpx.post(s.url + "/b", json=list(range(10)), timeout=30)
        items = r.json()["results"]
        assert all(x["status"] == 503 and x["error"] == "circuit open for upstream up; not sent" for x in items), items
        assert len(nginx.access_lines()) == before
    finally:
        s.stop()


def _deadline_sheaf(workdir, name, nginx, deadline, min_requests, concurrency, path):
    """A route with a `deadline` shorter than its h2c upstream's 10 s timeout, the upstream with
    a circuit breaker (half of `min_requests` failed opens it for a minute)."""
    return Sheaf(workdir, name, f"""
        upstreams:
          up: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c, timeout: 10s,
                circuit_breaker: {{min_requests: {min_requests}, failure_ratio: 0.5, open_for: 1m}}}}
        routes:
          - name: r
            method: POST
            path: /b
            upstream: up
            deadline: {deadline}
            concurrency: {concurrency}
            fan_out: {{items: "", method: GET, path: "{path}"}}
        """)


def test_a_silent_upstream_behind_a_shorter_deadline_opens_the_circuit(workdir, nginx):
    """The route's deadline (500ms) is shorter than the upstream's timeout (10s): every item nginx
    keeps waiting is cut at the deadline with 504. Those cuts count against the circuit, which
    opens, and the next batch fails fast instead of waiting out its deadline again."""
    s = _deadline_sheaf(workdir, "deadline-circuit", nginx, deadline="500ms", min_requests=10, concurrency=100, path="/sleep/{item}")
    try:
        r = httpx.post(s.url + "/b", json=list(range(12)), timeout=30)
        assert r.status_code == 207
        doc = r.json()
        assert sorted(int(x["id"]) for x in doc["results"]) == list(range(12))
        assert all(x["status"] == 504 for x in doc["results"]), doc["results"]
        # The cut calls report to the circuit as their streams end, just after the 207.
        for _ in range(40):
            if _metrics(s).get('sheaf_upstream_circuit_state{upstream="up",state="open"}') == 1:
                break
            time.sleep(0.05)
        assert _metrics(s)['sheaf_upstream_circuit_state{upstream="up",state="open"}'] == 1
        started = time.monotonic()
        r = httpx.post(s.url + "/b", json=list(range(5)), timeout=30)
        items = r.json()["results"]
        assert all(x["status"] == 503 and x["error"] == "circuit open for upstream up; not sent" for x in items), items
        assert time.monotonic() - started < 0.4
    finally:
        s.stop()


def test_one_batch_too_big_for_its_deadline_does_not_open_a_healthy_upstreams_circuit(workdir, nginx):
    """nginx answers in 700 ms; 100 items at concurrency 50 with a 1 s deadline: the first wave
    answers, the second is cut 300 ms after it went. Those cuts are the batch's size, not the
    upstream's health: counted, one client's batch opened the circuit for every route on it."""
    s = _deadline_sheaf(workdir, "oversized-batch", nginx, deadline="1s", min_requests=20, concurrency=50, path="/pause/{item}")
    try:
        r = httpx.post(s.url + "/b", json=list(range(100)), timeout=30)
        assert r.status_code == 207
        statuses = [x["status"] for x in r.json()["results"]]
        assert len(statuses) == 100 and statuses.count(200) >= 40 and statuses.count(504) >= 40, statuses
        time.sleep(0.3)
        assert _metrics(s)['sheaf_upstream_circuit_state{upstream="up",state="closed"}'] == 1
        r = httpx.post(s.url + "/b", json=[1, 2], timeout=30)
        assert [x["status"] for x in r.json()["results"]] == [200, 200]
    finally:
        s.stop()


def test_upstream_gauges_and_goaways(workdir, nginx):
    s = fan_out_sheaf(workdir, "gauges", f'{{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c, connections: 2}}',
                      "/users/{item}", max_items=5000)
    try:
        r = httpx.post(s.url + "/b", json=list(range(2500)), timeout=60)
        assert r.status_code == 207 and len(r.json()["results"]) == 2500
        m = _metrics(s)
        assert m['sheaf_upstream_connections{upstream="up",protocol="h2c"}'] >= 1
        assert m['sheaf_upstream_streams_in_use{upstream="up",protocol="h2c"}'] == 0
        assert m['sheaf_upstream_queued_items{upstream="up",protocol="h2c"}'] == 0
        # nginx ends each HTTP/2 connection after 1000 requests.
        assert m['sheaf_upstream_goaways_total{upstream="up"}'] >= 2
        assert m['sheaf_upstream_request_duration_seconds_count{upstream="up"}'] == 2500
    finally:
        s.stop()


def test_http1_gauges_count_curls_connections(workdir, nginx):
    s = fan_out_sheaf(workdir, "gauges1", f'{{url: "http://127.0.0.1:{nginx.http1}", protocol: http1, connections: 3}}',
                      "/users/{item}")
    try:
        r = httpx.post(s.url + "/b", json=list(range(200)), timeout=60)
        assert r.status_code == 207
        m = _metrics(s)
        assert 1 <= m['sheaf_upstream_connections{upstream="up",protocol="http/1.1"}'] <= 3
        assert m['sheaf_upstream_queued_items{upstream="up",protocol="http/1.1"}'] == 0
    finally:
        s.stop()


def test_http1_connections_gauge_holds_when_batches_are_abandoned(workdir, demo):
    """Clients that leave mid-batch cancel transfers while libcurl connects; libcurl 7.88 closes
    such an attempt without the close callback, and the gauge grew by one for each (hundreds,
    with connections: 4, while none was open)."""
    import socket
    import threading
    s = fan_out_sheaf(workdir, "abandoned", f'{{url: "http://127.0.0.1:{demo}", protocol: http1, connections: 4}}',
                      "/users/{item}")
    try:
        body = ("[" + ",".join(str(i % 100 + 1) for i in range(300)) + "]").encode()
        head = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)

        def abandon():
            for _ in range(50):
                with socket.create_connection(("127.0.0.1", s.port)) as c:
                    c.settimeout(3)
                    c.sendall(head + body)
                    c.recv(100)

        threads = [threading.Thread(target=abandon) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)
        assert _metrics(s)['sheaf_upstream_connections{upstream="up",protocol="http/1.1"}'] <= 8
    finally:
        s.stop()
