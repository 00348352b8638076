"""Streamed template batches: items start while the request body is still arriving, the first
results reach the client before it has sent its last byte, and a body that goes wrong after the
207 has begun ends it with the summary's `input_error`, every item read before reported once."""
import http.client
import socket
import json
import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from conftest import Sheaf
from helpers import DAV, S


@pytest.fixture(scope="module")
def streaming(workdir, nginx):
    s = Sheaf(workdir, "streaming", f"""
        upstreams:
          h2c: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
          http1: {{url: "http://127.0.0.1:{nginx.http1}", protocol: http1, connections: 4}}
        routes:
          - {{name: h2c, method: POST, path: /h2c, upstream: h2c, max_items: 200000, max_body_bytes: 4MiB,
              fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
          - {{name: http1, method: POST, path: /http1, upstream: http1, max_items: 200000,
              fan_out: {{items: /ids, method: GET, path: "/users/{{item}}"}}}}
          - {{name: few, method: POST, path: /few, upstream: h2c, max_items: 60,
              fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
        """)
    yield s
    s.stop()


class Upload:
    """A POST whose chunked body is sent piece by piece while its response is read."""

    def __init__(self, sheaf, path, accept="application/x-ndjson"):
        self.conn = http.client.HTTPConnection("127.0.0.1", sheaf.port, timeout=20)
        self.conn.putrequest("POST", path)
        self.conn.putheader("content-type", "application/json")
        self.conn.putheader("accept", accept)
        self.conn.putheader("transfer-encoding", "chunked")
        self.conn.endheaders()
        self.response = None

    def send(self, text):
        data = text.encode()
        self.conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self):
        self.conn.send(b"0\r\n\r\n")

    def head(self):
        if self.response is None:
            self.response = self.conn.getresponse()
        return self.response

    def line(self):
        return json.loads(self.head().readline())

    def rest(self):
        return self.head().read()


def ndjson_lines(first, rest):
    lines = first + [json.loads(line) for line in rest.splitlines() if line.strip()]
    *results, summary = lines
    return results, summary["summary"]


def assert_each_once(results, ids):
    seen = [r["id"] for r in results]
    assert len(seen) == len(set(seen)), "an item was reported twice"
    assert sorted(seen, key=int) == [str(i) for i in ids]


@pytest.mark.parametrize("route,wrap", [("/h2c", False), ("/http1", True)])
def test_first_results_reach_the_client_before_its_body_ends(streaming, route, wrap):
    upload = Upload(streaming, route)
    upload.send(('{"ids": [' if wrap else "[") + ",".join(str(n) for n in range(1, 51)) + ",")
    started = time.monotonic()
    assert upload.head().status == 207
    # The total is not known when the 207 begins.
    assert upload.head().getheader("x-sheaf-items") is None
    first = upload.line()
    assert time.monotonic() - started < 5
    assert first["status"] == 200 and first["body"]["via"] == "nginx"
    # Only now does the rest of the body go out.
    upload.send(",".join(str(n) for n in range(51, 101)) + ("]}" if wrap else "]"))
    upload.end()
    results, summary = ndjson_lines([first], upload.rest())
    assert_each_once(results, range(100))
    assert summary == {"total": 100, "succeeded": 100, "failed": 0}
    assert {r["href"] for r in results} == {f"/users/{n}" for n in range(1, 101)}


def test_a_syntax_error_after_the_207_began_ends_it_with_an_input_error(streaming):
    upload = Upload(streaming, "/h2c")
    upload.send("[" + ",".join(str(n) for n in range(1, 51)) + ",")
    first = upload.line()
    upload.send("51, oops, 52]")
    upload.end()
    results, summary = ndjson_lines([first], upload.rest())
    # The 51 elements before the fault are reported, each once; nothing after it was read.
    assert_each_once(results, range(51))
    problem = summary["input_error"]
    assert problem["status"] == 400 and "not valid JSON" in problem["detail"], problem
    assert summary["total"] == 51


def test_more_items_than_max_items_mid_stream_is_a_413_input_error_naming_the_limit(streaming):
    upload = Upload(streaming, "/few")
    upload.send("[" + ",".join(str(n) for n in range(1, 51)) + ",")
    first = upload.line()
    upload.send(",".join(str(n) for n in range(51, 81)) + "]")
    upload.end()
    results, summary = ndjson_lines([first], upload.rest())
    assert_each_once(results, range(60))
    assert summary["input_error"]["status"] == 413
    assert "max_items (60)" in summary["input_error"]["detail"]
    assert summary["input_error"]["field"] == "body"


def test_the_xml_207_carries_the_input_error_in_its_summary(streaming):
    upload = Upload(streaming, "/h2c", accept="application/xml")
    upload.send("[1, 2, 3,")
    assert upload.head().status == 207
    time.sleep(0.3)
    upload.send('{"not": "a path value"}]')
    upload.end()
    root = ET.fromstring(upload.rest())
    responses = root.findall(DAV + "response")
    assert sorted(r.find(S + "id").text for r in responses) == ["0", "1", "2"]
    problem = root.find(S + "summary").find(S + "input-error")
    assert problem.get("status") == "400" and problem.get("field") == "/3", ET.tostring(problem)


def test_a_body_that_arrives_at_once_is_still_checked_whole(streaming):
    r = httpx.post(f"{streaming.url}/h2c", content=b"[1, 2, oops]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert "not valid JSON" in r.json()["detail"]
    r = httpx.post(f"{streaming.url}/h2c", json=[1, 2, 3])
    assert r.status_code == 207 and r.headers["x-sheaf-items"] == "3"
    assert len(r.json()["results"]) == 3


def test_a_client_that_hangs_up_mid_upload_leaves_sheaf_serving(streaming):
    upload = Upload(streaming, "/h2c")
    upload.send("[" + ",".join(str(n) for n in range(1, 51)) + ",")
    upload.line()
    upload.conn.sock.close()
    deadline = time.monotonic() + 10
    while True:
        metrics = httpx.get(f"{streaming.url}/metrics").text
        in_flight = [l for l in metrics.splitlines() if l.startswith("sheaf_items_in_flight")]
        if in_flight and float(in_flight[0].split()[-1]) == 0:
            break
        assert time.monotonic() < deadline, in_flight
        time.sleep(0.1)
    r = httpx.post(f"{streaming.url}/h2c", json=[1, 2])
    assert r.status_code == 207


@pytest.mark.parametrize("http2", [False, True])
def test_a_large_streamed_batch_pauses_and_resumes_reading_and_reports_every_item(streaming, http2):
    n = 60000
    body = ("[" + ",".join(str(i % 500) for i in range(n)) + "]").encode()

    def pieces():
        # 64 KiB at a time: the body outruns the fan-out, so Sheaf has to stop reading it.
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    with httpx.Client(http1=not http2, http2=http2, timeout=120) as client:
        r = client.post(f"{streaming.url}/h2c", content=pieces(),
                        headers={"content-type": "application/json", "accept": "application/x-ndjson"})
    assert r.status_code == 207
    lines = [json.loads(line) for line in r.text.splitlines()]
    *results, summary = lines
    assert summary["summary"]["total"] == n and summary["summary"]["succeeded"] == n, summary
    ids = [r["id"] for r in results]
    assert len(ids) == n and len(set(ids)) == n


def test_a_client_that_stops_reading_mid_upload_is_cut_and_its_place_given_back(workdir, nginx):
    """The body is still arriving (reading paused: enough items wait) when the client stops
    reading the 207: after client_timeout the batch is cut, and it ends, so its max_batches place
    comes back."""
    s = Sheaf(workdir, "stalled-upload", f"""
        client_timeout: 2s
        max_buffered_output: 64KiB
        upstreams:
          h2c: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - {{name: blobs, method: POST, path: /blobs, upstream: h2c, concurrency: 4, max_batches: 1, max_items: 100000,
              fan_out: {{items: "", method: GET, path: "/blob/{{item}}"}}}}
        """)
    try:
        upload = Upload(s, "/blobs")
        upload.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Far more than the run takes unstarted (256): Sheaf stops reading the body.
        upload.send("[" + ",".join(str(n) for n in range(5000)) + ",")
        deadline = time.monotonic() + 20
        while True:
            r = httpx.post(f"{s.url}/blobs", json=[1], timeout=10)
            if r.status_code == 207:
                break
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, "the stalled batch never gave its place back"
            time.sleep(0.5)
        upload.conn.sock.close()
    finally:
        s.stop()


@pytest.mark.parametrize("rate, cut", [("", True), ("min_body_rate: 0", False)], ids=["default", "off"])
def test_a_body_trickled_below_min_body_rate_is_cut_with_an_input_error(workdir, nginx, rate, cut):
    """A byte every 0.4 s resets no idle timer's worth of silence, and held a batch (and its
    max_batches place) for as long as the client liked. Below min_body_rate, averaged over the
    body's reading time once client_timeout has passed, the body is cut: the items read so far
    are reported, each once, and the summary's input_error (408) names the limit."""
    s = Sheaf(workdir, "trickle" + str(cut), f"""
        client_timeout: 1s
        {rate}
        upstreams:
          h2c: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - {{name: r, method: POST, path: /r, upstream: h2c, fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
        """)
    try:
        upload = Upload(s, "/r")
        upload.send("[1,2,3,")
        first = upload.line()
        start = time.monotonic()
        while time.monotonic() - start < 4:
            try:
                upload.send(" ")
            except OSError:
                break
            time.sleep(0.4)
        if cut:
            results, summary = ndjson_lines([first], upload.rest())
            assert_each_once(results, range(3))
            problem = summary["input_error"]
            # Cut by the rate while bytes still came (the idle cut's detail says it stopped arriving).
            assert problem["status"] == 408 and "slower than min_body_rate (256 bytes/s)" in problem["detail"], problem
        else:
            upload.send("4]")
            upload.end()
            results, summary = ndjson_lines([first], upload.rest())
            assert_each_once(results, range(4))
            assert "input_error" not in summary, summary
    finally:
        s.stop()
