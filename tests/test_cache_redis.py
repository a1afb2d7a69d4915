"""RedisCache against a real redis-server on loopback: two workers sharing entries, TTLs kept by
Redis, corrupt entries, clear and stats, the vector index, and a Redis that goes away mid-run."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import redis

from rillflow.runtime import cache_redis
from rillflow.runtime.cache_open import open_cache
from rillflow.runtime.cache_redis import RedisCache, redact
from rillflow.runtime.cache_store import CacheEntry, encode
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:  # fails (never skips) when redis-server is not installed
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"  # each test its own keyspace on the shared server


@pytest.fixture
async def cache(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisCache]:
    store = RedisCache(redis_server.url, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture
async def worker2(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisCache]:
    store = RedisCache(redis_server.url, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="rillflow.cache")
    return caplog


def entry(text: str = "q", *, flow: str = "qa", node: str = "answer", expires: float | None = None, answer: str = "Paris") -> CacheEntry:
    return CacheEntry(key=hashlib.sha256(f"{flow}/{node}/{text}".encode()).hexdigest(), flow=flow, node=node, node_type="llm",
                      tenant=None, created=time.time(), expires=expires, payload={"outputs": {"text": answer}})


def vec(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


async def test_put_then_get_round_trips_and_a_second_worker_sees_it(cache: RedisCache, worker2: RedisCache) -> None:
    e = entry("héllo", answer="Ça va? 東京 🙂")
    cache.put(e)
    assert await cache.get(e.key) == e  # at once, before the write lands
    await cache.flush()
    assert await worker2.get(e.key) == e
    assert await worker2.get(entry("never").key) is None


async def test_entries_expire_in_redis_itself(cache: RedisCache, worker2: RedisCache, raw: redis.Redis, prefix: str) -> None:
    lasting, brief = entry("lasting", expires=time.time() + 60), entry("brief", expires=time.time() + 0.5)
    cache.put(lasting)
    cache.put(brief)
    await cache.flush()
    assert 0 < raw.pttl(f"{prefix}e:{lasting.key}") <= 60_000
    assert raw.pttl(f"{prefix}e:{entry('never').key}") == -2
    assert await worker2.get(brief.key) == brief
    assert await worker2.get(lasting.key, now=time.time() + 61) is None
    await asyncio.sleep(brief.expires - time.time() + 0.05)  # type: ignore[operator]
    assert await worker2.get(brief.key) is None
    assert not raw.exists(f"{prefix}e:{brief.key}")


async def test_an_entry_without_expiry_has_no_ttl(cache: RedisCache, raw: redis.Redis, prefix: str) -> None:
    e = entry("forever")
    cache.put(e)
    await cache.flush()
    assert raw.pttl(f"{prefix}e:{e.key}") == -1


@pytest.mark.parametrize("damage", ["garbage", "payload", "other key"])
async def test_a_corrupt_entry_is_a_warned_and_counted_miss(
    cache: RedisCache, raw: redis.Redis, prefix: str, warnings_logged: pytest.LogCaptureFixture, damage: str
) -> None:
    e, other = entry("q"), entry("other", answer="Rome")
    doc = {"garbage": b"\x80\x04garbage, maybe a pickle", "payload": encode(e).replace("Paris", "Lyon!").encode(),
           "other key": encode(other).encode()}[damage]
    raw.set(f"{prefix}e:{e.key}", doc)
    assert await cache.get(e.key) is None
    [record] = [r for r in warnings_logged.records if r.name == "rillflow.cache"]
    assert e.key[:12] in record.getMessage() and "corrupt" in record.getMessage()
    await cache.flush()
    corrupt = sum(r["corrupt"] for r in cache.stats())
    assert corrupt == (0 if damage == "garbage" else 1)  # counted where the document still names its flow and node


async def test_documents_are_json_and_vectors_raw_float32(cache: RedisCache, raw: redis.Redis, prefix: str) -> None:
    e = entry("q")
    cache.put(e, vec(3, 4), "tenant-a/semantic")
    await cache.flush()
    assert raw.get(f"{prefix}e:{e.key}") == encode(e).encode()
    blob = raw.hget(f"{prefix}v:tenant-a/semantic", e.key)
    assert np.array_equal(np.frombuffer(blob, dtype="<f4"), vec(3, 4))  # type: ignore[arg-type]


async def test_stats_and_clear_per_flow_and_node(cache: RedisCache, worker2: RedisCache) -> None:
    a, b, c = entry("1", node="answer"), entry("2", node="retrieve"), entry("3", flow="chat")
    for e, v in ((a, vec(1, 0)), (b, vec(0, 1)), (c, vec(1, 1))):
        cache.put(e, v, "s")
    cache.count("qa", "answer", "hit")
    worker2.count("qa", "answer", "hit")
    worker2.count("qa", "answer", "miss")
    await cache.flush()
    await worker2.flush()
    rows = {(r["flow"], r["node"]): r for r in cache.stats()}
    assert set(rows) == {("qa", "answer"), ("qa", "retrieve"), ("chat", "answer")}
    qa = rows["qa", "answer"]
    assert (qa["entries"], qa["bytes"], qa["hits"], qa["misses"]) == (1, len(encode(a).encode()), 2, 1)
    assert qa["hit_rate"] == pytest.approx(2 / 3)
    assert [r["node"] for r in cache.stats(flow="qa")] == ["answer", "retrieve"]
    assert cache.clear(flow="qa", node="answer") == 1
    assert await worker2.get(a.key) is None and await worker2.get(b.key) == b
    assert await worker2.nearest("s", vec(1, 0), 0.99) is None
    assert cache.clear(flow="qa") == 1
    assert cache.clear() == 1
    assert cache.stats() == []


async def test_clear_everything_keeps_other_prefixes(cache: RedisCache, redis_server: RedisServer) -> None:
    neighbour = RedisCache(redis_server.url, prefix="neighbour:")
    try:
        e = entry("theirs")
        neighbour.put(e)
        await neighbour.flush()
        cache.put(entry("mine"))
        await cache.flush()
        assert cache.clear() == 1
        assert await neighbour.get(e.key) == e
        assert neighbour.clear() == 1
    finally:
        await neighbour.aclose()


async def test_clear_everything_leaves_rate_limit_state_sharing_the_prefix(cache: RedisCache, redis_server: RedisServer) -> None:
    limits = redis.Redis.from_url(redis_server.url)
    try:
        limits.set("rill:limits:{k1}:tokens", "42")  # what ui/limits_redis.py keeps under the same default prefix
        cache.put(entry("mine"))
        await cache.flush()
        assert cache.clear() == 1
        assert limits.get("rill:limits:{k1}:tokens") == b"42"
    finally:
        limits.delete("rill:limits:{k1}:tokens")
        limits.close()


async def test_stats_forget_entries_redis_expired(cache: RedisCache) -> None:
    cache.put(entry("brief", expires=time.time() + 0.1))
    cache.put(entry("lasting"))
    await cache.flush()
    await asyncio.sleep(0.2)
    [row] = cache.stats()
    assert row["entries"] == 1


async def test_nearest_shares_vectors_between_workers_and_keeps_scopes_apart(
    cache: RedisCache, worker2: RedisCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    close, far = entry("close"), entry("far")
    cache.put(close, vec(1, 0.1, 0), "tenant-a/semantic")
    cache.put(far, vec(0, 1, 0), "tenant-a/semantic")
    found = await cache.nearest("tenant-a/semantic", vec(1, 0, 0), 0.9)  # this worker: before the writes land
    assert found is not None and found[0] == close and found[1] > 0.99
    await cache.flush()
    theirs = await worker2.nearest("tenant-a/semantic", vec(1, 0, 0), 0.9)
    assert theirs is not None and theirs[0] == close
    assert await worker2.nearest("tenant-a/semantic", vec(1, 0, 0), 0.999) is None
    assert await worker2.nearest("tenant-b/semantic", vec(1, 0.1, 0), 0.0) is None
    monkeypatch.setattr(cache_redis, "MATRIX_TTL_S", 0.0)
    later = entry("later")
    cache.put(later, vec(0, 0, 1), "tenant-a/semantic")
    await cache.flush()
    assert (await worker2.nearest("tenant-a/semantic", vec(0, 0, 1), 0.9))[0] == later  # type: ignore[index]


async def test_nearest_drops_vectors_of_entries_redis_expired(cache: RedisCache, worker2: RedisCache, raw: redis.Redis, prefix: str) -> None:
    gone, kept = entry("gone", expires=time.time() + 0.1), entry("kept")
    cache.put(gone, vec(1, 0), "s")
    cache.put(kept, vec(1, 0.3), "s")
    await cache.flush()
    await asyncio.sleep(0.2)
    found = await worker2.nearest("s", vec(1, 0), 0.5)  # its matrix, from Redis, still holds the expired entry's vector
    assert found is not None and found[0] == kept
    await worker2.flush()
    assert raw.hkeys(f"{prefix}v:s") == [kept.key.encode()]


async def test_a_redis_that_goes_away_makes_lookups_miss_with_a_warning(warnings_logged: pytest.LogCaptureFixture) -> None:
    server = RedisServer().start()
    store = RedisCache(server.url)
    try:
        e = entry("q")
        store.put(e, vec(1, 0), "s")
        await store.flush()
        assert await store.get(e.key) == e
        server.stop()
        assert await store.get(e.key) is None
        assert any("unreachable" in r.getMessage() and server.url in r.getMessage() for r in warnings_logged.records)
        store.put(entry("lost"))
        store.count("qa", "answer", "miss")
        assert await store.nearest("s", vec(1, 0), 0.5) is None
        await store.flush()
        assert store.errors == 1
        with pytest.raises(ConnectionError, match=f"cannot reach the cache at {server.url}"):
            store.stats()
    finally:
        await store.aclose()
        server.stop()


async def test_a_down_redis_costs_a_lookup_no_more_than_the_socket_timeout(warnings_logged: pytest.LogCaptureFixture) -> None:
    store = RedisCache("redis://10.255.255.1:6379/0")  # unroutable: connecting hangs until the timeout
    try:
        t0 = time.monotonic()
        assert await store.get(entry("q").key) is None
        assert await store.get(entry("q").key) is None  # skipped: Redis failed a moment ago
        assert time.monotonic() - t0 < 1.5
    finally:
        await store.aclose()


def test_without_an_event_loop_puts_and_counts_are_written_at_once(redis_server: RedisServer, prefix: str) -> None:
    store = RedisCache(redis_server.url, prefix=prefix)
    try:
        e = entry("sync")
        store.put(e)
        store.count("qa", "answer", "write")
        other = RedisCache(redis_server.url, prefix=prefix)
        try:
            assert asyncio.run(other.get(e.key)) == e
        finally:
            other.close()
        assert store.stats()[0]["writes"] == 1
        assert store.clear() == 1
    finally:
        store.close()


def test_a_finished_event_loop_closes_its_client_and_writes_its_counts(redis_server: RedisServer, prefix: str) -> None:
    store = RedisCache(redis_server.url, prefix=prefix)

    async def serve(n: int) -> None:
        e = entry(str(n))
        store.put(e)
        assert await store.get(e.key) == e
        await store.flush()
        store.count("qa", "answer", "hit")  # still in memory when the loop ends: its finalizer sends it

    try:
        asyncio.run(serve(1))  # no close: the loop's shutdown closes the connections
        asyncio.run(serve(2))
        gc.collect()  # an unclosed connection would warn (ResourceWarning, an error here)
        assert not store._clients
        store.count("qa", "answer", "hit")
        [row] = store.stats()
        assert (row["entries"], row["hits"]) == (2, 3)
        store.clear()
    finally:
        store.close()


def test_puts_still_queued_or_in_flight_when_the_loop_ends_are_written(redis_server: RedisServer, prefix: str) -> None:
    store = RedisCache(redis_server.url, prefix=prefix)

    async def burst() -> None:
        for i in range(2000):
            store.put(entry(str(i)))
        await asyncio.sleep(0.005)  # a batch is on the wire when asyncio.run cancels the writer

    try:
        asyncio.run(burst())
        assert (store.stats()[0]["entries"], store.errors) == (2000, 0)
        store.clear()
    finally:
        store.close()


async def test_a_burst_of_puts_goes_out_in_batches_on_one_connection(cache: RedisCache, worker2: RedisCache) -> None:
    entries = [entry(str(i)) for i in range(3000)]
    for i, e in enumerate(entries):
        cache.put(e, vec(1, i % 7) if i % 2 else None, "s")
    await cache.flush()
    assert cache.errors == 0
    assert cache.stats()[0]["entries"] == 3000
    assert await worker2.get(entries[-1].key) == entries[-1]


def test_the_fixture_fails_loudly_without_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.redis_server as helper

    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    monkeypatch.setattr(helper.os.path, "exists", lambda path: False)
    with pytest.raises(RuntimeError, match="redis-server is not installed: run `apt-get install redis-server`"):
        RedisServer()


def test_open_cache_opens_redis_urls_and_redacts_passwords(redis_server: RedisServer) -> None:
    store = open_cache(redis_server.url)
    try:
        assert isinstance(store, RedisCache) and open_cache(redis_server.url) is store
    finally:
        store.close()
    assert redact("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact("rediss://app:s3cret@cache:6380/1") == "rediss://app:***@cache:6380/1"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"
