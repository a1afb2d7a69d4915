"""Build a run's trace from its events: a root span with totals and one span per node attempt.

The recorder is one more consumer of the event stream (DESIGN.md section 1), so spans and events
cannot disagree: a span opens at ``node_started`` (one per attempt) and closes at ``node_retry``,
``node_fallback``, ``node_finished`` or ``node_failed``. It runs on the event loop and only collects;
the trace store redacts, truncates and writes on its own thread. A recorder that breaks logs a warning
and counts it; it never fails the run.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from rillflow.runtime.events import Event
from rillflow.runtime.trace_model import RunTrace, Span

if TYPE_CHECKING:
    from rillflow.runtime.scheduler import Run

log = logging.getLogger("rillflow.trace")


class TraceSink(Protocol):
    """Where finished traces go (rillflow.runtime.trace_store.TraceStore). ``submit`` must not block."""

    def submit(self, trace: RunTrace) -> None: ...


class RecorderStats:
    errors = 0  # recorder failures (a bug, reported in `rill serve` metrics); runs carried on regardless
    sampled_out = 0


def sample_rate() -> float:
    """RILL_TRACE_SAMPLE: the fraction of successful runs whose trace is kept (failed runs always are)."""
    raw = os.environ.get("RILL_TRACE_SAMPLE", "").strip()
    try:
        rate = float(raw) if raw else 1.0
    except ValueError:
        log.warning("RILL_TRACE_SAMPLE=%r is not a number between 0 and 1: keeping every trace", raw)
        return 1.0
    return min(1.0, max(0.0, rate))


_LLM_REQUEST = (("max_tokens", "gen_ai.request.max_tokens"), ("top_p", "gen_ai.request.top_p"))


class SpanRecorder:
    __slots__ = ("_open", "_run", "_sample", "_sink", "trace")

    def __init__(self, run: Run, sink: TraceSink, sample: float | None = None) -> None:
        self._run = run
        self._sink = sink
        self._sample = sample_rate() if sample is None else sample
        self._open: dict[str, Span] = {}  # node -> the span of its running attempt
        self.trace: RunTrace | None = None

    def on_event(self, event: Event) -> None:
        kind = event.type
        if kind == "chunk":  # the per-token path: one comparison
            trace = self.trace
            if trace is not None and trace.ttft_ms is None and event.node is not None:
                trace.ttft_ms = round(event.ts * 1000, 3)
            return
        try:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, event)
        except Exception as exc:  # a recorder bug must never fail the run
            RecorderStats.errors += 1
            log.warning("trace recorder failed on %s (%s): this run's trace may be incomplete", kind, type(exc).__name__)

    # -- handlers -------------------------------------------------------------------------
    def _run_started(self, event: Event) -> None:
        run = self._run
        self.trace = RunTrace(
            run_id=run.run_id, trace_id=uuid.uuid4().hex, root_span_id=secrets.token_hex(8), flow=run.plan.name,
            tenant=run.tenant, started_at=time.time() - event.ts, inputs=run.resolver.inputs, secrets=run.plan.secrets)

    def _node_started(self, event: Event) -> None:
        node = event.node or ""
        pn = self._run.plan.nodes.get(node)
        span = Span(span_id=secrets.token_hex(8), node=node, node_type=event.data.get("node_type", ""),
                    attempt=int(event.data.get("attempt", 1)), start=event.ts)
        attrs = span.attributes
        attrs["rill.queue_ms"] = event.data.get("queue_ms", 0.0)
        if pn is not None and pn.type == "llm":
            self._llm_request(pn, attrs)
        else:
            attrs["gen_ai.operation.name"] = span.node_type
        self._open[node] = span
        self._spans().append(span)

    def _llm_request(self, pn: Any, attrs: dict[str, Any]) -> None:
        config = pn.config
        spec = self._run.plan.env.models.get(config.model)
        attrs["gen_ai.operation.name"] = "chat"
        if spec is not None:
            attrs["gen_ai.provider.name"] = spec.provider
            attrs["gen_ai.request.model"] = str(spec.model or spec.path)
            attrs["gen_ai.request.temperature"] = config.temperature if config.temperature is not None else spec.temperature
            seed = config.seed if config.seed is not None else spec.seed
            if seed is not None:
                attrs["gen_ai.request.seed"] = seed
        for field, name in _LLM_REQUEST:
            attrs[name] = getattr(config, field)

    def _node_retry(self, event: Event) -> None:
        data = event.data
        if "index" in data:  # a map item's retry: a mark inside the map node's span
            return self._mark(event)
        span = self._close(event, "error")
        span.attributes["rill.retry.delay_s"] = data.get("delay")
        self._error(span, data.get("error"))
        self._usage(span, data.get("usage"))

    def _node_fallback(self, event: Event) -> None:
        span = self._close(event, "error")
        span.attributes["rill.fallback.to"] = event.data.get("to")
        self._error(span, event.data.get("error"))

    def _node_finished(self, event: Event) -> None:
        data = event.data
        if "via" in data:  # a failed node settled by its stand-in: the stand-in has its own spans
            return
        node = event.node or ""
        if data.get("cached") == "offline" and node not in self._open:  # served after its spans closed as failures
            self._node_started(Event("node_started", event.run_id, event.seq, event.ts, node, {"node_type": self._type(node), "attempt": 0}))
            self._cache(self._open[node], self._run.cache_hits.get(node, {}))
        span = self._close(event, "ok")
        self._usage(span, data.get("usage"))
        first = self._run.first_chunk.get(node)
        if first is not None:  # from this attempt's start (node_finished's ttft_ms counts from the node's first attempt)
            span.attributes["rill.ttft_ms"] = round(max(0.0, first - self._run.started - span.start) * 1000, 3)

    def _node_failed(self, event: Event) -> None:
        span = self._close(event, "error")
        self._error(span, event.data.get("error"))

    def _node_skipped(self, event: Event) -> None:
        span = self._close(event, "skipped")
        span.attributes["rill.skip.reason"] = event.data.get("reason")

    def _cache_hit(self, event: Event) -> None:
        span = self._open.get(event.node or "")
        if span is not None:
            self._cache(span, event.data)

    def _guardrail_flagged(self, event: Event) -> None:
        span = self._latest(event)
        verdict = {k: event.data.get(k) for k in ("check", "action", "detail")}
        span.attributes.setdefault("rill.guardrail.verdicts", []).append(verdict)
        span.events.append((event.ts, "guardrail_flagged", dict(event.data)))

    def _retract(self, event: Event) -> None:
        span = self._latest(event)
        attrs = span.attributes
        attrs["rill.retracted_chars"] = attrs.get("rill.retracted_chars", 0) + int(event.data.get("chars") or 0)
        span.events.append((event.ts, "retract", dict(event.data)))

    def _mark(self, event: Event) -> None:  # route_chosen, model_queued: points inside the span
        self._latest(event).events.append((event.ts, event.type, dict(event.data)))

    def _run_ended(self, event: Event) -> None:
        trace = self.trace
        if trace is None:
            return
        for node in list(self._open):  # still running when the run ended: cancelled with it
            self._close(Event("node_failed", event.run_id, event.seq, event.ts, node, {}), "cancelled")
        data = event.data
        trace.duration_ms = round(event.ts * 1000, 3)
        if event.type == "run_finished":
            trace.status = "responded" if data.get("status") == "responded" else "ok"
            trace.outputs = data.get("outputs")
        else:
            error = data.get("error") or {}
            trace.status = "cancelled" if error.get("kind") == "cancelled" else "failed"
            trace.error_kind, trace.error_message = error.get("kind"), error.get("message")
        run = self._run
        cost = None
        for span in trace.spans:
            attrs = span.attributes
            trace.input_tokens += int(attrs.get("gen_ai.usage.input_tokens") or 0)
            trace.output_tokens += int(attrs.get("gen_ai.usage.output_tokens") or 0)
            if attrs.get("rill.cost_usd") is not None:
                cost = (cost or 0.0) + attrs["rill.cost_usd"]
            if attrs.get("rill.cache.hit"):
                trace.cache_hits += 1
            span.inputs = run.node_inputs.get(span.node)
            if span.status == "ok":
                values = run.values.get(span.node)
                span.outputs = values
                if isinstance(values, dict) and isinstance(values.get("finish_reason"), str):
                    attrs["gen_ai.response.finish_reasons"] = [values["finish_reason"]]
        trace.cost = cost
        if trace.status in ("ok", "responded") and self._sample < 1.0 and random.random() >= self._sample:
            RecorderStats.sampled_out += 1
            return
        self._sink.submit(trace)

    # -- helpers --------------------------------------------------------------------------
    def _spans(self) -> list[Span]:
        assert self.trace is not None
        return self.trace.spans

    def _type(self, node: str) -> str:
        pn = self._run.plan.nodes.get(node)
        return pn.type if pn is not None else ""

    def _close(self, event: Event, status: Any) -> Span:
        """End the node's open span; a node that ends without one (failed before it started,
        skipped, settled by a stand-in) gets a zero-length span, so every outcome is visible."""
        node = event.node or ""
        span = self._open.pop(node, None)
        if span is None:
            span = Span(span_id=secrets.token_hex(8), node=node, node_type=self._type(node), attempt=0, start=event.ts)
            span.attributes["gen_ai.operation.name"] = span.node_type
            self._spans().append(span)
        span.end = event.ts
        span.status = status
        span.attributes["rill.duration_ms"] = round((event.ts - span.start) * 1000, 3)
        return span

    def _latest(self, event: Event) -> Span:
        node = event.node or ""
        span = self._open.get(node)
        if span is not None:
            return span
        for span in reversed(self._spans()):
            if span.node == node:
                return span
        return self._close(event, "ok")

    @staticmethod
    def _error(span: Span, error: Any) -> None:
        if isinstance(error, dict):
            span.attributes["error.type"] = error.get("kind")
            span.attributes["rill.error.message"] = error.get("message")

    @staticmethod
    def _usage(span: Span, usage: Any) -> None:
        if isinstance(usage, dict):
            attrs = span.attributes
            attrs["gen_ai.usage.input_tokens"] = usage.get("input_tokens", 0)
            attrs["gen_ai.usage.output_tokens"] = usage.get("output_tokens", 0)
            if usage.get("cost") is not None:
                attrs["rill.cost_usd"] = usage["cost"]

    @staticmethod
    def _cache(span: Span, data: dict[str, Any]) -> None:
        attrs = span.attributes
        attrs["rill.cache.hit"] = True
        attrs["rill.cache.tier"] = data.get("tier")
        if data.get("similarity") is not None:
            attrs["rill.cache.similarity"] = data["similarity"]


_HANDLERS: dict[str, Any] = {
    "run_started": SpanRecorder._run_started,
    "node_started": SpanRecorder._node_started,
    "node_retry": SpanRecorder._node_retry,
    "node_fallback": SpanRecorder._node_fallback,
    "node_finished": SpanRecorder._node_finished,
    "node_failed": SpanRecorder._node_failed,
    "node_skipped": SpanRecorder._node_skipped,
    "cache_hit": SpanRecorder._cache_hit,
    "guardrail_flagged": SpanRecorder._guardrail_flagged,
    "retract": SpanRecorder._retract,
    "route_chosen": SpanRecorder._mark,
    "model_queued": SpanRecorder._mark,
    "run_finished": SpanRecorder._run_ended,
    "run_failed": SpanRecorder._run_ended,
}
