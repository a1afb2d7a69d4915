"""What one run's trace is: a root span with totals and one span per node attempt.

The recorder (rillflow.runtime.trace) builds a RunTrace from the run's events on the event loop and
hands it, unredacted, to a trace store; the store redacts, truncates and writes it on its own thread
(rillflow.runtime.trace_store), and exports it over OTLP when configured (trace_otlp). Attribute names
follow the OpenTelemetry GenAI semantic conventions where one exists (``gen_ai.*``, ``error.type``) and
use the ``rill.*`` namespace for what the conventions do not cover; ATTRIBUTES lists every one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SpanStatus = Literal["ok", "error", "skipped", "cancelled"]
RunStatus = Literal["ok", "responded", "failed", "cancelled"]

#: Every span attribute rillflow writes, with what it means (docs/tracing.md is generated from this).
ATTRIBUTES: dict[str, str] = {
    # OpenTelemetry GenAI semantic conventions
    "gen_ai.operation.name": "chat for llm nodes; the node type otherwise (retrieve, prompt, guardrail...)",
    "gen_ai.provider.name": "llama_cpp or openai (the model backend)",
    "gen_ai.request.model": "the model the node asked for",
    "gen_ai.request.max_tokens": "max_tokens of an llm node",
    "gen_ai.request.temperature": "sampling temperature",
    "gen_ai.request.top_p": "nucleus sampling bound",
    "gen_ai.request.seed": "sampling seed",
    "gen_ai.response.finish_reasons": "why generation stopped, e.g. ['stop']",
    "gen_ai.usage.input_tokens": "prompt tokens (the root span: summed over the run)",
    "gen_ai.usage.output_tokens": "generated tokens (the root span: summed over the run)",
    "gen_ai.conversation.id": "the run id",
    "error.type": "the error kind (timeout, rate_limit, server, ...) of a failed attempt or run",
    # rillflow's own
    "rill.flow": "flow name",
    "rill.run.id": "run id",
    "rill.run.status": "ok, responded, failed or cancelled",
    "rill.tenant": "the caller's tenant, when set",
    "rill.node.id": "node id",
    "rill.node.type": "node type",
    "rill.attempt": "attempt number, from 1",
    "rill.queue_ms": "time the node waited for a concurrency slot or a shared model",
    "rill.ttft_ms": "time to the first streamed chunk (the root span: to the first chunk of the answer)",
    "rill.duration_ms": "wall time of the attempt (the root span: of the run)",
    "rill.cost_usd": "cost from the model's price_per_mtok (the root span: summed over the run)",
    "rill.cache.hit": "true when the node's outputs came from the cache",
    "rill.cache.tier": "exact, semantic, offline or resume",
    "rill.cache.similarity": "cosine similarity of a semantic or offline cache hit",
    "rill.cache.hits": "root span: nodes served from the cache",
    "rill.retry.delay_s": "backoff before the next attempt (set on the failed attempt)",
    "rill.fallback.to": "the node that stood in after this one failed",
    "rill.guardrail.verdicts": "guardrail findings: [{check, action, detail}]",
    "rill.retracted_chars": "characters of streamed text withdrawn (guardrail or fallback)",
    "rill.skip.reason": "why a node was skipped",
    "rill.error.message": "the user-safe error message (redacted)",
    "rill.input": "the node's resolved inputs, redacted and truncated (JSON)",
    "rill.output": "the node's outputs, redacted and truncated (JSON)",
}


@dataclass(slots=True)
class Span:
    """One node attempt (or a skipped node, or a settled stand-in). Times are seconds since the run started."""

    span_id: str  # 16 hex digits
    node: str
    node_type: str
    attempt: int
    start: float
    end: float | None = None
    status: SpanStatus = "ok"
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Point-in-time marks inside the span: (seconds since run start, name, data), e.g. a retract.
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    #: Raw inputs and outputs; the store redacts and truncates them before they are written.
    inputs: Any = None
    outputs: Any = None


@dataclass(slots=True)
class RunTrace:
    """A whole run: the root span's data plus its node spans. Values are raw until a store redacts them."""

    run_id: str
    trace_id: str  # 32 hex digits (OTLP trace id)
    root_span_id: str  # 16 hex digits
    flow: str
    tenant: str | None
    started_at: float  # Unix time, seconds
    duration_ms: float = 0.0
    status: RunStatus = "ok"
    error_kind: str | None = None
    error_message: str | None = None
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    cache_hits: int = 0
    inputs: Any = None
    outputs: Any = None
    spans: list[Span] = field(default_factory=list)
    #: Strings to remove wherever they appear (resolved ${env.*} secrets of the flow).
    secrets: frozenset[str] = frozenset()
