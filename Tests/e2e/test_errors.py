"""Bad requests get a specific 4xx with application/problem+json, and are not fanned out."""
import json

import httpx
import pytest


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = json.loads(r.text)
    assert doc["status"] == status
    return doc


def test_malformed_batch_names_item_and_field(sheaf):
    body = {"requests": [{"method": "GET", "url": "/users/1"}, {"method": "GET", "url": "/users/2"},
                         {"method": "GET", "url": "/users/3"}, {"url": "/users/4"}]}
    doc = problem(httpx.post(sheaf.url + "/batch", json=body), 400)
    assert doc["detail"] == "requests[3].method: missing"
    assert doc["field"] == "requests[3].method"


def test_invalid_json_and_xml(sheaf):
    doc = problem(httpx.post(sheaf.url + "/batch", content=b'{"requests": [', headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in doc["detail"] and doc["field"] == "body"
    doc = problem(httpx.post(sheaf.url + "/batch", content=b"<S:batch xmlns:S='urn:sheaf'>",
                             headers={"content-type": "application/xml"}), 400)
    assert "not well-formed XML" in doc["detail"] and doc["field"] == "body"


def test_a_malformed_number_is_named_for_what_is_wrong(sheaf):
    for body, detail in [(b'{"ids":[01]}', "a number has a leading zero at byte 9"),
                         (b'{"ids":[1.]}', "a digit must follow '.' in a number at byte 10")]:
        doc = problem(httpx.post(sheaf.url + "/bulk/users", content=body, headers={"content-type": "application/json"}), 400)
        assert doc["detail"].endswith(detail) and doc["field"] == "body", doc


def test_xml_with_a_dtd_is_refused(sheaf):
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            '<S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:"><S:request method="GET"><D:href>/users/&lol2;</D:href></S:request></S:batch>')
    doc = problem(httpx.post(sheaf.url + "/batch", content=bomb, headers={"content-type": "application/xml"}), 400)
    assert "DTD" in doc["detail"] and doc["field"] == "body"


def test_too_many_items_is_413(sheaf):
    doc = problem(httpx.post(sheaf.url + "/bulk/users", json={"ids": list(range(21))}), 413)
    assert "max_items (20)" in doc["detail"]


def test_too_large_body_is_413(sheaf):
    big = json.dumps({"requests": [{"method": "GET", "url": "/users/1", "body": "x" * 70000}]})
    doc = problem(httpx.post(sheaf.url + "/batch", content=big, headers={"content-type": "application/json"}), 413)
    assert "max_body_bytes" in doc["detail"]


def test_unreadable_body_type_is_415(sheaf):
    doc = problem(httpx.post(sheaf.url + "/bulk/users", content=b"ids=1", headers={"content-type": "text/plain"}), 415)
    assert "application/json" in doc["detail"]
    problem(httpx.post(sheaf.url + "/bulk/users", content=b"<a/>", headers={"content-type": "application/xml"}), 415)


def test_nothing_acceptable_is_406(sheaf):
    doc = problem(httpx.post(sheaf.url + "/bulk/users", json={"ids": [1]}, headers={"accept": "text/html"}), 406)
    assert "Accept" in doc["detail"]
    # The text names every format a 207 can take, NDJSON included.
    for offered in ("application/xml", "text/xml", "application/json", "application/x-ndjson"):
        assert offered in doc["detail"]


def test_unknown_path_is_404_and_wrong_method_is_405(sheaf):
    problem(httpx.post(sheaf.url + "/nope", json={}), 404)
    r = httpx.put(sheaf.url + "/batch", json={})
    problem(r, 405)
    assert set(m.strip() for m in r.headers["allow"].split(",")) == {"POST", "DELETE"}


def test_bad_fan_out_element_is_400(sheaf):
    doc = problem(httpx.post(sheaf.url + "/bulk/users", json={"ids": [1, {"x": 2}]}), 400)
    assert doc["field"] == "/ids/1"
    doc = problem(httpx.post(sheaf.url + "/bulk/users", json={"id": [1]}), 400)
    assert doc["detail"] == "/ids: not found in the body"


def test_server_survives_garbage(sheaf):
    import socket
    with socket.create_connection(("127.0.0.1", sheaf.port)) as s:
        s.sendall(b"\x00\x01GARBAGE \r\n\r\n")
        s.settimeout(5)
        try:
            s.recv(1024)
        except OSError:
            pass
    assert httpx.post(sheaf.url + "/bulk/users", json={"ids": [1]}).status_code == 207


def test_mutated_batches_never_crash_the_server(sheaf):
    """300 randomly damaged JSON and XML batches: each gets a 207 or a specific 4xx, and the
    server keeps answering (seeded, so a failure reproduces)."""
    import random
    rng = random.Random(1234)
    json_batch = json.dumps({"requests": [{"id": "a", "method": "GET", "url": "/users/1", "headers": {"X-A": "1"}},
                                          {"method": "PUT", "url": "/docs/x", "body": {"k": [1, "two", None]}}]}).encode()
    xml_batch = (b'<S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:"><S:request id="a" method="GET"><D:href>/users/1</D:href>'
                 b'</S:request><S:request method="PUT"><D:href>/docs/b</D:href><S:header name="X">v</S:header>'
                 b'<S:body>hi</S:body></S:request></S:batch>')
    seen = set()
    with httpx.Client(timeout=30) as client:
        for i in range(300):
            base, ctype = (json_batch, "application/json") if i % 2 == 0 else (xml_batch, "application/xml")
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(data))
                if op < 0.4:
                    data[pos] = rng.randrange(256)
                elif op < 0.7:
                    del data[pos:pos + rng.randint(1, 8)]
                else:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            r = client.post(sheaf.url + "/batch", content=bytes(data), headers={"content-type": ctype})
            assert r.status_code in (207, 400, 413), (i, r.status_code, bytes(data))
            if r.status_code == 400:
                assert r.headers["content-type"] == "application/problem+json"
            if r.status_code == 207:  # whatever went in, the 207 parses
                if ctype == "application/json":
                    assert len(json.loads(r.text)["results"]) == 2
                else:
                    import xml.etree.ElementTree as ET
                    assert len(ET.fromstring(r.content).findall("{DAV:}response")) >= 1
            seen.add(r.status_code)
    assert 400 in seen
    assert httpx.post(sheaf.url + "/bulk/users", json={"ids": [1]}).status_code == 207
