"""Send stored runs to an OpenTelemetry collector (Jaeger, Langfuse, Phoenix, Grafana Tempo...) over OTLP/HTTP.

The trace store hands each run's *redacted* record (the shape ``TraceStore.get_run`` returns) to
``OtlpExporter.export`` on its writer thread. The run becomes a root span ``invoke_workflow {flow}``
with one child per node attempt, named after the OpenTelemetry GenAI conventions (``chat {model}``
for model calls, ``{node_type} {node}`` otherwise), with the times the run recorded, not the time
of export. Trace and span ids are the ones stored, so the trace id printed by ``rill trace show``
finds the same run in Jaeger. Spans leave in batches on the SDK's own thread; a collector that is
down costs a logged error and a count in ``failed``, never an exception in the caller.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

log = logging.getLogger("rillflow.trace")

WARN_EVERY_S = 60.0
ROOT_OPERATION = "invoke_workflow"


class OtlpExporter:
    """Exports redacted run records as OTLP spans.

    Args:
        endpoint: The collector's traces URL, e.g. ``http://localhost:4318/v1/traces`` (a URL without a path gets
            ``/v1/traces``). None: the SDK reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT.
        headers: Extra HTTP headers (e.g. an API key); None: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS.
        service_name: ``service.name`` of the spans; None: OTEL_SERVICE_NAME, else ``rillflow``.
        timeout: Seconds one batch may take, retries included; None: OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT or 10.
    """

    def __init__(self, endpoint: str | None = None, headers: dict[str, str] | None = None, service_name: str | None = None,
                 *, timeout: float | None = None) -> None:
        self.exported = 0  # spans the collector accepted
        self.failed = 0  # spans (or, before they became spans, runs) that did not get there
        self._warned = 0.0
        self._lock = threading.Lock()
        self._ids = _GivenIds()
        self._provider: TracerProvider | None = None
        self._closed = False
        try:
            exporter = OTLPSpanExporter(endpoint=_traces_url(endpoint), headers=headers, timeout=timeout)
            resource = Resource.create({"service.name": service_name or os.environ.get("OTEL_SERVICE_NAME") or "rillflow"})
            # ALWAYS_ON: the recorder already sampled (RILL_TRACE_SAMPLE); every stored run is exported.
            self._provider = TracerProvider(resource=resource, id_generator=self._ids, sampler=ALWAYS_ON, shutdown_on_exit=False)
            self._provider.add_span_processor(BatchSpanProcessor(_Counting(exporter, self)))
            self._tracer = self._provider.get_tracer("rillflow")
        except Exception as exc:  # a malformed OTEL_* setting: tracing to disk still works
            self.warn("OTLP export disabled: %s: %s", type(exc).__name__, exc)

    def export(self, run: dict[str, Any]) -> None:
        """Queue one run (root span and node spans) for export; never raises."""
        if self._provider is None or self._closed:
            return
        try:
            with self._lock:  # the id generator hands out the ids of the span being started
                try:
                    self._export(run)
                finally:
                    self._ids.clear()
        except Exception as exc:
            spans = run.get("spans") if isinstance(run, dict) else None
            self.failed += 1 + (len(spans) if isinstance(spans, list) else 0)
            self.warn("could not export a run over OTLP: %s: %s", type(exc).__name__, exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Send every queued span now; False when ``timeout`` passed first."""
        if self._provider is None or self._closed:
            return True
        try:
            return self._provider.force_flush(int(timeout * 1000))
        except Exception as exc:
            self.warn("OTLP flush failed: %s: %s", type(exc).__name__, exc)
            return False

    def shutdown(self) -> None:
        """Send what is queued and stop the export thread. Idempotent."""
        if self._provider is None or self._closed:
            return
        self._closed = True
        try:
            self._provider.shutdown()
        except Exception as exc:
            self.warn("OTLP shutdown failed: %s: %s", type(exc).__name__, exc)

    def warn(self, message: str, *args: object) -> None:
        """Log a warning, at most one a minute (a collector that is down must not flood the log)."""
        now = time.monotonic()
        if not self._warned or now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(message, *args)

    def _export(self, run: dict[str, Any]) -> None:
        base = int(float(run["started_at"]) * 1e9)
        self._ids.set(trace_id=int(run["trace_id"], 16), span_id=int(run.get("root_span_id") or "0", 16))
        # An empty context, not the current one: a span active on the calling thread must not adopt the run.
        root = self._tracer.start_span(f"{ROOT_OPERATION} {run['flow']}", context=Context(), attributes=_root_attributes(run),
                                       start_time=base)
        parent = trace_api.set_span_in_context(root)
        for span in run.get("spans") or ():
            attributes = _span_attributes(run, span)
            self._ids.set(span_id=int(span["span_id"], 16))
            model = attributes.get("gen_ai.request.model")
            chat = model is not None and attributes.get("gen_ai.operation.name") == "chat"
            child = self._tracer.start_span(f"chat {model!s}" if chat else f"{span['node_type']} {span['node']}",
                                            context=parent, kind=SpanKind.CLIENT if chat else SpanKind.INTERNAL,
                                            attributes=attributes, start_time=base + _ns(span["start_ms"]))
            for event in span.get("events") or ():
                child.add_event(str(event["name"]), _attributes(event.get("data") or {}), timestamp=base + _ns(event["time_ms"]))
            if span["status"] == "error":
                child.set_status(Status(StatusCode.ERROR, str(attributes.get("rill.error.message") or attributes.get("error.type") or "")))
            end = span["end_ms"] if span.get("end_ms") is not None else span["start_ms"]
            child.end(end_time=base + _ns(end))
        if run["status"] == "failed":
            root.set_status(Status(StatusCode.ERROR, str(run.get("error_message") or run.get("error_kind") or "")))
        root.end(end_time=base + _ns(run.get("duration_ms") or 0.0))


class _GivenIds(IdGenerator):
    """Makes the SDK use the stored ids: ``set`` before ``start_span``; random ids when none is set."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._trace_id = 0
        self._span_id = 0

    def set(self, *, trace_id: int | None = None, span_id: int = 0) -> None:
        if trace_id is not None:
            self._trace_id = trace_id
        self._span_id = span_id

    def clear(self) -> None:
        self._trace_id = self._span_id = 0

    def generate_trace_id(self) -> int:
        return self._trace_id or self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        return self._span_id or self._random.generate_span_id()


class _Counting(SpanExporter):
    """Counts what the collector accepted and refused (the SDK's processor swallows both)."""

    def __init__(self, inner: SpanExporter, owner: OtlpExporter) -> None:
        self._inner = inner
        self._owner = owner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:
            self._owner.warn("OTLP export raised %s: %s", type(exc).__name__, exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._owner.exported += len(spans)
        else:
            self._owner.failed += len(spans)
            self._owner.warn("OTLP export of %d spans failed (%d failed so far); is the collector up?", len(spans), self._owner.failed)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _root_attributes(run: dict[str, Any]) -> dict[str, AttributeValue]:
    values = {
        "gen_ai.operation.name": ROOT_OPERATION, "gen_ai.conversation.id": run["run_id"], "rill.run.id": run["run_id"],
        "rill.flow": run["flow"], "rill.run.status": run["status"], "rill.tenant": run.get("tenant"),
        "rill.duration_ms": run.get("duration_ms"), "rill.ttft_ms": run.get("ttft_ms"), "rill.cost_usd": run.get("cost"),
        "gen_ai.usage.input_tokens": run.get("input_tokens"), "gen_ai.usage.output_tokens": run.get("output_tokens"),
        "rill.cache.hits": run.get("cache_hits"), "error.type": run.get("error_kind"), "rill.error.message": run.get("error_message"),
        "rill.input": None if run.get("inputs") is None else _text(run["inputs"]),
        "rill.output": None if run.get("outputs") is None else _text(run["outputs"]),
    }
    return _attributes(values)


def _span_attributes(run: dict[str, Any], span: dict[str, Any]) -> dict[str, AttributeValue]:
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if span["node_type"] == "llm" else span["node_type"],
        "gen_ai.conversation.id": run["run_id"], "rill.run.id": run["run_id"], "rill.node.id": span["node"],
        "rill.node.type": span["node_type"], "rill.attempt": span["attempt"],
    }
    if span.get("end_ms") is not None:
        values["rill.duration_ms"] = span["end_ms"] - span["start_ms"]
    values.update(span.get("attributes") or {})
    return _attributes(values)


def _attributes(values: dict[str, Any]) -> dict[str, AttributeValue]:
    """OTLP attributes take scalars and lists of one scalar type: anything else travels as JSON text."""
    return {str(k): _attribute(v) for k, v in values.items() if v is not None}


def _attribute(value: Any) -> AttributeValue:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and value:
        for kind in (str, bool, int, float):
            if all(type(v) is kind for v in value):
                return list(value)
        if all(type(v) in (int, float) for v in value):
            return [float(v) for v in value]
    return _text(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _ns(ms: float) -> int:
    return int(float(ms) * 1e6)


def _traces_url(endpoint: str | None) -> str | None:
    if endpoint and urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint
