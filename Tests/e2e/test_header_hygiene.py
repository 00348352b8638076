"""Header hygiene seen at a real upstream: forwarding headers and request ids as nginx logs them,
and the response header allowlist as the client reads it."""
import re

import time

import httpx
import pytest

from conftest import Sheaf


@pytest.fixture(scope="module")
def hygiene(workdir, nginx):
    s = Sheaf(workdir, "hygiene", f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
          h1: {{url: "http://127.0.0.1:{nginx.http1}", protocol: http1}}
        routes:
          - name: fan
            method: POST
            path: /fan
            upstream: h2
            fan_out: {{items: "", method: GET, path: "/headers/{{item}}"}}
          - name: plain
            method: POST
            path: /plain
            upstream: h1
            forwarded: false
            response_headers: [X-Internal-Token]
        """)
    yield s
    s.stop()


def _seen(nginx, request_id, at_least=1):
    """nginx's log lines for the items of one batch. nginx writes a line after its answer has
    gone, so the 207 can be complete first: wait (bounded) for `at_least` of them."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in nginx.forwarded_lines() if line["rid"].startswith(request_id + ".")]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_items_carry_the_request_id_and_forwarding_headers(hygiene, nginx):
    r = httpx.post(hygiene.url + "/fan", json=[1, 2, 3],
                   headers={"X-Request-ID": "batch-42", "X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert r.status_code == 207
    assert r.headers["x-request-id"] == "batch-42"
    seen = _seen(nginx, "batch-42", at_least=3)
    assert sorted(line["rid"] for line in seen) == ["batch-42.0", "batch-42.1", "batch-42.2"]
    assert sorted(line["uri"] for line in seen) == ["/headers/1", "/headers/2", "/headers/3"]
    for line in seen:
        assert line["protocol"] == "HTTP/2.0"
        assert line["xff"] == "203.0.113.9, 127.0.0.1"
        assert line["proto"] == "http"
        assert line["fwd"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{hygiene.port}"'


def test_forwarding_headers_the_request_names_in_connection_are_not_extended(hygiene, nginx):
    """RFC 9110 §7.6.1: an X-Forwarded-For or Forwarded the bulk request's Connection names was
    for that hop only, so Sheaf starts the chain afresh instead of extending it."""
    r = httpx.post(hygiene.url + "/fan", json=[1],
                   headers={"X-Request-ID": "batch-hop", "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9",
                            "Connection": "keep-alive, X-Forwarded-For, Forwarded"}, timeout=10)
    assert r.status_code == 207
    [line] = _seen(nginx, "batch-hop")
    assert line["xff"] == "127.0.0.1"
    assert line["fwd"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{hygiene.port}"'


def test_a_request_id_the_request_names_in_connection_is_not_taken(hygiene, nginx):
    r = httpx.post(hygiene.url + "/fan", json=[1], headers={"X-Request-ID": "hop-only", "Connection": "X-Request-ID"}, timeout=10)
    assert r.status_code == 207
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_a_request_without_an_id_gets_one(hygiene, nginx):
    r = httpx.post(hygiene.url + "/fan", json=[7], timeout=10)
    assert r.status_code == 207
    request_id = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert [line["rid"] for line in _seen(nginx, request_id)] == [request_id + ".0"]


def test_only_allowlisted_response_headers_are_reported(hygiene):
    r = httpx.post(hygiene.url + "/fan", json=[1, 2], timeout=10)
    results = r.json()["results"]
    assert len(results) == 2
    for item in results:
        assert item["status"] == 200
        assert item["headers"]["etag"] == f'"e{item["body"]["id"]}"'
        assert item["headers"]["content-type"] == "application/json"
        assert not {"x-internal-token", "set-cookie", "server", "date", "content-length"} & set(item["headers"])


def test_a_route_can_switch_forwarding_off_and_choose_its_headers(hygiene, nginx):
    batch = {"requests": [{"id": "a", "method": "GET", "url": "/headers/5", "headers": {"X-Forwarded-For": "10.9.9.9"}}]}
    r = httpx.post(hygiene.url + "/plain", json=batch, headers={"X-Request-ID": "plain-1"}, timeout=10)
    assert r.status_code == 207
    [item] = r.json()["results"]
    assert item["headers"] == {"x-internal-token": "secret"}
    [line] = _seen(nginx, "plain-1")
    assert line["rid"] == "plain-1.a"
    assert line["protocol"] == "HTTP/1.1"
    assert line["xff"] == "10.9.9.9"  # the item's own header, as the route allows
    assert line["proto"] == "" and line["fwd"] == ""


def test_a_rejected_batch_still_names_its_request_id(hygiene):
    r = httpx.post(hygiene.url + "/fan", content=b"[1,", headers={"content-type": "application/json", "X-Request-ID": "bad-1"},
                   timeout=10)
    assert r.status_code == 400
    assert r.headers["x-request-id"] == "bad-1"
    assert r.headers["content-type"] == "application/problem+json"
