"""A user's view: bulk requests through the real `sheaf` binary, answered with a 207."""
import json
import subprocess

import httpx
import pytest

from helpers import parse_xml_207, results_by_id, status_code, DAV, S


def post(sheaf, path, body, ctype="application/json", accept=None, **kw):
    headers = {"content-type": ctype}
    if accept:
        headers["accept"] = accept
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    kw.setdefault("timeout", 60)
    return httpx.post(sheaf.url + path, content=data, headers=headers, **kw)


@pytest.mark.parametrize("route", ["/bulk/users", "/bulk/users1"])
def test_mixed_207_in_json(sheaf, route):
    r = post(sheaf, route, {"ids": [1, 2, 13, 999]})
    assert r.status_code == 207
    assert r.headers["content-type"] == "application/json"
    doc, by_id = results_by_id(r.text)
    assert {k: v["status"] for k, v in by_id.items()} == {"0": 200, "1": 200, "2": 403, "3": 404}
    assert by_id["0"]["href"] == "/users/1"
    assert by_id["0"]["body"] == {"id": 1, "name": "User 1", "email": "user1@example.com"}
    assert by_id["2"]["body"] == {"error": "account locked"}
    assert doc["summary"] == {"total": 4, "succeeded": 2, "failed": 2}


@pytest.mark.parametrize("accept,ctype", [("application/xml", "application/xml"), ("text/xml", "text/xml")])
def test_mixed_207_in_xml(sheaf, accept, ctype):
    r = post(sheaf, "/bulk/users", {"ids": [1, 13, 999]}, accept=accept)
    assert r.status_code == 207
    assert r.headers["content-type"] == f'{ctype}; charset="utf-8"'
    root, responses = parse_xml_207(r.content)
    got = {href: status_code(line) for href, line, _, _ in responses}
    assert got == {"/users/1": 200, "/users/13": 403, "/users/999": 404}
    assert [line for _, line, _, _ in responses if "404" in line] == ["HTTP/1.1 404 Not Found"]
    summary = root.find(S + "summary")
    assert summary.attrib == {"total": "3", "succeeded": "1", "failed": "2"}
    body = [el for href, _, _, el in responses if href == "/users/1"][0].find(S + "body")
    assert json.loads(body.text) == {"id": 1, "name": "User 1", "email": "user1@example.com"}
    assert body.attrib["content-type"] == "application/json"


def test_xml_batch_in_xml_out(sheaf):
    xml = """<S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:">
      <S:request id="a" method="DELETE"><D:href>/docs/a.pdf</D:href></S:request>
      <S:request id="b" method="PUT"><D:href>/docs/b.txt</D:href>
        <S:header name="Content-Type">text/plain</S:header><S:body>hello</S:body></S:request>
      <S:request id="c" method="DELETE"><D:href>/docs/locked-plan.txt</D:href></S:request>
      <S:request id="d" method="GET"><D:href>/redirect/5</D:href></S:request>
      <S:request id="e" method="GET"><D:href>/bytes/4</D:href></S:request>
    </S:batch>"""
    r = post(sheaf, "/batch", xml, ctype="application/xml")
    assert r.status_code == 207
    assert r.headers["content-type"].startswith("application/xml")
    _, responses = parse_xml_207(r.content)
    by_id = {i: (href, status_code(line), el) for href, line, i, el in responses}
    assert by_id["a"][1] == 204
    assert by_id["b"][1] == 201
    assert json.loads(by_id["b"][2].find(S + "body").text) == {"stored": "b.txt", "bytes": 5}
    assert by_id["c"][1] == 423
    assert by_id["d"][1] == 302
    assert by_id["d"][2].find(DAV + "location").find(DAV + "href").text == "/users/5"
    body = by_id["e"][2].find(S + "body")
    assert body.attrib["encoding"] == "base64" and body.text == "AQgPFg=="


def test_explicit_json_batch_with_bodies_and_headers(sheaf):
    r = post(sheaf, "/batch1", {"requests": [
        {"id": "put", "method": "PUT", "url": "/docs/x.json", "body": {"k": [1, 2]}},
        {"id": "echo", "method": "POST", "url": "/echo?x=1", "headers": {"X-Trace": "abc"}, "body": "plain"},
        {"method": "GET", "url": "/users/5"},
    ]})
    assert r.status_code == 207
    doc, by_id = results_by_id(r.text)
    assert by_id["put"]["status"] == 201 and by_id["put"]["body"]["bytes"] == len('{"k":[1,2]}')
    echo = by_id["echo"]["body"]
    assert echo["method"] == "POST" and echo["path"] == "/echo?x=1" and echo["body"] == "plain"
    assert echo["headers"]["x-trace"] == "abc"
    assert by_id["2"]["status"] == 200


@pytest.mark.parametrize("route,version", [("/batch", "HTTP/2.0"), ("/batch1", "HTTP/1.1")])
def test_items_travel_on_the_configured_protocol(sheaf, route, version):
    r = post(sheaf, route, {"requests": [{"id": "e", "method": "GET", "url": "/echo"}]})
    _, by_id = results_by_id(r.text)
    assert by_id["e"]["body"]["version"] == version


def test_items_that_escape_the_upstream_get_400_and_others_proceed(sheaf):
    r = post(sheaf, "/batch", {"requests": [
        {"id": "abs", "method": "GET", "url": "http://evil.example/users/1"},
        {"id": "net", "method": "GET", "url": "//evil.example/users/1"},
        {"id": "climb", "method": "GET", "url": "/users/../../etc/passwd"},
        {"id": "ok", "method": "GET", "url": "/docs/../users/3"},
    ]})
    assert r.status_code == 207
    doc, by_id = results_by_id(r.text)
    assert [by_id[k]["status"] for k in ("abs", "net", "climb")] == [400, 400, 400]
    assert "absolute" in by_id["abs"]["error"]
    assert "//" in by_id["net"]["error"]
    assert "climbs out" in by_id["climb"]["error"]
    assert by_id["ok"]["status"] == 200 and by_id["ok"]["href"] == "/users/3"


def test_same_path_twice_gets_distinct_hrefs(sheaf):
    r = post(sheaf, "/batch", {"requests": [
        {"id": "a", "method": "GET", "url": "/users/1"}, {"id": "b", "method": "GET", "url": "/users/1"}]},
        accept="application/xml")
    _, responses = parse_xml_207(r.content)
    assert sorted(h for h, _, _, _ in responses) == ["/users/1", "/users/1#b"]


@pytest.mark.parametrize("route", ["/batch", "/batch1"])
def test_item_timeout_is_504_with_a_reason(sheaf, route):
    r = post(sheaf, route, {"requests": [
        {"id": "slow", "method": "GET", "url": "/users/1?delay_ms=3000"},
        {"id": "fast", "method": "GET", "url": "/users/2"}]})
    doc, by_id = results_by_id(r.text)
    assert by_id["slow"]["status"] == 504
    assert "did not answer within 1s" in by_id["slow"]["error"]
    assert by_id["fast"]["status"] == 200


@pytest.mark.parametrize("route", ["/nowhere", "/nowhere1"])
def test_unreachable_upstream_is_502_with_a_reason(sheaf, route):
    r = post(sheaf, route, {"requests": [{"method": "GET", "url": "/a"}, {"method": "GET", "url": "/b"}]},
             accept="application/xml")
    assert r.status_code == 207
    _, responses = parse_xml_207(r.content)
    assert [status_code(line) for _, line, _, _ in responses] == [502, 502]
    for _, _, _, el in responses:
        assert "cannot connect" in el.find(DAV + "responsedescription").text


def test_h2c_client_and_keep_alive(sheaf):
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}",
                          "-H", "content-type: application/json", "--data", '{"ids":[1,999]}', sheaf.url + "/bulk/users"],
                         capture_output=True, text=True, timeout=30)
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "2 207", out.stderr
    _, by_id = results_by_id(body)
    assert by_id["0"]["status"] == 200 and by_id["1"]["status"] == 404
    with httpx.Client(http1=False, http2=True, timeout=30) as client:  # h2 prior knowledge, one connection
        for _ in range(3):
            r = client.post(sheaf.url + "/bulk/users", json={"ids": [2, 3]})
            assert r.http_version == "HTTP/2" and r.status_code == 207
    with httpx.Client(timeout=30) as client:  # HTTP/1.1 keep-alive
        for _ in range(3):
            r = client.post(sheaf.url + "/bulk/users", json={"ids": [4]}, headers={"accept": "application/xml"})
            assert r.status_code == 207
            parse_xml_207(r.content)


def test_client_that_goes_away_does_not_hurt_the_server(sheaf):
    with pytest.raises(httpx.ReadTimeout):
        post(sheaf, "/batch", {"requests": [{"method": "GET", "url": "/users/1?delay_ms=800"}] * 1}, timeout=0.2)
    r = post(sheaf, "/bulk/users", {"ids": [1]})
    assert r.status_code == 207


@pytest.mark.parametrize("route,reason", [("/batch", "reset the stream"), ("/batch1", "connection failed")])
def test_a_reset_fails_only_its_item(sheaf, route, reason):
    r = post(sheaf, route, {"requests": [
        {"id": "boom", "method": "GET", "url": "/reset"},
        {"id": "ok", "method": "GET", "url": "/users/7"}]})
    assert r.status_code == 207
    _, by_id = results_by_id(r.text)
    assert by_id["boom"]["status"] == 502 and reason in by_id["boom"]["error"], by_id["boom"]
    assert by_id["ok"]["status"] == 200


def test_hostile_ids_keep_the_xml_well_formed(sheaf):
    r = post(sheaf, "/batch", {"requests": [{"id": "a\u0001<b>&", "method": "GET", "url": "/users/1"},
                                            {"id": "c", "method": "GET", "url": "http://x\u0002/"}]},
             accept="application/xml")
    _, responses = parse_xml_207(r.content)  # raises if not well-formed
    assert sorted(i for _, _, i, _ in responses) == ["a\ufffd<b>&", "c"]


@pytest.mark.parametrize("route", ["/tiny", "/tiny1"])
def test_any_method_token_and_capped_upstream_bodies(sheaf, route):
    """A route can use any method (PROPFIND here); bodies above max_response_bytes are cut and flagged."""
    r = httpx.request("PROPFIND", sheaf.url + route, json={"requests": [
        {"id": "big", "method": "GET", "url": "/bytes/500"}, {"id": "small", "method": "GET", "url": "/bytes/50"}]}, timeout=30)
    assert r.status_code == 207
    _, by_id = results_by_id(r.text)
    import base64
    big = base64.b64decode(by_id["big"]["body"])
    assert len(big) == 100 and by_id["big"]["bodyTruncated"] is True
    assert len(base64.b64decode(by_id["small"]["body"])) == 50 and "bodyTruncated" not in by_id["small"]
    assert bytes((i * 7 + 1) & 0xFF for i in range(100)) == big


def test_forward_headers_copy_only_the_allowlisted_ones(sheaf):
    r = httpx.post(sheaf.url + "/forward", json={"requests": [
        {"id": "plain", "method": "GET", "url": "/echo"},
        {"id": "own", "method": "GET", "url": "/echo", "headers": {"authorization": "Basic aXRlbQ=="}}]},
        headers={"Authorization": "Bearer abc", "X-Tenant": "t1", "X-Other": "not me"}, timeout=30)
    _, by_id = results_by_id(r.text)
    plain, own = by_id["plain"]["body"]["headers"], by_id["own"]["body"]["headers"]
    assert plain["authorization"] == "Bearer abc" and plain["x-tenant"] == "t1"
    assert own["authorization"] == "Basic aXRlbQ==" and own["x-tenant"] == "t1"
    assert "x-other" not in plain and "x-other" not in own


def test_forward_headers_keep_every_field_line(sheaf):
    """A forwarded header sent on two field lines reaches the upstream whole: both X-Tenant
    lines, and cookie crumbs (as HTTP/2 clients split them, RFC 9113 §8.2.3) joined with "; "
    into one Cookie, which the HTTP/1.1 upstream reads as one. Before, only the first line went."""
    r = httpx.post(sheaf.url + "/forward", json={"requests": [{"id": "a", "method": "GET", "url": "/echo"}]},
                   headers=[("Authorization", "Bearer abc"), ("X-Tenant", "t1"), ("X-Tenant", "t2"),
                            ("Cookie", "a=1"), ("Cookie", "b=2")], timeout=30)
    assert r.status_code == 207
    echoed = r.text  # the echo repeats a name as a repeated JSON key: read as text
    assert '"x-tenant":"t1"' in echoed and '"x-tenant":"t2"' in echoed, echoed
    assert echoed.count('"cookie":') == 1 and '"cookie":"a=1; b=2"' in echoed, echoed


def test_forward_headers_skip_what_the_bulk_request_names_in_connection(sheaf):
    """RFC 9110 §7.6.1: a field the received Connection header names is for that connection
    only, so an allowlisted one it names is not forwarded; the others still are."""
    r = httpx.post(sheaf.url + "/forward", json={"requests": [{"id": "a", "method": "GET", "url": "/echo"}]},
                   headers={"Authorization": "Bearer abc", "X-Tenant": "t1", "Connection": "keep-alive, X-Tenant"},
                   timeout=30)
    assert r.status_code == 207
    _, by_id = results_by_id(r.text)
    headers = by_id["a"]["body"]["headers"]
    assert headers["authorization"] == "Bearer abc"
    assert "x-tenant" not in headers


@pytest.mark.parametrize("accept", ["application/json", "application/xml"])
def test_request_order_output(sheaf, accept):
    """order: request writes responses in the order of the batch even when later items finish first."""
    reqs = [{"id": f"i{i}", "method": "GET", "url": f"/users/{i}?delay_ms={(6 - i) * 60}"} for i in range(1, 7)]
    r = post(sheaf, "/ordered", {"requests": reqs}, accept=accept)
    assert r.status_code == 207
    if accept == "application/json":
        ids = [x["id"] for x in r.json()["results"]]
    else:
        ids = [i for _, _, i, _ in parse_xml_207(r.content)[1]]
    assert ids == [f"i{i}" for i in range(1, 7)]
    # The same batch on a completion-order route comes back fastest-first.
    r = post(sheaf, "/batch", {"requests": reqs})
    assert [x["id"] for x in r.json()["results"]][0] == "i6"
