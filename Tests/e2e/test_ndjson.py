"""NDJSON 207s (`Accept: application/x-ndjson`): each item's line reaches the client as the item
settles, while slower items are still running upstream, and the summary comes last."""
import json
import time

import httpx
import pytest

from conftest import Sheaf

FAST = [f"/users/{n}" for n in range(1, 7)]
SLOW = [f"/sleep/{n}" for n in range(1, 4)]  # nginx answers these after 2 s


@pytest.fixture(scope="module")
def ndjson_sheaf(workdir, nginx):
    s = Sheaf(workdir, "ndjson", f"""
        upstreams:
          h2c: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
          http1: {{url: "http://127.0.0.1:{nginx.http1}", protocol: http1, connections: 12}}
        routes:
          - {{name: h2c, method: POST, path: /h2c, upstream: h2c}}
          - {{name: http1, method: POST, path: /http1, upstream: http1}}
        """)
    yield s
    s.stop()


@pytest.mark.parametrize("route", ["h2c", "http1"])
def test_fast_items_arrive_before_the_slow_ones_finish(ndjson_sheaf, route):
    # Slow items first in the request, so request order alone cannot put the fast ones first.
    urls = SLOW + FAST
    batch = {"requests": [{"id": f"i{k}", "method": "GET", "url": url} for k, url in enumerate(urls)]}
    arrivals = []
    start = time.monotonic()
    with httpx.stream("POST", f"{ndjson_sheaf.url}/{route}", json=batch,
                      headers={"accept": "application/x-ndjson"}, timeout=30) as r:
        assert r.status_code == 207
        assert r.headers["content-type"] == "application/x-ndjson"
        for line in r.iter_lines():
            arrivals.append((time.monotonic() - start, json.loads(line)))
    ended = time.monotonic() - start

    assert ended >= 2.0, "the slow items take nginx 2 s"
    assert arrivals[0][0] < 1.0, f"the first line came {arrivals[0][0]:.2f}s in, not before the slow items ended"
    *results, (_, summary) = arrivals
    assert summary == {"summary": {"total": len(urls), "succeeded": len(urls), "failed": 0}}
    ids = [doc["id"] for _, doc in results]
    assert sorted(ids) == sorted(f"i{k}" for k in range(len(urls))), "every id exactly once"
    by_url = {doc["href"]: (at, doc) for at, doc in results}
    assert all(by_url[u][1]["status"] == 200 for u in urls)
    assert by_url["/users/3"][1]["body"] == {"id": 3, "via": "nginx"}
    # Every fast item's line was on the client before any slow item had finished.
    last_fast = max(by_url[u][0] for u in FAST)
    first_slow = min(by_url[u][0] for u in SLOW)
    assert last_fast < 1.0 and first_slow >= 1.5, (last_fast, first_slow)


def test_summary_line_carries_retry_after(ndjson_sheaf):
    batch = {"requests": [{"method": "GET", "url": "/unavailable/1"}, {"method": "GET", "url": "/unavailable/2"}]}
    lines = httpx.post(ndjson_sheaf.url + "/h2c", json=batch, headers={"accept": "application/x-ndjson"},
                       timeout=30).text.splitlines()
    assert [json.loads(line)["status"] for line in lines[:-1]] == [503, 503]
    assert json.loads(lines[-1]) == {"summary": {"total": 2, "succeeded": 0, "failed": 2, "retry_after": 0}}
