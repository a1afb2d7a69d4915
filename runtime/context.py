"""What a running node gets: progress and usage reporting, cancellation, threads, shared resources."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rillflow.runtime.scheduler import Run

T = TypeVar("T")


class Resources:
    """Heavy things (models, clients, embedders) loaded once per process and shared by every run."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, factory: Callable[[], T]) -> T:
        """The resource under ``key``, created by ``factory`` on first use (once, even across threads)."""
        try:
            return self._items[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        with self._lock:
            if key not in self._items:
                self._items[key] = factory()
            return self._items[key]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            items, self._items = self._items, {}
        for value in items.values():
            closer = getattr(value, "close", None)
            if callable(closer):
                closer()


RESOURCES = Resources()
# Native libraries (llama.cpp) free their memory in finalisers that fail once the interpreter is half
# torn down; closing while it is whole keeps exits clean.
atexit.register(RESOURCES.close)
_executor: ThreadPoolExecutor | None = None

#: Most node attempts running at once in this process, across every run and flow (RILL_MAX_NODES).
MAX_PROCESS_NODES = int(os.environ.get("RILL_MAX_NODES", "256"))
_process_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def process_limit() -> asyncio.Semaphore:
    """The process-wide node limit for the running loop (a semaphore belongs to one loop)."""
    loop = asyncio.get_running_loop()
    limit = _process_limits.get(loop)
    if limit is None:
        limit = _process_limits[loop] = asyncio.Semaphore(MAX_PROCESS_NODES)
    return limit


def executor() -> ThreadPoolExecutor:
    """The worker threads that blocking node work runs on, so the event loop never stalls."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="rill-node")
    return _executor


class NodeContext:
    """The RunContext a node attempt receives (see the contract in rillflow.nodes.base)."""

    __slots__ = ("_run", "attempt", "item_index", "node_id", "run_id", "tenant", "usage_totals")

    def __init__(self, run: Run, node_id: str, attempt: int, item_index: int | None = None) -> None:
        self._run = run
        self.run_id = run.run_id
        self.tenant = run.tenant
        self.node_id = node_id
        self.attempt = attempt
        self.item_index = item_index
        self.usage_totals: dict[str, Any] | None = None

    @property
    def resources(self) -> Resources:
        return RESOURCES

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled: code in worker threads should stop soon after."""
        return self._run.cancelled

    def progress(self, done: int, total: int | None = None, message: str = "") -> None:
        self._run.emit("node_progress", self.node_id, {"done": done, "total": total, "message": message})

    def usage(self, *, input_tokens: int = 0, output_tokens: int = 0, model: str | None = None, cost: float | None = None) -> None:
        totals = self.usage_totals or {"input_tokens": 0, "output_tokens": 0, "model": None, "cost": None}
        totals["input_tokens"] += input_tokens
        totals["output_tokens"] += output_tokens
        totals["model"] = model or totals["model"]
        if cost is not None:
            totals["cost"] = (totals["cost"] or 0.0) + cost
        self.usage_totals = totals

    async def to_thread(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor(), functools.partial(fn, *args, **kwargs))
