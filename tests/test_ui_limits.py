"""Admission limits: per-key buckets, debts, budgets and stream caps, in memory and in a real Redis
(the same behaviour tests run against both), plus the global LoadShedder and its bounded queue."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone

import pytest
import redis

from rillflow.ui import limits as limits_module
from rillflow.ui.limits import (
    KeyLimits,
    LoadShedder,
    MemoryRateLimits,
    RateLimits,
    Rejection,
    Slot,
    Ticket,
    open_rate_limits,
    retry_seconds,
)
from rillflow.ui.limits_redis import RedisRateLimits
from tests import redis_server as redis_server_module
from tests.redis_server import RedisServer, free_port

NOON = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc).timestamp()
KEY = "rk_3f9a1c2b"


class Clock:
    """One fake clock for buckets and days: tests move it, nothing sleeps."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:  # fails (never skips) when redis-server is not installed
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"  # each test its own keyspace on the shared server


@pytest.fixture(params=["memory", "redis"])
async def rl(request: pytest.FixtureRequest, clock: Clock, prefix: str) -> AsyncIterator[RateLimits]:
    if request.param == "memory":
        limiter: RateLimits = MemoryRateLimits(monotonic=clock, wall=clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        limiter = RedisRateLimits(server.url, prefix=prefix, clock=clock)
    yield limiter
    await limiter.aclose()


def rejected(result: Ticket | Rejection) -> Rejection:
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result


def admitted(result: Ticket | Rejection) -> Ticket:
    assert isinstance(result, Ticket), f"expected a ticket, got {result!r}"
    return result


# -- KeyLimits ---------------------------------------------------------------------------------

def test_merged_overrides_only_the_named_limits_and_none_lifts_one() -> None:
    merged = KeyLimits(requests_per_minute=60, max_streams=4).merged({"tokens_per_minute": 1000, "max_streams": None})
    assert merged == KeyLimits(requests_per_minute=60, tokens_per_minute=1000, max_streams=None)


def test_merged_rejects_an_unknown_limit_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown limit 'rpm'; valid limits: requests_per_minute, tokens_per_minute, daily_tokens"):
        KeyLimits().merged({"rpm": 5})


@pytest.mark.parametrize(("name", "value"), [("requests_per_minute", 0), ("max_streams", -1), ("daily_tokens", True),
                                             ("tokens_per_minute", 1.5), ("daily_tokens", "5"), ("daily_cost_usd", 0.0),
                                             ("daily_cost_usd", float("nan")), ("daily_cost_usd", "5")])
def test_a_limit_must_be_positive_and_of_its_type(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{name}' must be a positive"):
        KeyLimits().merged({name: value})


def test_a_whole_dollar_cost_budget_is_accepted() -> None:
    assert KeyLimits().merged({"daily_cost_usd": 5}).daily_cost_usd == 5


def test_retry_seconds_rounds_up_and_is_at_least_one() -> None:
    assert [retry_seconds(w) for w in (0.0, 0.2, 1.0, 1.0000000001, 1.01, 59.5)] == [1, 1, 1, 1, 2, 60]


# -- per-key limits, memory and Redis alike ----------------------------------------------------

async def test_requests_up_to_the_bucket_are_admitted_then_429(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=3, max_streams=None)
    for _ in range(3):
        admitted(await rl.admit(KEY, limits))
    rejection = rejected(await rl.admit(KEY, limits))
    assert (rejection.status, rejection.kind) == (429, "rate_limit")
    assert rejection.message == "rate limit of 3 requests per minute reached; retry in 20 s"


async def test_retry_after_counts_down_to_the_next_token(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(requests_per_minute=6, max_streams=None)  # one token every 10 s
    for _ in range(6):
        admitted(await rl.admit(KEY, limits))
    assert rejected(await rl.admit(KEY, limits)).retry_after == 10
    clock.now += 4
    assert rejected(await rl.admit(KEY, limits)).retry_after == 6
    clock.now += 5.5
    assert rejected(await rl.admit(KEY, limits)).retry_after == 1
    clock.now += 0.5
    admitted(await rl.admit(KEY, limits))


async def test_the_bucket_refills_no_higher_than_its_capacity(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(requests_per_minute=2, max_streams=None)
    admitted(await rl.admit(KEY, limits))
    clock.now += 3600
    results = [await rl.admit(KEY, limits) for _ in range(3)]
    assert [type(r) for r in results] == [Ticket, Ticket, Rejection]


async def test_a_rejected_request_consumes_nothing(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=2, max_streams=1)
    first = admitted(await rl.admit(KEY, limits))
    for _ in range(100):  # refused for streams: these must not drain the request bucket
        assert rejected(await rl.admit(KEY, limits)).kind == "streams"
    first.release()
    admitted(await rl.admit(KEY, limits)).release()  # the second token is still there
    assert rejected(await rl.admit(KEY, limits)).kind == "rate_limit"


async def test_keys_have_buckets_of_their_own(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=1, max_streams=None)
    admitted(await rl.admit(KEY, limits))
    rejected(await rl.admit(KEY, limits))
    admitted(await rl.admit("rk_00000001", limits))


async def test_none_lifts_the_rate_and_stream_limits(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=None, max_streams=None)
    results = [await rl.admit(KEY, limits) for _ in range(200)]
    assert all(isinstance(r, Ticket) for r in results)


async def test_token_debt_refuses_the_key_until_it_is_repaid(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(requests_per_minute=None, tokens_per_minute=600, max_streams=None)  # 10 tokens a second
    (admitted(await rl.admit(KEY, limits))).release()
    await rl.record(KEY, limits, tokens=900, cost=0.0)  # 600 in the bucket: 300 in debt
    rejection = rejected(await rl.admit(KEY, limits))
    assert (rejection.status, rejection.kind, rejection.retry_after) == (429, "token_rate", 30)
    assert "token rate limit of 600 tokens per minute" in rejection.message
    clock.now += 29
    assert rejected(await rl.admit(KEY, limits)).retry_after == 1
    clock.now += 1
    admitted(await rl.admit(KEY, limits))


async def test_a_run_within_the_token_rate_leaves_the_key_admitted(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=None, tokens_per_minute=600, max_streams=None)
    await rl.record(KEY, limits, tokens=600, cost=0.0)  # the bucket empty, not in debt
    admitted(await rl.admit(KEY, limits))


async def test_daily_token_budget_answers_429_until_utc_midnight(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(daily_tokens=1000, max_streams=None)
    await rl.record(KEY, limits, tokens=999, cost=0.0)
    admitted(await rl.admit(KEY, limits))
    await rl.record(KEY, limits, tokens=1, cost=0.0)
    rejection = rejected(await rl.admit(KEY, limits))
    assert (rejection.status, rejection.kind, rejection.retry_after) == (429, "budget", 12 * 3600)  # from noon UTC
    assert rejection.message == "daily token budget of 1000 tokens used up; it resets at 00:00 UTC, in 43200 s"


async def test_budget_resets_at_utc_midnight(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(daily_cost_usd=0.5, max_streams=None)
    clock.now = datetime(2026, 3, 10, 23, 59, 59, tzinfo=timezone.utc).timestamp()
    await rl.record(KEY, limits, tokens=10, cost=0.75)
    rejection = rejected(await rl.admit(KEY, limits))
    assert (rejection.kind, rejection.retry_after) == ("budget", 1)
    assert rejection.message.startswith("daily cost budget of $0.50 used up")
    clock.now += 1  # 00:00:00 UTC
    admitted(await rl.admit(KEY, limits))


async def test_record_counts_daily_usage_even_without_a_token_rate(rl: RateLimits) -> None:
    limits = KeyLimits(tokens_per_minute=None, daily_tokens=100, max_streams=None)
    for _ in range(4):
        await rl.record(KEY, limits, tokens=25, cost=0.0)
    assert rejected(await rl.admit(KEY, limits)).kind == "budget"


async def test_streams_over_the_cap_get_429_until_one_is_released(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=None, max_streams=2)
    first, _second = admitted(await rl.admit(KEY, limits)), admitted(await rl.admit(KEY, limits))
    rejection = rejected(await rl.admit(KEY, limits))
    assert (rejection.status, rejection.kind, rejection.retry_after) == (429, "streams", 1)
    assert rejection.message == "this key is at its limit of 2 concurrent runs; retry when one ends"
    first.release()
    admitted(await rl.admit(KEY, limits))


async def test_ticket_release_twice_releases_once(rl: RateLimits) -> None:
    limits = KeyLimits(requests_per_minute=None, max_streams=2)
    first = admitted(await rl.admit(KEY, limits))
    admitted(await rl.admit(KEY, limits))
    first.release()
    first.release()  # a second finally must not free the other run's stream
    admitted(await rl.admit(KEY, limits))
    assert rejected(await rl.admit(KEY, limits)).kind == "streams"


async def test_a_clock_that_steps_back_adds_no_tokens(rl: RateLimits, clock: Clock) -> None:
    limits = KeyLimits(requests_per_minute=1, max_streams=None)
    admitted(await rl.admit(KEY, limits))
    clock.now -= 3600
    rejected(await rl.admit(KEY, limits))


# -- memory only -------------------------------------------------------------------------------

async def test_idle_keys_are_forgotten_and_keys_in_use_kept(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module, "SWEEP_MIN", 4)
    rl = MemoryRateLimits(monotonic=clock, wall=clock)
    limits = KeyLimits(requests_per_minute=60, daily_tokens=100)
    held = admitted(await rl.admit("streaming", limits))
    await rl.record("spent", limits, tokens=5, cost=0.0)
    for n in range(2):
        admitted(await rl.admit(f"addr:{n}", limits)).release()
    clock.now += 61  # every bucket full again
    admitted(await rl.admit("newcomer", limits)).release()
    assert len(rl) == 3  # streaming, spent (budget use today), newcomer
    held.release()
    await rl.record("spent", limits, tokens=95, cost=0.0)
    assert rejected(await rl.admit("spent", limits)).kind == "budget"


# -- Redis only --------------------------------------------------------------------------------

@pytest.fixture
async def workers(redis_server: RedisServer, prefix: str, clock: Clock) -> AsyncIterator[tuple[RedisRateLimits, RedisRateLimits]]:
    one, two = (RedisRateLimits(redis_server.url, prefix=prefix, clock=clock, stream_ttl=60) for _ in range(2))
    yield one, two
    await one.aclose()
    await two.aclose()


async def test_two_workers_share_one_request_bucket(workers: tuple[RedisRateLimits, RedisRateLimits]) -> None:
    one, two = workers
    limits = KeyLimits(requests_per_minute=3, max_streams=None)
    results = [await one.admit(KEY, limits), await two.admit(KEY, limits), await one.admit(KEY, limits)]
    assert all(isinstance(r, Ticket) for r in results)
    assert rejected(await two.admit(KEY, limits)).kind == "rate_limit"
    assert rejected(await one.admit(KEY, limits)).retry_after == 20


async def test_two_workers_share_the_stream_cap_and_budgets(workers: tuple[RedisRateLimits, RedisRateLimits]) -> None:
    one, two = workers
    limits = KeyLimits(requests_per_minute=None, max_streams=2, daily_tokens=100)
    held = [admitted(await one.admit(KEY, limits)), admitted(await two.admit(KEY, limits))]
    assert rejected(await one.admit(KEY, limits)).kind == "streams"
    held[1].release()
    assert await _admitted_within(one, limits, seconds=1.0)  # the other worker's release is one round trip away
    await two.record(KEY, limits, tokens=100, cost=0.0)
    assert rejected(await one.admit(KEY, limits)).kind == "budget"


async def _admitted_within(rl: RateLimits, limits: KeyLimits, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if isinstance(await rl.admit(KEY, limits), Ticket):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_streams_of_a_crashed_worker_expire_after_the_ticket_ttl(workers: tuple[RedisRateLimits, RedisRateLimits], clock: Clock) -> None:
    crashed, alive = workers
    limits = KeyLimits(requests_per_minute=None, max_streams=1)
    admitted(await crashed.admit(KEY, limits))  # never released: the worker died mid-run
    assert rejected(await alive.admit(KEY, limits)).kind == "streams"
    clock.now += 61  # stream_ttl=60
    admitted(await alive.admit(KEY, limits))


async def test_redis_keys_expire_by_themselves(workers: tuple[RedisRateLimits, RedisRateLimits], redis_server: RedisServer, prefix: str) -> None:
    one, _ = workers
    limits = KeyLimits(requests_per_minute=60, tokens_per_minute=600, daily_tokens=10**6)
    admitted(await one.admit(KEY, limits))
    await one.record(KEY, limits, tokens=1200, cost=0.25)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        ttls = {key.decode(): raw.ttl(key) for key in raw.scan_iter(f"{prefix}*")}
    finally:
        raw.close()
    assert 0 < ttls[f"{prefix}{{{KEY}}}:requests"] <= 3
    assert 0 < ttls[f"{prefix}{{{KEY}}}:tokens"] <= 121  # 600 in debt: 1200 tokens short of full at 10 a second
    assert 0 < ttls[f"{prefix}{{{KEY}}}:streams"] <= 61
    day_keys = [key for key in ttls if ":day:" in key]
    assert len(day_keys) == 2 and all(ttl > 0 for key, ttl in ttls.items() if key in day_keys)


async def test_an_unreachable_redis_fails_closed_with_503_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rillflow.serve")
    rl = RedisRateLimits(f"redis://:secret@127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        rejections = [rejected(await rl.admit(KEY, KeyLimits())) for _ in range(3)]
        await rl.record(KEY, KeyLimits(tokens_per_minute=10), tokens=5, cost=0.1)  # does not raise: the run is over
    finally:
        await rl.aclose()
    assert {(r.status, r.kind, r.retry_after) for r in rejections} == {(503, "overloaded", 2)}
    ours = [r.getMessage() for r in caplog.records if r.name == "rillflow.serve"]
    assert len(ours) == 1 and ours[0].startswith("requests are refused with 503: the limits store at redis://:***@127.0.0.1:")


async def test_a_redis_that_goes_away_and_comes_back_is_used_again(prefix: str, caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="rillflow.serve")
    server = RedisServer().start()
    rl = RedisRateLimits(server.url, prefix=prefix, timeout=0.2)
    limits = KeyLimits(max_streams=None)
    try:
        admitted(await rl.admit(KEY, limits))
        server.stop()
        assert rejected(await rl.admit(KEY, limits)).status == 503
        monkeypatch.setattr(redis_server_module, "free_port", lambda: server.port)  # the same address again
        server.start()
        assert await _admitted_within(rl, limits, seconds=2.0)
    finally:
        await rl.aclose()
        server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "rillflow.serve"]
    assert len(messages) == 2 and messages[0].startswith("requests are refused with 503")
    assert messages[1] == f"the limits store at {server.url} answers again"


async def test_open_rate_limits_picks_the_store_from_the_url() -> None:
    for url in (None, "", "memory"):
        assert isinstance(open_rate_limits(url), MemoryRateLimits)
    shared = open_rate_limits("redis://127.0.0.1:6399/0")
    assert isinstance(shared, RedisRateLimits)
    await shared.aclose()
    with pytest.raises(ValueError, match=r"limits URL 'http://:\*\*\*@host' is of no accepted form: use 'memory', redis://"):
        open_rate_limits("http://:pw@host")


# -- LoadShedder -------------------------------------------------------------------------------

def slot(result: Slot | Rejection) -> Slot:
    assert isinstance(result, Slot), f"expected a slot, got {result!r}"
    return result


async def test_requests_up_to_max_active_get_a_slot_at_once() -> None:
    shedder = LoadShedder(max_active=2, max_queued=0, queue_timeout=1.0)
    first, second = slot(await shedder.acquire()), slot(await shedder.acquire())
    assert (first.queue_ms, second.queue_ms, shedder.active) == (0.0, 0.0, 2)
    rejection = await shedder.acquire()
    assert isinstance(rejection, Rejection) and (rejection.status, rejection.kind) == (503, "overloaded")
    first.release()
    second.release()
    assert shedder.active == 0


async def test_a_full_queue_answers_503_with_a_retry_after_of_1_to_5_s() -> None:
    shedder = LoadShedder(max_active=1, max_queued=1, queue_timeout=5.0)
    held = slot(await shedder.acquire())
    waiter = asyncio.create_task(shedder.acquire())
    await asyncio.sleep(0)
    assert shedder.queued == 1
    rejection = await shedder.acquire()
    assert isinstance(rejection, Rejection) and rejection.status == 503 and 1 <= rejection.retry_after <= 5
    assert rejection.message == f"the server is busy; retry in {rejection.retry_after} s"
    held.release()
    slot(await waiter).release()
    assert (shedder.active, shedder.queued) == (0, 0)


async def test_waiters_get_released_slots_in_arrival_order_and_newcomers_queue_behind() -> None:
    shedder = LoadShedder(max_active=1, max_queued=3, queue_timeout=5.0)
    held = slot(await shedder.acquire())
    order: list[str] = []

    async def run(name: str) -> None:
        got = slot(await shedder.acquire())
        order.append(name)
        await asyncio.sleep(0)
        got.release()

    first = asyncio.create_task(run("first"))
    second = asyncio.create_task(run("second"))
    await asyncio.sleep(0)
    held.release()  # handed to "first" before it even wakes
    newcomer = asyncio.create_task(run("newcomer"))
    await asyncio.gather(first, second, newcomer)
    assert order == ["first", "second", "newcomer"]
    assert (shedder.active, shedder.queued) == (0, 0)


async def test_a_wait_past_the_queue_timeout_answers_503() -> None:
    shedder = LoadShedder(max_active=1, max_queued=1, queue_timeout=0.05)
    held = slot(await shedder.acquire())
    rejection = await shedder.acquire()
    assert isinstance(rejection, Rejection) and rejection.kind == "overloaded"
    assert (shedder.active, shedder.queued) == (1, 0)
    held.release()
    assert shedder.active == 0


async def test_queue_ms_measures_the_wait() -> None:
    clock = Clock(100.0)
    shedder = LoadShedder(max_active=1, max_queued=1, queue_timeout=5.0, clock=clock)
    held = slot(await shedder.acquire())
    waiter = asyncio.create_task(shedder.acquire())
    await asyncio.sleep(0)
    clock.now += 0.25
    held.release()
    assert slot(await waiter).queue_ms == pytest.approx(250.0)


async def test_cancelled_waiter_leaves_no_slot_taken() -> None:
    shedder = LoadShedder(max_active=1, max_queued=2, queue_timeout=5.0)
    held = slot(await shedder.acquire())
    waiter = asyncio.create_task(shedder.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert shedder.queued == 0
    held.release()
    assert shedder.active == 0


async def test_a_waiter_cancelled_as_the_slot_is_handed_to_it_passes_the_slot_on() -> None:
    shedder = LoadShedder(max_active=1, max_queued=2, queue_timeout=5.0)
    held = slot(await shedder.acquire())
    doomed = asyncio.create_task(shedder.acquire())
    next_in_line = asyncio.create_task(shedder.acquire())
    await asyncio.sleep(0)
    held.release()  # the slot goes to ``doomed``...
    doomed.cancel()  # ...which is cancelled before it wakes to take it
    with pytest.raises(asyncio.CancelledError):
        await doomed
    slot(await next_in_line).release()
    assert (shedder.active, shedder.queued) == (0, 0)


async def test_slot_release_twice_releases_once() -> None:
    shedder = LoadShedder(max_active=2, max_queued=0, queue_timeout=1.0)
    first = slot(await shedder.acquire())
    slot(await shedder.acquire())
    first.release()
    first.release()
    assert shedder.active == 1


def test_a_shedder_needs_one_slot_at_least() -> None:
    with pytest.raises(ValueError, match="max_active >= 1"):
        LoadShedder(max_active=0, max_queued=1, queue_timeout=1.0)
