"""Admission for `rill serve`: per-key limits (429) and the global load shedder (503).

Why here and not in uvicorn: ``--limit-concurrency`` counts idle sockets as load and answers 503
without ``Retry-After`` (reliability notes §1.7, verified), so admission happens in the app, on
authenticated requests, in this order: ``RateLimits.admit`` (429: *this key* must slow down), then
``LoadShedder.acquire`` (503: the *server* is full, everyone backs off), the run, ``RateLimits.record``
of the tokens and cost it used, and ``release()`` of both holds in a ``finally``.

Buckets hold at most their per-minute rate and refill continuously (rate/60 per second); a key
starts with a full bucket. A request takes one token when admitted. Model tokens are only known
after the run, so ``record`` debits them afterwards and may push the bucket into debt: the key is
refused until the debt is repaid. Daily budgets count from 00:00 UTC. A rejected request consumes
nothing. Every ``Retry-After`` is whole seconds, rounded up, at least 1 (RFC 6585 §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

DAY_S = 86400
OVERLOADED_MAX_RETRY_S = 5
SWEEP_MIN = 1024  # remembered keys before the first sweep for idle ones


@dataclass(frozen=True)
class KeyLimits:
    """The limits of one key; None lifts a limit. Defaults are the server's, merged under a key's own."""

    requests_per_minute: int | None = 60
    tokens_per_minute: int | None = None
    daily_tokens: int | None = None
    daily_cost_usd: float | None = None
    max_streams: int | None = 4  # concurrent runs per key

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            _check(name, getattr(self, name))

    def merged(self, overrides: Mapping[str, Any]) -> KeyLimits:
        """These limits with ``overrides`` (a key's ``limits:``) on top.

        Raises:
            ValueError: an unknown name (the message lists the valid ones) or a value that is not positive.
        """
        for name in overrides:
            if name not in LIMIT_NAMES:
                raise ValueError(f"unknown limit '{name}'; valid limits: {', '.join(LIMIT_NAMES)}")
        return replace(self, **overrides)


LIMIT_NAMES = tuple(f.name for f in fields(KeyLimits))


def _check(name: str, value: object) -> None:
    if value is None:
        return
    positive = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if name == "daily_cost_usd":
        if not positive:
            raise ValueError(f"'{name}' must be a positive number of US dollars (e.g. 5.0) or null for no limit, not {value!r}")
    elif not (positive and isinstance(value, int)):
        raise ValueError(f"'{name}' must be a positive whole number or null for no limit, not {value!r}")


@dataclass(frozen=True)
class Rejection:
    """Why a request was not admitted, ready for the HTTP answer (status, ``Retry-After``, a safe message)."""

    status: int  # 429: this key is over a limit; 503: the server is overloaded
    kind: str  # "rate_limit" | "token_rate" | "budget" | "streams" | "overloaded"
    message: str  # user-safe and says what to do
    retry_after: int  # whole seconds >= 1


def retry_seconds(wait: float) -> int:
    """``wait`` as a ``Retry-After`` value: rounded up (a millionth of float noise forgiven), at least 1."""
    return max(1, math.ceil(wait - 1e-6))


def key_rejection(kind: str, limits: KeyLimits, wait: float = 1.0) -> Rejection:
    """The 429 of a key over a limit; ``kind`` "tokens" and "cost" are the two daily budgets (kind "budget")."""
    s = retry_seconds(wait)
    message = {
        "rate_limit": f"rate limit of {limits.requests_per_minute} requests per minute reached; retry in {s} s",
        "token_rate": f"token rate limit of {limits.tokens_per_minute} tokens per minute used up; retry in {s} s",
        "streams": f"this key is at its limit of {limits.max_streams} concurrent runs; retry when one ends",
        "tokens": f"daily token budget of {limits.daily_tokens} tokens used up; it resets at 00:00 UTC, in {s} s",
        "cost": f"daily cost budget of ${limits.daily_cost_usd or 0:.2f} used up; it resets at 00:00 UTC, in {s} s",
    }[kind]
    return Rejection(429, "budget" if kind in ("tokens", "cost") else kind, message, s)


def check_budget(limits: KeyLimits, tokens: int, cost: float, wall: float) -> Rejection | None:
    """A 429 when today's (UTC) ``tokens`` or ``cost`` reached the key's daily budget."""
    if limits.daily_tokens is not None and tokens >= limits.daily_tokens:
        return key_rejection("tokens", limits, until_midnight(wall))
    if limits.daily_cost_usd is not None and cost >= limits.daily_cost_usd:
        return key_rejection("cost", limits, until_midnight(wall))
    return None


def until_midnight(wall: float) -> float:
    """Seconds from ``wall`` to the next 00:00 UTC, when daily budgets reset."""
    return DAY_S - wall % DAY_S


def utc_day(wall: float) -> int:
    """Days since 1970-01-01 UTC: POSIX time has no leap seconds, so days change exactly at UTC midnight."""
    return int(wall // DAY_S)


class _Hold:
    """Something released exactly once, however many ``finally`` blocks call ``release()``."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release: Callable[[], None] | None = on_release

    def release(self) -> None:
        """Give the hold back; later calls do nothing (a response that never started still runs its finally)."""
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()


class Ticket(_Hold):
    """An admitted request's hold on one of its key's concurrent streams."""


class Slot(_Hold):
    """An admitted request's hold on one of the server's run slots; ``queue_ms`` is how long it waited."""

    def __init__(self, on_release: Callable[[], None], queue_ms: float) -> None:
        super().__init__(on_release)
        self.queue_ms = queue_ms


class RateLimits(Protocol):
    """Per-key admission: in memory for one worker, or in Redis shared by several."""

    async def admit(self, key_id: str, limits: KeyLimits) -> Ticket | Rejection:
        """Take one request token and a stream, unless a bucket, a daily budget or the stream cap says no."""

    async def record(self, key_id: str, limits: KeyLimits, tokens: int, cost: float) -> None:
        """Debit a finished run's tokens and cost (the token bucket may go into debt)."""

    async def aclose(self) -> None:
        """Free connections and wait for releases still in flight."""


@dataclass
class _Bucket:
    level: float = math.inf  # never used: full, whatever the capacity
    stamp: float = -math.inf

    def refill(self, per_minute: int, now: float) -> float:
        """The level at ``now``; a clock that steps back adds nothing."""
        elapsed = max(0.0, now - self.stamp)  # infinite for a new bucket: it starts full
        self.level = min(float(per_minute), self.level + elapsed * per_minute / 60)
        self.stamp = max(self.stamp, now)
        return self.level


@dataclass
class _KeyState:
    limits: KeyLimits  # the latest seen: what decides whether this state may be forgotten
    requests: _Bucket = field(default_factory=_Bucket)
    tokens: _Bucket = field(default_factory=_Bucket)
    day: int = 0
    day_tokens: int = 0
    day_cost: float = 0.0
    streams: int = 0

    def today(self, wall: float) -> _KeyState:
        if utc_day(wall) != self.day:
            self.day, self.day_tokens, self.day_cost = utc_day(wall), 0, 0.0
        return self

    def idle(self, now: float, today: int) -> bool:
        """True when a fresh state would decide the same: no streams, full buckets, no budget use to remember."""
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        full = (rpm is None or self.requests.refill(rpm, now) >= rpm) and (tpm is None or self.tokens.refill(tpm, now) >= tpm)
        budgeted = self.limits.daily_tokens is not None or self.limits.daily_cost_usd is not None
        spent = budgeted and self.day == today and (self.day_tokens > 0 or self.day_cost > 0)
        return self.streams == 0 and full and not spent


class MemoryRateLimits:
    """RateLimits of one process: right for one worker; several workers need RedisRateLimits.

    ``monotonic`` drives the buckets and ``wall`` (seconds since the epoch) the daily budgets; tests pass fakes.
    Idle keys are forgotten, so memory follows the keys in use, not every client address ever seen.
    """

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._states: dict[str, _KeyState] = {}
        self._sweep_at = SWEEP_MIN

    def __len__(self) -> int:
        """Keys whose state is remembered."""
        return len(self._states)

    def _state(self, key_id: str, limits: KeyLimits) -> _KeyState:
        state = self._states.get(key_id)
        if state is None:
            if len(self._states) >= self._sweep_at:
                self._forget_idle()
            state = self._states[key_id] = _KeyState(limits)
        state.limits = limits
        return state.today(self._wall())

    def _forget_idle(self) -> None:
        now, today = self._monotonic(), utc_day(self._wall())
        self._states = {key_id: state for key_id, state in self._states.items() if not state.idle(now, today)}
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._states))  # amortised: a sweep per doubling

    async def admit(self, key_id: str, limits: KeyLimits) -> Ticket | Rejection:
        state = self._state(key_id, limits)
        rejection = self._refusal(state, limits, self._monotonic())
        if rejection is not None:
            return rejection
        if limits.requests_per_minute is not None:
            state.requests.level -= 1
        state.streams += 1
        return Ticket(lambda: self._end_stream(state))

    def _refusal(self, state: _KeyState, limits: KeyLimits, now: float) -> Rejection | None:
        budget = check_budget(limits, state.day_tokens, state.day_cost, self._wall())
        if budget is not None:
            return budget
        tpm, rpm = limits.tokens_per_minute, limits.requests_per_minute
        if tpm is not None and (level := state.tokens.refill(tpm, now)) < 0:
            return key_rejection("token_rate", limits, -level * 60 / tpm)
        if limits.max_streams is not None and state.streams >= limits.max_streams:
            return key_rejection("streams", limits)
        if rpm is not None and (level := state.requests.refill(rpm, now)) < 1:
            return key_rejection("rate_limit", limits, (1 - level) * 60 / rpm)
        return None

    @staticmethod
    def _end_stream(state: _KeyState) -> None:
        state.streams -= 1

    async def record(self, key_id: str, limits: KeyLimits, tokens: int, cost: float) -> None:
        state = self._state(key_id, limits)
        state.day_tokens += tokens
        state.day_cost += cost
        if limits.tokens_per_minute is not None:
            state.tokens.refill(limits.tokens_per_minute, self._monotonic())
            state.tokens.level -= tokens

    async def aclose(self) -> None:
        """Nothing to free; here to honour the RateLimits protocol."""


class LoadShedder:
    """The server-wide cap on concurrent runs, with a bounded queue in front of it.

    Never queue without bound (OWASP LLM10, "limit queued actions"): past ``max_queued`` waiters, or after
    ``queue_timeout`` seconds of waiting, the answer is a 503 with ``Retry-After``. A released slot is handed
    straight to the oldest waiter, so a newcomer cannot overtake the queue.
    """

    def __init__(self, max_active: int, max_queued: int, queue_timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_active < 1 or max_queued < 0 or queue_timeout < 0:
            raise ValueError(f"LoadShedder needs max_active >= 1, max_queued >= 0, queue_timeout >= 0, not {max_active}, {max_queued}, {queue_timeout}")
        self._max_active, self._max_queued, self._timeout = max_active, max_queued, queue_timeout
        self._clock = clock
        self._active = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._hold_s = 1.0  # moving average of how long a slot is held: the basis of the Retry-After estimate

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> Slot | Rejection:
        """A slot now, a slot after a bounded wait, or a 503 Rejection.

        Cancellation still propagates (never swallowed), but a cancelled waiter leaves no slot taken, even
        when a slot was handed to it in the same instant."""
        if self._active < self._max_active and self.queued == 0:
            self._active += 1
            return self._slot(0.0)
        if self.queued >= self._max_queued:
            return self._overloaded()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        started = self._clock()
        timer = loop.call_later(self._timeout, _settle, waiter, False)
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._pass_on()
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return self._slot((self._clock() - started) * 1000) if granted else self._overloaded()

    def _slot(self, queue_ms: float) -> Slot:
        started = self._clock()

        def release() -> None:
            self._hold_s = 0.8 * self._hold_s + 0.2 * max(0.0, self._clock() - started)
            self._pass_on()

        return Slot(release, queue_ms)

    def _pass_on(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot changes hands: ``active`` stays the same
                return
        self._active -= 1

    def _overloaded(self) -> Rejection:
        estimate = self._hold_s * (self.queued + 1) / self._max_active
        s = min(OVERLOADED_MAX_RETRY_S, retry_seconds(estimate))
        return Rejection(503, "overloaded", f"the server is busy; retry in {s} s", s)


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def open_rate_limits(url: str | None) -> RateLimits:
    """The RateLimits ``url`` names (``RILL_LIMITS_URL``): None, "" or "memory" for one worker, redis://... for several."""
    if not url or url == "memory":
        return MemoryRateLimits()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from rillflow.ui.limits_redis import RedisRateLimits

        return RedisRateLimits(url)
    from rillflow.runtime.cache_redis_client import redact

    raise ValueError(f"limits URL '{redact(url)}' is of no accepted form: use 'memory', redis://host:port/db, rediss://... or unix:///path.sock")
