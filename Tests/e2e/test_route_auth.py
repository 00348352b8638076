"""Route authentication: a bulk request without an accepted token gets 401 and reaches no
upstream; the credential goes upstream only when forward_headers says so."""
import os
import re

import httpx
import pytest

from conftest import Sheaf


@pytest.fixture(scope="module")
def guarded(workdir, nginx):
    tokens = os.path.join(workdir, "tokens")
    with open(tokens, "w") as f:
        f.write("first-secret-token\n\nsecond-secret-token\n")
    fan = 'fan_out: {items: "", method: GET, path: "/headers/{item}"}'
    s = Sheaf(workdir, "guarded", f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - {{name: bearer, method: POST, path: /bearer, upstream: h2, auth: {{tokens_file: {tokens}}}, {fan}}}
          - {{name: passing, method: POST, path: /passing, upstream: h2, auth: {{tokens_file: {tokens}}},
              forward_headers: [Authorization], {fan}}}
          - {{name: keyed, method: POST, path: /keyed, upstream: h2, auth: {{tokens_file: {tokens}, api_key_header: X-Api-Key}}, {fan}}}
        """)
    yield s
    s.stop()


def _post(s, path, ids, headers, request_id):
    return httpx.post(s.url + path, json=ids, headers={**headers, "X-Request-ID": request_id}, timeout=10)


def _upstream_saw(nginx, request_id):
    return [line for line in nginx.forwarded_lines() if line["rid"].startswith(request_id + ".")]


def test_no_token_or_a_wrong_one_is_401_and_nothing_is_sent(guarded, nginx):
    r = _post(guarded, "/bearer", [1, 2], {}, "auth-none")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="sheaf"'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "Authorization" and "needs a token" in r.json()["detail"]
    r = _post(guarded, "/bearer", [1, 2], {"Authorization": "Bearer guessed"}, "auth-wrong")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="sheaf", error="invalid_token"'
    r = _post(guarded, "/keyed", [1], {"Authorization": "Bearer first-secret-token"}, "auth-key-missing")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'ApiKey realm="sheaf", header="X-Api-Key"'
    for request_id in ("auth-none", "auth-wrong", "auth-key-missing"):
        assert _upstream_saw(nginx, request_id) == []
    metrics = httpx.get(guarded.url + "/metrics").text
    assert re.search(r'^sheaf_auth_refusals_total\{route="bearer",reason="missing"\} 1(\.0)?$', metrics, re.M), metrics
    assert re.search(r'^sheaf_auth_refusals_total\{route="bearer",reason="invalid"\} 1(\.0)?$', metrics, re.M)
    assert re.search(r'^sheaf_auth_refusals_total\{route="keyed",reason="missing"\} 1(\.0)?$', metrics, re.M)


def test_an_accepted_token_fans_out_and_stays_at_sheaf_unless_forwarded(guarded, nginx):
    r = _post(guarded, "/bearer", [1, 2], {"Authorization": "Bearer second-secret-token"}, "auth-ok")
    assert r.status_code == 207
    assert sorted(x["id"] for x in r.json()["results"]) == ["0", "1"]
    assert [line["auth"] for line in _upstream_saw(nginx, "auth-ok")] == ["", ""]
    r = _post(guarded, "/passing", [3], {"Authorization": "Bearer first-secret-token"}, "auth-pass")
    assert r.status_code == 207
    assert [line["auth"] for line in _upstream_saw(nginx, "auth-pass")] == ["Bearer first-secret-token"]
    r = _post(guarded, "/keyed", [4], {"X-Api-Key": "first-secret-token"}, "auth-key")
    assert r.status_code == 207
    assert len(_upstream_saw(nginx, "auth-key")) == 1
    assert "secret-token" not in guarded.process.output() and "guessed" not in guarded.process.output()
