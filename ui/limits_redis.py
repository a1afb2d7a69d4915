"""RateLimits in Redis, shared by several `rill serve` workers (``RILL_LIMITS_URL=redis://...``).

Same semantics as MemoryRateLimits (see rillflow.ui.limits). Why a Lua script for admission: the
check of every limit and the taking of a request token and a stream must be one atomic step, or two
workers could both see "3 of 4 streams" and both admit. Keys of one API key share a hash tag
(``{rk_...}``) so the script touches one slot of a Redis Cluster.

Streams are a sorted set of ticket ids scored by their expiry: a worker that crashes without
releasing its tickets leaves them counted for ``stream_ttl`` seconds at most, never forever. A run
longer than ``stream_ttl`` stops counting against ``max_streams`` once it passes it.

Time comes from the worker's clock (``clock``, injectable for tests), so workers should run NTP; a
clock that steps back never adds tokens. If Redis cannot be reached, admission fails closed with a
503 ("overloaded"): an unreachable limiter must not become unlimited spending.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from rillflow.runtime.cache_redis_client import redact
from rillflow.ui.limits import DAY_S, KeyLimits, Rejection, Ticket, key_rejection, until_midnight, utc_day

log = logging.getLogger("rillflow.serve")

#: The level of a bucket at ``now``: a missing bucket is full; a clock that steps back adds nothing.
_LEVEL = """
local function level(key, per_minute, now)
  local v = redis.call('HMGET', key, 'level', 'stamp')
  if not v[1] then return per_minute, now end
  local stamp = tonumber(v[2])
  return math.min(per_minute, tonumber(v[1]) + math.max(0, now - stamp) * per_minute / 60), math.max(now, stamp)
end
local function store(key, per_minute, value, stamp)
  redis.call('HSET', key, 'level', tostring(value), 'stamp', tostring(stamp))
  redis.call('EXPIRE', key, math.ceil((per_minute - value) * 60 / per_minute) + 1)  -- gone once full again
end
"""

#: KEYS: request bucket, token bucket, day tokens, day cost, streams. ARGV: now, rpm, tpm, daily tokens,
#: daily cost, max streams (0 = no limit each), ticket id, stream ttl. Returns {code, wait seconds as text}:
#: 0 admitted, 1 daily tokens, 5 daily cost, 2 token debt, 3 streams, 4 request rate (text: Lua numbers reply as integers).
_ADMIT = _LEVEL + """
local now, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[8])
if tonumber(ARGV[4]) > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[4]) then return {1, '0'} end
if tonumber(ARGV[5]) > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[5]) then return {5, '0'} end
if tpm > 0 then
  local t = level(KEYS[2], tpm, now)
  if t < 0 then return {2, tostring(-t * 60 / tpm)} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
if tonumber(ARGV[6]) > 0 and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6]) then return {3, '0'} end
if rpm > 0 then
  local r, stamp = level(KEYS[1], rpm, now)
  if r < 1 then return {4, tostring((1 - r) * 60 / rpm)} end
  store(KEYS[1], rpm, r - 1, stamp)
end
redis.call('ZADD', KEYS[5], now + ttl, ARGV[7])
redis.call('EXPIRE', KEYS[5], math.ceil(ttl) + 1)
return {0, '0'}
"""

#: KEYS: token bucket. ARGV: now, tpm, tokens. The bucket may go below zero: that debt delays the next admit.
_DEBIT = _LEVEL + """
local now, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local t, stamp = level(KEYS[1], tpm, now)
store(KEYS[1], tpm, t - tonumber(ARGV[3]), stamp)
return 0
"""

UNAVAILABLE = Rejection(503, "overloaded", "request admission is unavailable right now; retry in 2 s", 2)


class RedisRateLimits:
    """RateLimits kept in Redis, so every worker behind one load balancer enforces one set of limits."""

    def __init__(self, url: str, *, prefix: str = "rill:limits:", stream_ttl: float = 900.0, timeout: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        # No retries: redis-py's default backoff would stall every request on a down server.
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self._url, self._prefix, self._ttl, self._clock = redact(url), prefix, stream_ttl, clock
        self._admit = self._client.register_script(_ADMIT)
        self._debit = self._client.register_script(_DEBIT)
        self._pending: set[asyncio.Task[None]] = set()
        self._down = False  # one warning per outage, not one per request

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._down:
            log.warning("%s: the limits store at %s failed: %s (logged once until it is back)", what, self._url, exc)
        self._down = True

    def _ok(self) -> None:
        if self._down:
            log.warning("the limits store at %s answers again", self._url)
        self._down = False

    def _key(self, key_id: str, part: str) -> str:
        return f"{self._prefix}{{{key_id}}}:{part}"

    def _day_keys(self, key_id: str, wall: float) -> list[str]:
        day = utc_day(wall)
        return [self._key(key_id, f"day:{day}:tokens"), self._key(key_id, f"day:{day}:cost")]

    async def admit(self, key_id: str, limits: KeyLimits) -> Ticket | Rejection:
        streams = self._key(key_id, "streams")
        releasing = {task for task in self._pending if task.get_name() == streams}
        if releasing:  # this key's releases from this worker land first: release-then-admit must see the stream free
            await asyncio.wait(releasing)
        now, ticket_id = self._clock(), uuid.uuid4().hex
        keys = [self._key(key_id, "requests"), self._key(key_id, "tokens"), *self._day_keys(key_id, now), streams]
        args = [repr(now), *(_num(v) for v in (limits.requests_per_minute, limits.tokens_per_minute, limits.daily_tokens,
                                               limits.daily_cost_usd, limits.max_streams)), ticket_id, repr(self._ttl)]
        try:
            code, wait = await self._admit(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed("requests are refused with 503", exc)  # fail closed: no limiter must not mean no limits
            return UNAVAILABLE
        self._ok()
        return self._answer(int(code), float(wait), limits, now) or Ticket(lambda: self._release(streams, ticket_id))

    @staticmethod
    def _answer(code: int, wait: float, limits: KeyLimits, now: float) -> Rejection | None:
        if code in (1, 5):
            return key_rejection("tokens" if code == 1 else "cost", limits, until_midnight(now))
        kinds = {2: "token_rate", 3: "streams", 4: "rate_limit"}
        return key_rejection(kinds[code], limits, wait) if code in kinds else None

    def _release(self, streams: str, ticket_id: str) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._forget(streams, ticket_id), name=streams)
        except RuntimeError:  # no running loop (a finally after shutdown): the ticket expires by itself
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forget(self, streams: str, ticket_id: str) -> None:
        try:
            await self._client.zrem(streams, ticket_id)
        except (RedisError, OSError) as exc:
            self._failed(f"a stream was not released (it frees itself within {self._ttl:.0f} s)", exc)

    async def record(self, key_id: str, limits: KeyLimits, tokens: int, cost: float) -> None:
        now = self._clock()
        day_tokens, day_cost = self._day_keys(key_id, now)
        # Kept an hour past midnight UTC (a worker whose clock lags still finds it). EXPIRE, not EXPIREAT: relative to
        # this worker's clock, like the day in the key's name, so Redis's own clock does not matter.
        ttl = int((utc_day(now) + 1) * DAY_S + 3600 - now)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                if limits.tokens_per_minute is not None:
                    await self._debit(keys=[self._key(key_id, "tokens")], args=[repr(now), limits.tokens_per_minute, tokens], client=pipe)
                pipe.incrby(day_tokens, tokens)
                pipe.incrbyfloat(day_cost, cost)
                pipe.expire(day_tokens, ttl)
                pipe.expire(day_cost, ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # the run is over: losing its count beats failing its response
            self._failed(f"a run's {tokens} tokens were not counted", exc)

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending))
        await self._client.aclose()


def _num(value: float | None) -> str:
    """A limit for the script: 0 means "no limit" (real limits are positive)."""
    return "0" if value is None else repr(value)
