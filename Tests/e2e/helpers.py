import json
import xml.etree.ElementTree as ET

DAV = "{DAV:}"
S = "{urn:sheaf}"


def parse_xml_207(body):
    """Parses a DAV:multistatus with a namespace-aware parser; returns [(href, status_line, id, element)]."""
    root = ET.fromstring(body)
    assert root.tag == DAV + "multistatus"
    out = []
    for r in root.findall(DAV + "response"):
        children = [c.tag for c in r]
        # RFC 4918: href first, then status.
        assert children[0] == DAV + "href" and children[1] == DAV + "status", children
        out.append((r.find(DAV + "href").text, r.find(DAV + "status").text, r.find(S + "id").text, r))
    hrefs = [h for h, _, _, _ in out]
    assert len(hrefs) == len(set(hrefs)), "an href appears more than once"
    return root, out


def status_code(line):
    proto, code, reason = line.split(" ", 2)
    assert proto == "HTTP/1.1" and reason
    return int(code)


def results_by_id(body):
    doc = json.loads(body)
    ids = [r["id"] for r in doc["results"]]
    assert len(ids) == len(set(ids)), "an item was reported twice"
    return doc, {r["id"]: r for r in doc["results"]}
