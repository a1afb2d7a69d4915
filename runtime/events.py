"""The one event vocabulary: every consumer of a run (CLI, SSE, trace, tests) reads these.

Each run emits one ordered stream. Every event has ``type``, ``run_id``, ``seq`` (0, 1, 2, ... with no
gaps), ``ts`` (seconds since the run started, monotonic) and ``node`` (None for run-level events).
``data`` by type:

=================  ==========================================================================
run_started        flow, inputs (names only), started_at (ISO 8601 wall clock) [, resumes (run id)]
node_started       attempt, node_type, queue_ms (one per attempt: a retry starts attempt 2, 3, ...)
node_progress      done, total, message [, index, value for map items]
chunk              output (flow output name), text
retract            reason, check [, chars]: drop the text this node streamed so far (guardrail)
guardrail_flagged  check, action ('block', 'redact', 'flag'), detail [, count]
route_chosen       branch, reason [, scores]
model_queued       model, wait_ms: the node waited for a shared local model
node_retry         attempt (the one that failed), error {kind, message}, delay (s), duration_ms [, usage, index]
cache_hit          tier (exact, semantic, offline, resume), age_s [, similarity]: outputs replayed from the cache
node_fallback      to (the stand-in node), error {kind, message}
node_skipped       reason
node_finished      duration_ms, attempts [, usage {input_tokens, output_tokens, model, cost}, ttft_ms, cached (tier)]
node_failed        error {kind, message}, attempts
run_finished       status ('ok' or 'responded'), outputs [, node that responded,
                   cached_answer {node, similarity, cached_at, error}: an offline answer stood in for failed models]
run_failed         error {kind, message, node}
=================  ==========================================================================

Exactly one of run_finished / run_failed ends every run. Error messages are user-safe: a kind, a
short message with secrets redacted, never a stack trace.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

EventType = Literal[
    "run_started", "node_started", "node_progress", "chunk", "node_retry", "node_fallback",
    "retract", "guardrail_flagged", "route_chosen", "model_queued", "cache_hit",
    "node_skipped", "node_finished", "node_failed", "run_finished", "run_failed",
]
TERMINAL: frozenset[str] = frozenset({"run_finished", "run_failed"})


class Event(NamedTuple):
    """One event. A NamedTuple: immutable, typed, and cheap to build on the per-chunk path."""

    type: EventType
    run_id: str
    seq: int
    ts: float
    node: str | None
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "run_id": self.run_id, "seq": self.seq, "ts": round(self.ts, 6), "node": self.node, "data": self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_fallback, ensure_ascii=False)


def _fallback(value: Any) -> Any:
    """Values nodes return need not be JSON types; events stay serialisable regardless."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)
