"""The access log: one JSON line per bulk request, with no secrets in it, reopened on SIGUSR1."""
import json
import os
import signal
import time

import httpx

from conftest import Sheaf


def _sheaf(workdir, nginx, name, access_log):
    return Sheaf(workdir, name, f"""
        access_log: {access_log}
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - name: users
            method: POST
            path: /users
            upstream: h2
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
        """)


def _lines(path, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {count} lines")


def test_one_line_per_bulk_request_and_no_secrets(workdir, nginx):
    path = os.path.join(workdir, "access-lines.log")
    s = _sheaf(workdir, nginx, "access", path)
    try:
        secret_headers = {"Authorization": "Bearer top-secret-token", "Cookie": "session=cookie-secret"}
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        body = b'[1, 2, "nope"]'
        with httpx.Client(http1=False, http2=True) as client:
            r = client.post(s.url + "/users", content=body, timeout=10,
                            headers={"content-type": "application/json", "X-Request-ID": "log-1", "traceparent": trace,
                                     **secret_headers})
        assert r.status_code == 207 and r.http_version == "HTTP/2"
        bad = httpx.post(s.url + "/users", content=b"{", headers={"content-type": "application/json", **secret_headers}, timeout=10)
        assert bad.status_code == 400
        unsupported = httpx.post(s.url + "/users", content=b"x", headers={"content-type": "text/plain"}, timeout=10)
        assert unsupported.status_code == 415
        httpx.get(s.url + "/metrics")  # not a bulk request: not logged
        lines = _lines(path, 3)
        assert len(lines) == 3
        ok, bad_line, unsupported_line = lines
        assert ok["request_id"] == "log-1"
        assert ok["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert ok["route"] == "users"
        assert ok["client"] == "127.0.0.1"
        assert ok["protocol"] == "HTTP/2" and ok["tls"] is False
        assert ok["method"] == "POST" and ok["path"] == "/users"
        assert ok["status"] == 207 and ok["items"] == 3
        assert ok["statuses"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0}
        assert ok["bytes_in"] == len(body)
        assert ok["bytes_out"] == len(r.content)
        assert ok["outcome"] == "partial"
        assert ok["duration_ms"] >= 0
        assert ok["time"].endswith("Z")
        assert bad_line["status"] == 400 and bad_line["outcome"] == "rejected" and bad_line["bytes_in"] == 1
        assert bad_line["request_id"] == bad.headers["x-request-id"]
        assert bad_line["bytes_out"] == len(bad.content)
        assert bad_line["protocol"] == "HTTP/1.1" and bad_line["trace_id"] is None
        assert unsupported_line["status"] == 415 and unsupported_line["route"] == "users"
        with open(path) as f:
            text = f.read()
        assert "top-secret-token" not in text and "cookie-secret" not in text
        assert "via" not in text  # no upstream body
    finally:
        s.stop()


def test_sigusr1_reopens_the_file_after_logrotate(workdir, nginx):
    path = os.path.join(workdir, "rotated-lines.log")
    s = _sheaf(workdir, nginx, "rotate", path)
    try:
        assert httpx.post(s.url + "/users", json=[1], headers={"X-Request-ID": "before"}, timeout=10).status_code == 207
        _lines(path, 1)
        os.rename(path, path + ".1")
        os.kill(s.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(s.url + "/users", json=[2], headers={"X-Request-ID": "after"}, timeout=10).status_code == 207
        assert [line["request_id"] for line in _lines(path, 1)] == ["after"]
        assert [line["request_id"] for line in _lines(path + ".1", 1)] == ["before"]
    finally:
        s.stop()


def test_off_writes_nothing_and_stderr_is_the_default(workdir, nginx):
    quiet = _sheaf(workdir, nginx, "quiet", "off")
    loud = Sheaf(workdir, "loud", f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - {{name: users, method: POST, path: /users, upstream: h2, fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
        """)
    try:
        for s in (quiet, loud):
            assert httpx.post(s.url + "/users", json=[1], headers={"X-Request-ID": "which-" + s.config_path[-9:]},
                              timeout=10).status_code == 207
        time.sleep(0.3)
        assert '"request_id":' not in quiet.process.output()
        logged = [json.loads(line) for line in loud.process.output().splitlines() if line.startswith('{"time":')]
        assert [line["route"] for line in logged] == ["users"]
    finally:
        quiet.stop()
        loud.stop()


def test_a_refused_request_has_a_request_id_in_its_answer_and_its_line(workdir, nginx):
    """A request refused before its batch began (406, 404, 415) had `request_id: null` in its
    log line and none in its answer: nothing to find it by. It gets the client's X-Request-ID,
    or one of Sheaf's, in both."""
    path = os.path.join(workdir, "access-refused.log")
    s = _sheaf(workdir, nginx, "refused", path)
    try:
        mine = httpx.post(s.url + "/users", json=[1], headers={"accept": "image/png", "x-request-id": "client-7"}, timeout=10)
        assert mine.status_code == 406 and mine.headers["x-request-id"] == "client-7"
        made = httpx.post(s.url + "/nowhere", json=[1], timeout=10)
        assert made.status_code == 404 and made.headers["x-request-id"]
        lines = _lines(path, 2)
        assert [(line["status"], line["request_id"]) for line in lines] == [(406, "client-7"), (404, made.headers["x-request-id"])]
    finally:
        s.stop()
