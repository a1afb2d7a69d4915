"""Who may run what, and when: API key, per-key limits, then the global concurrency cap.

Order matters and is cheap-first: a request is authenticated (401), its key's rate, token and budget
limits checked (429 + Retry-After), and only then does it wait for one of the server's run slots
(503 + Retry-After when the bounded queue is full or the wait too long). Nothing here calls a model.

An admitted request holds a ``Pass`` whose ``release`` is idempotent and is called from the ASGI
wrapper around the response, not from the response's generator: a client that disconnects before
the first byte never starts the generator, and its ``finally`` would never run (stemdeck#513).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from rillflow.ui.auth import ApiKey, KeyStore
from rillflow.ui.errors import ApiError
from rillflow.ui.limits import KeyLimits, LoadShedder, RateLimits, Rejection, Slot, Ticket
from rillflow.ui.metrics import Metrics


@dataclass
class Pass:
    """An admitted run: its key, and its holds on the key's stream count and a server slot."""

    key: ApiKey
    ticket: Ticket | None = None
    slot: Slot | None = None
    usage: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "cost": 0.0})
    _released: bool = False

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.usage["tokens"] += (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0)
            self.usage["cost"] += usage.get("cost") or 0.0

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.slot is not None:
            self.slot.release()
        if self.ticket is not None:
            self.ticket.release()


class Gate:
    """Authenticate and admit requests; ``keys`` None means keys are off (each client address is its own key)."""

    def __init__(self, keys: KeyStore | None, limits: RateLimits, shedder: LoadShedder, defaults: KeyLimits, metrics: Metrics) -> None:
        self.keys = keys
        self.limits = limits
        self.shedder = shedder
        self.defaults = defaults
        self.metrics = metrics

    def identify(self, request: Request) -> ApiKey:
        """The caller's key, or ApiError 401 (one answer for missing, malformed, wrong, revoked or expired keys)."""
        if self.keys is None:
            host = request.client.host if request.client else "local"
            return ApiKey(key_id=f"addr:{host}", name="anonymous", tenant=None, limits=self.defaults)
        if "api_key" in request.query_params or "key" in request.query_params:
            self.metrics.rejected("auth", 401)
            raise ApiError(401, "auth", "API keys are never accepted in a URL (it ends up in logs and browser history); "
                                        "send 'Authorization: Bearer <key>'")
        key = self.keys.authenticate(request.headers.get("authorization"))
        if key is None:
            self.metrics.rejected("auth", 401)
            raise ApiError(401, "auth", "a valid API key is required: send 'Authorization: Bearer <key>'")
        return key

    async def admit(self, key: ApiKey) -> Pass:
        """Check the key's limits, then take a run slot; ApiError 429/503 with Retry-After otherwise."""
        admitted = Pass(key)
        ticket = await self.limits.admit(key.key_id, key.limits)
        if isinstance(ticket, Rejection):
            raise self._rejected(ticket)
        admitted.ticket = ticket
        started = time.perf_counter()
        try:
            slot = await self.shedder.acquire()
        except BaseException:
            admitted.release()
            raise
        if isinstance(slot, Rejection):
            admitted.release()
            raise self._rejected(slot)
        self.metrics.queue_wait(time.perf_counter() - started)
        admitted.slot = slot
        return admitted

    async def settle(self, admitted: Pass) -> None:
        """Release the run's holds, then charge what it used to its key (tokens per minute, daily budgets)."""
        admitted.release()
        if admitted.usage["tokens"] or admitted.usage["cost"]:
            await self.limits.record(admitted.key.key_id, admitted.key.limits, int(admitted.usage["tokens"]), admitted.usage["cost"])

    def _rejected(self, rejection: Rejection) -> ApiError:
        self.metrics.rejected(rejection.kind, rejection.status)
        return ApiError(rejection.status, rejection.kind, rejection.message, retry_after=rejection.retry_after)
