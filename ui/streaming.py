"""Drive a run for one HTTP request: as SSE, or to the end for a JSON answer, cancelled with its client.

The run's event iterator is consumed *inside* the response's generator and closed in its
``finally``: a client that disconnects cancels the generator, which closes the run, which cancels
every node and the model stream under it. Starting the run elsewhere and feeding a queue would
leave it generating for nobody (reliability notes 1.6, "the common orchestrator bug").

At shutdown sse-starlette sets ``shutdown`` and gives the generator a grace period: a run still
going then is closed and its stream ends with one final ``run_failed`` of kind ``shutdown``, so
every stream ends with exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from rillflow.runtime.events import Event

#: Longest a cancelled run may take to stop its nodes (a local model stops within a token).
CLEANUP_SECONDS = 10.0
log = logging.getLogger("rillflow.serve")
SHUTDOWN_ERROR = {"kind": "shutdown", "message": "the server is restarting; please retry in a few seconds", "node": None}


async def until_shutdown(events: AsyncIterator[Event], shutdown: anyio.Event) -> AsyncGenerator[Event, None]:
    """The run's events, ended by a final ``run_failed`` (kind shutdown) if ``shutdown`` is set first.

    Closing this iterator (the client left) closes the run. Each event is awaited next to the
    shutdown signal, so a run waiting on a slow model still ends promptly when the server stops.
    """
    stop = asyncio.ensure_future(shutdown.wait())
    last: Event | None = None
    try:
        while True:
            step = asyncio.ensure_future(events.__anext__())
            try:
                await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # cancelled (the client left): stop the run before anything else
                await _cancel(step)
                raise
            if not step.done():
                await _cancel(step)
                if last is not None:
                    yield Event("run_failed", last.run_id, last.seq + 1, last.ts, None, {"error": dict(SHUTDOWN_ERROR)})
                return
            try:
                last = step.result()
            except StopAsyncIteration:
                return
            yield last
            if last.terminal:
                return
    finally:
        with _shielded():
            await _cancel(stop)
            await events.aclose()  # type: ignore[attr-defined]


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end, shielded: sse-starlette cancels inside an anyio cancel scope,
    which would cancel this wait too and cut the run's own shutdown short, before its terminal event
    (a run stopped by its client would then have no trace and no metrics)."""
    with _shielded():
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _shielded() -> anyio.CancelScope:
    """A scope outer cancellations cannot reach, bounded so a stuck node cannot hold a response forever."""
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + CLEANUP_SECONDS)


async def collect_until_disconnect(request: Request, events: AsyncIterator[Event], shutdown: anyio.Event) -> list[Event]:
    """Every event of the run, for a JSON answer; the run is cancelled if the client disconnects meanwhile."""
    collected: list[Event] = []

    async def consume() -> None:
        async with contextlib.aclosing(until_shutdown(events, shutdown)) as stream:
            async for event in stream:
                collected.append(event)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async with anyio.create_task_group() as group:
        async def first(fn: Callable[[], Awaitable[None]]) -> None:
            await fn()
            group.cancel_scope.cancel()

        group.start_soon(first, consume)
        group.start_soon(first, watch)
    return collected


class Guarded:
    """An ASGI response wrapper whose ``on_close`` runs exactly once, however the response ends.

    Admission slots are released here rather than in the body generator: a generator that never
    started never runs its ``finally`` (a client that vanished before the first byte).
    """

    def __init__(self, response: ASGIApp, on_close: Callable[[], Awaitable[None]]) -> None:
        self.response = response
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        except SendTimeoutError:  # a reader that stopped reading: expected at the edge, not a server error
            log.info("dropped a stream whose client stopped reading (send timeout)")
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()


def usage_of(events: list[Event]) -> dict[str, Any]:
    """Token and cost totals of a run's events (every attempt counts: a retried call was paid for)."""
    totals: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0, "cost": 0.0}
    for event in events:
        usage = event.data.get("usage") if event.type in ("node_finished", "node_retry") else None
        if usage:
            totals["input_tokens"] += usage.get("input_tokens") or 0
            totals["output_tokens"] += usage.get("output_tokens") or 0
            totals["cost"] += usage.get("cost") or 0.0
    return totals


def now() -> int:
    return int(time.time())
