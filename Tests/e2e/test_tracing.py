"""Trace context and OTLP export: a batch span continuing the client's trace, one child span per
item, and each upstream call carrying its item's span in `traceparent`, as nginx sees it.
Spans are received by a small OTLP/HTTP collector started here and decoded with opentelemetry-proto."""
import gzip
import http.server
import threading
import time

import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb2

from conftest import Sheaf, free_port


class Collector:
    """OTLP/HTTP (protobuf) traces receiver on loopback; keeps every span it was sent."""

    def __init__(self):
        self.spans, self.lock = [], threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                collector.spans.append((service, span))
                reply = trace_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.1)
        with self.lock:
            raise AssertionError(f"spans never matched; got {len(self.spans)}")

    def stop(self):
        self.server.shutdown()


def _attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_spans_link_the_batch_its_items_and_the_upstream(workdir, nginx):
    collector = Collector()
    s = Sheaf(workdir, "tracing", f"""
        tracing: {{otlp_endpoint: "http://127.0.0.1:{collector.port}/v1/traces", service_name: sheaf-e2e}}
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c}}
        routes:
          - name: fan
            method: POST
            path: /fan
            upstream: h2
            fan_out: {{items: "", method: GET, path: "/headers/{{item}}"}}
        """)
    try:
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = httpx.post(s.url + "/fan", json=[1, 2, 3, 4, 5], headers={"traceparent": parent, "X-Request-ID": "traced-1"},
                       timeout=10)
        assert r.status_code == 207
        trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
        spans = collector.wait_for(lambda spans: sum(1 for _, sp in spans if sp.trace_id == trace_id) >= 6)
        ours = [(service, sp) for service, sp in spans if sp.trace_id == trace_id]
        assert {service for service, _ in ours} == {"sheaf-e2e"}
        batches = [sp for _, sp in ours if sp.kind == sp.SPAN_KIND_SERVER]
        items = [sp for _, sp in ours if sp.kind == sp.SPAN_KIND_CLIENT]
        assert len(batches) == 1 and len(items) == 5
        batch = batches[0]
        assert batch.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
        assert batch.name == "POST /fan"
        assert _attrs(batch)["sheaf.request_id"] == "traced-1"
        assert all(item.parent_span_id == batch.span_id for item in items)
        assert sorted(_attrs(item)["sheaf.item.id"] for item in items) == ["0", "1", "2", "3", "4"]
        assert all(_attrs(item)["http.response.status_code"] == 200 for item in items)
        assert len({item.span_id for item in items}) == 5
        # Each upstream call carried its own item's span as the parent, in the client's trace.
        seen = [line for line in nginx.forwarded_lines() if line["rid"].startswith("traced-1.")]
        assert len(seen) == 5
        sent = {}
        for line in seen:
            version, trace, span, flags = line["tp"].split("-")
            assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
            sent[line["rid"].split(".", 1)[1]] = bytes.fromhex(span)
        assert sent == {_attrs(item)["sheaf.item.id"]: item.span_id for item in items}
        # A request without traceparent starts a trace of its own.
        r = httpx.post(s.url + "/fan", json=[9], headers={"X-Request-ID": "traced-2"}, timeout=10)
        assert r.status_code == 207
        spans = collector.wait_for(lambda spans: any(_attrs(sp).get("sheaf.request_id") == "traced-2" for _, sp in spans))
        [fresh] = [sp for _, sp in spans if _attrs(sp).get("sheaf.request_id") == "traced-2"]
        assert fresh.trace_id != trace_id and fresh.parent_span_id == b""
    finally:
        s.stop()
        collector.stop()
