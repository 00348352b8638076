"""Batch semantics against nginx: dependencies (chains, diamonds, failures, value references),
on_error: stop, and coalescing. Every test checks each id appears exactly once."""
import re

import time

import httpx
import pytest

from conftest import Sheaf


@pytest.fixture(scope="module")
def semantics(workdir, nginx):
    s = Sheaf(workdir, "semantics", f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - {{name: batch, method: POST, path: /batch, upstream: h2, concurrency: 4}}
          - {{name: strict, method: POST, path: /strict, upstream: h2, concurrency: 2, on_error: stop}}
          - {{name: lenient, method: POST, path: /lenient, upstream: h2, depends_on_success: [2xx, 404]}}
          - {{name: plain, method: POST, path: /plain, upstream: h2, coalesce: false}}
          - name: fan
            method: POST
            path: /fan
            upstream: h2
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
        """)
    yield s
    s.stop()


def _results(s, path, requests, accept="application/json"):
    r = httpx.post(s.url + path, json={"requests": requests}, headers={"accept": accept}, timeout=30)
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    ids = [x["id"] for x in results]
    assert sorted(ids) == sorted(req["id"] for req in requests) and len(set(ids)) == len(ids)
    return {x["id"]: x for x in results}


def _get(id, url, depends=None):
    item = {"id": id, "method": "GET", "url": url}
    if depends:
        item["dependsOn"] = depends
    return item


def _seen(nginx, uri, at_least=0):
    """How many times nginx logged `uri`. nginx logs after its answer has gone, so the 207 can
    be complete first: wait (bounded) until it has logged `at_least` of them."""
    deadline = time.monotonic() + 3
    while True:
        count = sum(1 for line in nginx.access_lines() if line.split()[3] == uri)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_a_chain_and_a_diamond_run_in_dependency_order(semantics, nginx):
    # a → (b, c) → d, with values from each answer in the next url: ids 4101 → 4102 → ...
    results = _results(semantics, "/batch", [
        _get("d", "/users/{b:/id}{c:/id}", ["b", "c"]),
        _get("b", "/users/{a:/id}2", ["a"]),
        _get("c", "/users/{a:/id}3", ["a"]),
        _get("a", "/users/410"),
    ])
    assert {k: v["status"] for k, v in results.items()} == {"a": 200, "b": 200, "c": 200, "d": 200}
    assert results["b"]["body"]["id"] == 4102 and results["c"]["body"]["id"] == 4103
    assert results["d"]["body"]["id"] == 41024103
    assert results["d"]["href"] == "/users/%7Bb%3A%2Fid%7D%7Bc%3A%2Fid%7D"


def test_a_failed_dependency_and_a_missing_pointer_are_424_with_a_reason(semantics, nginx):
    before = _seen(nginx, "/users/4201")
    results = _results(semantics, "/batch", [
        _get("missing", "/no-such-thing"),
        _get("after-missing", "/users/4201", ["missing"]),
        _get("then", "/users/4202", ["after-missing"]),
        _get("a", "/users/4203"),
        _get("bad-pointer", "/users/{a:/manager_id}", ["a"]),
        _get("not-json", "/users/{missing:/id}", ["missing"]),
    ])
    status = {k: v["status"] for k, v in results.items()}
    assert status == {"missing": 404, "after-missing": 424, "then": 424, "a": 200, "bad-pointer": 424, "not-json": 424}
    assert results["after-missing"]["error"] == 'not sent: dependency "missing" ended 404'
    assert results["then"]["error"] == 'not sent: dependency "after-missing" ended 424'
    assert results["bad-pointer"]["error"] == '{a:/manager_id}: the answer of "a" has nothing at /manager_id'
    assert _seen(nginx, "/users/4201") == before  # never sent
    # A route that accepts 404 from a dependency sends its dependents; the reference still needs JSON.
    lenient = _results(semantics, "/lenient", [_get("missing", "/no-such-thing"), _get("next", "/users/4204", ["missing"])])
    assert lenient["next"]["status"] == 200


def test_unknown_ids_and_cycles_are_400_naming_them(semantics):
    r = httpx.post(semantics.url + "/batch", json={"requests": [_get("a", "/users/1", ["b"]), _get("b", "/users/2", ["a"])]}, timeout=10)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert 'dependsOn forms a cycle: "a" → "b" → "a"' in r.json()["detail"]
    r = httpx.post(semantics.url + "/batch", json={"requests": [_get("a", "/users/1", ["ghost"])]}, timeout=10)
    assert r.status_code == 400
    assert r.json()["field"] == "requests[0].dependsOn" and 'unknown id "ghost"' in r.json()["detail"]


def test_stop_sends_nothing_after_the_first_failure_and_lets_items_in_flight_finish(semantics, nginx):
    before = sum(_seen(nginx, f"/users/43{i:02d}") for i in range(20))
    requests = [_get("slow", "/sleep/1"), _get("fails", "/no-such-thing")] + [_get(f"u{i}", f"/users/43{i:02d}") for i in range(20)]
    results = _results(semantics, "/strict", requests)
    assert results["slow"]["status"] == 200  # in flight when the failure came: it finishes
    assert results["fails"]["status"] == 404
    stopped = [k for k, v in results.items() if v["status"] == 424]
    assert len(stopped) == 20
    assert all(results[k]["error"] == 'not attempted: item "fails" failed (404)' for k in stopped)
    assert sum(_seen(nginx, f"/users/43{i:02d}") for i in range(20)) == before


def test_identical_gets_make_one_call(semantics, nginx):
    before = _seen(nginx, "/users/4401")
    results = _results(semantics, "/batch", [_get(str(i), "/users/4401") for i in range(5)] + [_get("other", "/users/4402")])
    assert all(v["status"] == 200 and v["body"]["id"] == 4401 for k, v in results.items() if k != "other")
    assert len({v["href"] for v in results.values()}) == 6  # hrefs stay unique
    assert _seen(nginx, "/users/4401", at_least=before + 1) == before + 1
    fan = httpx.post(semantics.url + "/fan", json=[4403, 4403, 4403], timeout=10)
    assert [x["status"] for x in fan.json()["results"]] == [200, 200, 200]
    assert _seen(nginx, "/users/4403", at_least=1) == 1
    metrics = httpx.get(semantics.url + "/metrics").text
    assert re.search(r'^sheaf_items_coalesced_total\{route="batch"\} 4(\.0)?$', metrics, re.M), metrics
    assert re.search(r'^sheaf_items_coalesced_total\{route="fan"\} 2(\.0)?$', metrics, re.M)
    # A route with coalesce: false sends every one.
    before = _seen(nginx, "/users/4405")
    _results(semantics, "/plain", [_get(str(i), "/users/4405") for i in range(3)])
    assert _seen(nginx, "/users/4405", at_least=before + 3) == before + 3


def test_then_runs_a_second_call_over_the_first_answer_and_reports_both(workdir, nginx):
    s = Sheaf(workdir, "chained", f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - name: chain
            method: POST
            path: /chain
            upstream: h2
            fan_out: {{items: "", method: GET, path: "/users/{{item}}", then: {{path: "/users/{{/id}}0"}}}}
        """)
    try:
        before = _seen(nginx, "/users/4510")
        r = httpx.post(s.url + "/chain", json=[451, 452, "nope"], timeout=10)
        assert r.status_code == 207 and r.headers["x-sheaf-items"] == "3"
        results = {x["id"]: x for x in r.json()["results"]}
        assert sorted(results) == ["0", "1", "2"]  # one result per element, each once
        assert results["0"]["status"] == 200 and results["0"]["body"]["id"] == 451
        assert results["0"]["then"]["status"] == 200 and results["0"]["then"]["body"]["id"] == 4510
        # The path the second call went to; the template only for one never sent.
        assert results["0"]["then"]["href"] == "/users/4510"
        assert results["2"]["then"]["href"] == "/users/{/id}0"
        assert results["1"]["then"]["body"]["id"] == 4520
        assert results["2"]["status"] == 404
        assert results["2"]["then"]["status"] == 424 and results["2"]["then"]["error"] == 'not sent: dependency "2" ended 404'
        assert r.json()["summary"] == {"total": 3, "succeeded": 2, "failed": 1}
        assert _seen(nginx, "/users/4510") == before + 1
        xml = httpx.post(s.url + "/chain", json=[453], headers={"accept": "application/xml"}, timeout=10)
        assert xml.status_code == 207
        assert "<S:then><D:href>/users/4530</D:href><D:status>HTTP/1.1 200 OK</D:status>" in xml.text
        assert xml.text.count("<D:response>") == 1
    finally:
        s.stop()
