"""OTLP export: a real HTTP collector on loopback receives the run with the stored ids, GenAI names, no secrets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from rillflow.runtime.trace_otlp import OtlpExporter
from rillflow.runtime.trace_store import TraceStore
from tests.test_trace_store import ENV_SECRET, FLOW_SECRET, SECRET_KEY, sample_trace


class Collector:
    """Accepts POST /v1/traces like an OpenTelemetry collector and keeps the raw bodies."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                bodies.append(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    found.extend(scope_spans.spans)
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values] if kind == "array_value" else getattr(value, kind)
    return out


def test_a_stored_run_arrives_with_its_ids_names_and_no_secrets(tmp_path: Path, collector: Collector,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_KEY", ENV_SECRET)
    trace = sample_trace()
    exporter = OtlpExporter(endpoint=collector.url)
    with TraceStore(tmp_path / "traces.db", exporter=exporter) as store:
        store.submit(trace)
        assert store.flush()
    # close() shut the exporter down, which sends what its batch processor held
    assert exporter.exported == 4 and exporter.failed == 0
    raw = b"".join(collector.bodies)
    for secret in (SECRET_KEY, FLOW_SECRET, ENV_SECRET):
        assert secret.encode() not in raw
    spans = {s.name: s for s in collector.spans()}
    assert sorted(spans) == ["chat gemma-3", "invoke_workflow qa", "retrieve retrieve"]  # two attempts share a name
    by_id = {s.span_id.hex(): s for s in collector.spans()}
    root = spans["invoke_workflow qa"]
    assert root.trace_id.hex() == trace.trace_id and root.span_id.hex() == trace.root_span_id and root.parent_span_id == b""
    assert set(by_id) == {trace.root_span_id, "1111111111111111", "2222222222222222", "3333333333333333"}
    for span_id in ("1111111111111111", "2222222222222222", "3333333333333333"):
        assert by_id[span_id].trace_id.hex() == trace.trace_id and by_id[span_id].parent_span_id.hex() == trace.root_span_id
    assert root.end_time_unix_nano - root.start_time_unix_nano == 1_250_000_000
    assert root.start_time_unix_nano == int(trace.started_at * 1e9)
    root_attrs = _attrs(root)
    assert root_attrs["gen_ai.usage.input_tokens"] == 42 and root_attrs["rill.flow"] == "qa"
    assert root_attrs["error.type"] == "timeout" and root.status.code == Status.STATUS_CODE_ERROR

    failed, retried = by_id["2222222222222222"], by_id["3333333333333333"]
    assert failed.status.code == Status.STATUS_CODE_ERROR and "[SECRET]" in failed.status.message
    attrs = _attrs(retried)
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "gemma-3"
    assert attrs["gen_ai.usage.output_tokens"] == 7 and attrs["rill.attempt"] == 2
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["rill.guardrail.verdicts"].startswith("[{")  # a list of objects travels as JSON text
    assert retried.events[0].name == "retract"
    assert retried.events[0].time_unix_nano - retried.start_time_unix_nano == 300_000_000
    assert _attrs(by_id["1111111111111111"])["rill.cache.tier"] == "semantic"


def test_a_collector_that_is_down_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    exporter = OtlpExporter(endpoint=f"http://127.0.0.1:{port}", timeout=0.5)
    record = {**_record(), "spans": []}
    exporter.export(record)
    exporter.flush()
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.failed == 1 and exporter.exported == 0
    assert any(r.name == "rillflow.trace" for r in caplog.records)


def test_a_malformed_record_is_counted_not_raised() -> None:
    exporter = OtlpExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=0.1)
    exporter.export({**_record(), "trace_id": "not hex"})
    assert exporter.failed == 1
    exporter.shutdown()


def _record() -> dict[str, Any]:
    return {"run_id": "run-x", "trace_id": "ab" * 16, "root_span_id": "cd" * 8, "flow": "qa", "tenant": None, "started_at": 1.7e9,
            "duration_ms": 5.0, "status": "ok", "error_kind": None, "error_message": None, "ttft_ms": None, "input_tokens": 0,
            "output_tokens": 0, "cost": None, "cache_hits": 0, "inputs": None, "outputs": None, "span_count": 0, "spans": []}


def test_a_span_active_on_the_calling_thread_does_not_adopt_the_run(collector: Collector) -> None:
    from opentelemetry import trace

    outer = trace.NonRecordingSpan(trace.SpanContext(0x1234, 0x5678, is_remote=True))
    exporter = OtlpExporter(endpoint=collector.url)
    with trace.use_span(outer):
        exporter.export(_record())
    exporter.shutdown()
    (root,) = collector.spans()
    assert root.trace_id.hex() == "ab" * 16 and root.parent_span_id == b""
