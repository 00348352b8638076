"""WebDAV properties in the 207 (`properties:` on a route): two independent WebDAV client
libraries parse the body as they would a PROPFIND answer. Neither models a propstat's own status,
so the status is read from the response element each library hands out for an href."""
import importlib
from urllib.parse import unquote

import httpx
import pytest

from conftest import Sheaf


def library(module, package):
    """A WebDAV client library the test needs: missing is a failure, never a skip."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{package} is not installed (`make test-deps` installs it, pinned in the Makefile and .ci/run)")


@pytest.fixture(scope="module")
def props_sheaf(workdir, nginx):
    s = Sheaf(workdir, "properties", f"""
        upstreams:
          nginx: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - name: props
            method: POST
            path: /props
            upstream: nginx
            properties: [getetag, getcontenttype, getcontentlength, getlastmodified]
        """)
    yield s
    s.stop()


BATCH = {"requests": [
    {"id": "h1", "method": "GET", "url": "/headers/1"},
    {"id": "h2", "method": "GET", "url": "/headers/2"},
    {"id": "h3", "method": "GET", "url": "/headers/3"},
    {"id": "gone", "method": "GET", "url": "/missing/4"},         # nginx: 404, JSON, no ETag
    {"id": "refused", "method": "GET", "url": "http://evil.example/x"},  # never sent: Sheaf's own 400
]}


def status_code(line):
    return int(line.split()[1])


@pytest.fixture(scope="module")
def answers(props_sheaf):
    xml = httpx.post(props_sheaf.url + "/props", json=BATCH, headers={"accept": "application/xml"}, timeout=30)
    assert xml.status_code == 207
    doc = httpx.post(props_sheaf.url + "/props", json=BATCH, headers={"accept": "application/json"}, timeout=30).json()
    by_id = {r["id"]: r for r in doc["results"]}
    assert set(by_id) == {"h1", "h2", "h3", "gone", "refused"}
    return xml.content, by_id


def test_json_carries_the_properties(answers):
    _, by_id = answers
    for n in (1, 2, 3):
        assert by_id[f"h{n}"]["status"] == 200
        assert by_id[f"h{n}"]["properties"] == {"getetag": f'"e{n}"', "getcontenttype": "application/json",
                                                "getcontentlength": str(len(f'{{"id":{n}}}')), "getlastmodified": None}
    assert by_id["gone"]["status"] == 404 and by_id["gone"]["properties"]["getetag"] is None
    assert by_id["gone"]["properties"]["getcontenttype"] == "application/json"
    assert by_id["refused"]["status"] == 400 and "properties" not in by_id["refused"]


def test_webdav4_reads_every_href_once_with_its_properties_and_status(answers):
    multistatus = library("webdav4.multistatus", "webdav4")
    body, by_id = answers
    parsed = multistatus.MultiStatusResponse(body.decode("utf-8"))
    responses = list(parsed.responses.values())
    assert sorted(r.href for r in responses) == sorted(r["href"] for r in by_id.values()), "every href once"
    by_href = {r.href: r for r in responses}
    for item in by_id.values():
        response = by_href[item["href"]]
        if "properties" in item:
            # The propstat form: no status of the response's own (RFC 4918 §14.24).
            assert response.has_propstat and response.status_code is None
            status = multistatus.prop(response.response_xml, "status", relative=True)
            assert status_code(status) == item["status"]
            assert response.properties.etag == item["properties"]["getetag"]
            assert response.properties.content_type == item["properties"]["getcontenttype"]
        else:
            assert not response.has_propstat and response.status_code == item["status"]
            assert response.response_description == item["error"]
    assert by_href["/headers/2"].properties.etag == '"e2"'
    assert by_href["/headers/2"].properties.content_length == len('{"id":2}')
    assert by_href["/missing/4"].properties.etag is None


def test_webdavclient3_reads_every_href_once_with_its_properties_and_status(answers):
    client = library("webdav3.client", "webdavclient3")
    body, by_id = answers
    infos = client.WebDavXmlUtils.parse_get_list_info_response(body)
    assert sorted(i["path"] for i in infos) == sorted(unquote(r["href"]) for r in by_id.values()), "every href once"
    by_path = {i["path"]: i for i in infos}
    for item in by_id.values():
        info = by_path[unquote(item["href"])]
        if "properties" in item:
            # An absent property is listed empty, under 404.
            assert (info["etag"] or None) == item["properties"]["getetag"]
            assert info["content_type"] == item["properties"]["getcontenttype"]
            assert info["size"] == item["properties"]["getcontentlength"]
            response = client.WebDavXmlUtils.extract_response_for_path(body, item["href"], "http://sheaf")
            assert status_code(response.findtext("{DAV:}propstat/{DAV:}status")) == item["status"]
            assert response.find("{DAV:}status") is None
        else:
            assert info["etag"] is None and info["content_type"] is None
    assert by_path["/headers/1"]["etag"] == '"e1"' and by_path["/headers/1"]["content_type"] == "application/json"
