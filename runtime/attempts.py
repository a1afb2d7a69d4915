"""One node's attempts: the single retry loop and the single deadline (reliability notes 1.5).

Retries use exponential backoff with full jitter and honour a provider's Retry-After. An attempt that
already streamed chunks to consumers is never retried: they have seen its text.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncGenerator, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

from rillflow.nodes.base import Chunk, Output, Progress, Signal
from rillflow.runtime.context import NodeContext
from rillflow.runtime.errors import NodeError
from rillflow.runtime.streams import StreamFailed, StreamSkipped

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # pragma: no cover - exercised on 3.10 only
    from async_timeout import timeout_at  # type: ignore[import-not-found,no-redef,unused-ignore]

if TYPE_CHECKING:
    from rillflow.runtime.plan import PlanNode
    from rillflow.runtime.scheduler import Run

MAX_RETRY_AFTER = 60.0
# A streaming node that never awaits yields to its consumers after FIRST_SLICE seconds (so the first
# chunk reaches the caller quickly), then after slices doubling up to MAX_SLICE (so loop turns stay rare).
FIRST_SLICE = 0.0001
MAX_SLICE = 0.002  # a provider asking for longer than this is a failure, not a pause


class AttemptsFailed(Exception):
    """A node failed for good: retries exhausted, a kind not worth retrying, or a partial stream."""

    def __init__(self, error: NodeError, attempts: int) -> None:
        self.error = error
        self.attempts = attempts
        super().__init__(error.message)


def classify(exc: BaseException, node_id: str, redact: Any) -> NodeError:
    """Turn any exception into a NodeError with a user-safe message."""
    if isinstance(exc, NodeError):
        return NodeError(exc.kind, redact(exc.message), retry_after=exc.retry_after)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return NodeError("timeout", f"node '{node_id}' timed out")
    text = redact(str(exc))[:300]
    return NodeError("internal", f"node '{node_id}' failed: {type(exc).__name__}" + (f": {text}" if text else ""))


def backoff_delay(pn: PlanNode, attempt: int, error: NodeError) -> float | None:
    """Seconds to wait before the next attempt, or None when the node should not retry."""
    retry = pn.retry
    if retry is None or attempt >= retry.attempts or error.kind not in retry.on:
        return None
    delay = min(retry.max_backoff, retry.backoff * 2 ** (attempt - 1))
    if retry.jitter:
        delay = random.uniform(0, delay)
    if error.retry_after is not None:
        if error.retry_after > MAX_RETRY_AFTER:
            return None
        delay = max(delay, error.retry_after)
    return float(delay)


async def run_attempts(run: Run, pn: PlanNode, inputs: dict[str, Any], item_index: int | None = None) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Run a node until an attempt succeeds; return (outputs, attempts, usage) or raise AttemptsFailed."""
    attempt = 0
    while True:
        attempt += 1
        ctx = NodeContext(run, pn.id, attempt, item_index)
        streamed = [0]
        started = perf_counter()
        try:
            output = await _attempt(run, pn, ctx, inputs, item_index, streamed)
            return output, attempt, ctx.usage_totals
        except (StreamSkipped, StreamFailed):
            raise
        except Exception as exc:
            error = classify(exc, pn.id, run.redact)
            if streamed[0] and item_index is None:  # a map item's chunks reach no consumer (Run.push drops them): it may retry
                raise AttemptsFailed(NodeError(error.kind, f"{error.message} (after streaming {streamed[0]} chunks)"), attempt) from None
            delay = backoff_delay(pn, attempt, error)
            if delay is None:
                raise AttemptsFailed(error, attempt) from None
            data: dict[str, Any] = {"attempt": attempt, "error": {"kind": error.kind, "message": error.message}, "delay": round(delay, 3),
                                    "duration_ms": round((perf_counter() - started) * 1000, 3)}
            if ctx.usage_totals is not None:  # a failed call may still have cost tokens
                data["usage"] = ctx.usage_totals
            if item_index is not None:
                data["index"] = item_index
            run.emit("node_retry", pn.id, data)
            await asyncio.sleep(delay)
            if item_index is None:
                run.emit("node_started", pn.id, {"node_type": pn.type, "attempt": attempt + 1, "queue_ms": 0.0})


async def _attempt(run: Run, pn: PlanNode, ctx: NodeContext, inputs: dict[str, Any], item_index: int | None, streamed: list[int]) -> dict[str, Any]:
    agen = cast(AsyncGenerator[Any, None], pn.node.run(ctx, inputs))
    try:
        if pn.timeout is None:
            return await _drive(run, pn, ctx, agen, item_index, streamed, None)
        return await _with_deadline(run, pn, ctx, agen, item_index, streamed)
    finally:
        await agen.aclose()


async def _drive(run: Run, pn: PlanNode, ctx: NodeContext, agen: Any, item_index: int | None, streamed: list[int],
                 on_first_chunk: Callable[[], None] | None) -> dict[str, Any]:
    # The per-chunk path: bench/runtime.py S3 measures it, so it keeps locals and reads the clock rarely.
    push = run.push
    node_id = pn.id
    count = 0
    time_slice = FIRST_SLICE
    slice_start = perf_counter()
    try:
        async for emit in agen:
            kind = type(emit)
            if kind is str or kind is Chunk:
                if not count:
                    _first_chunk(run, node_id, item_index, on_first_chunk)
                count += 1
                if kind is str:
                    push(node_id, "text", emit, item_index)
                else:
                    push(node_id, emit.field, emit.text, item_index)
                # A producer that never awaits would starve its consumers until it ends.
                if not count & 7 and perf_counter() - slice_start > time_slice:
                    await asyncio.sleep(0)
                    time_slice = min(MAX_SLICE, time_slice * 2)
                    slice_start = perf_counter()
            elif isinstance(emit, Output):
                return _check_output(pn, emit)
            elif isinstance(emit, Progress):
                ctx.progress(emit.done, emit.total, emit.message)
            elif isinstance(emit, Signal):
                _signal(run, node_id, emit, item_index)
    finally:
        streamed[0] = count
    raise NodeError("internal", f"node '{pn.id}' ended without an output")


def _first_chunk(run: Run, node_id: str, item_index: int | None, callback: Callable[[], None] | None) -> None:
    if callback is not None:
        callback()
    if item_index is None:
        run.first_chunk[node_id] = perf_counter()


def _signal(run: Run, node_id: str, emit: Signal, item_index: int | None) -> None:
    if emit.type == "retract" or (emit.type == "guardrail_flagged" and emit.data.get("action") != "repair"):
        run.flagged.add(node_id)  # replaying it would hide the verdict: what a guardrail touched is never cached
    run.emit(emit.type, node_id, emit.data if item_index is None else {**emit.data, "index": item_index})


async def _with_deadline(run: Run, pn: PlanNode, ctx: NodeContext, agen: Any, item_index: int | None, streamed: list[int]) -> dict[str, Any]:
    timeout = pn.timeout
    assert timeout is not None
    start = asyncio.get_running_loop().time()
    total_at = start + timeout.total if timeout.total is not None else None
    streams = any(f.stream for f in pn.outputs.values())
    first_at = start + timeout.first_chunk if timeout.first_chunk is not None and streams else None
    deadlines = [d for d in (total_at, first_at) if d is not None]
    cm = timeout_at(min(deadlines) if deadlines else None)
    waiting_first = [first_at is not None]

    def first_chunk_arrived() -> None:
        waiting_first[0] = False
        cm.reschedule(total_at) if hasattr(cm, "reschedule") else cm.update(total_at)

    try:
        async with cm:
            return await _drive(run, pn, ctx, agen, item_index, streamed, first_chunk_arrived if first_at is not None else None)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        expired = cm.expired  # a method on asyncio.Timeout, a property on async_timeout's
        if not (expired() if callable(expired) else expired):
            raise
        if waiting_first[0]:
            raise NodeError("timeout", f"node '{pn.id}' produced no first chunk within {timeout.first_chunk:g}s") from None
        raise NodeError("timeout", f"node '{pn.id}' did not finish within {timeout.total:g}s") from None


def _check_output(pn: PlanNode, output: Output) -> dict[str, Any]:
    missing = [f for f in pn.outputs if f not in output]
    if missing:
        raise NodeError("internal", f"node '{pn.id}' did not produce output {', '.join(missing)}")
    return output
