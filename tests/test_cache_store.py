"""SqliteCache against real SQLite files: round trips, expiry, corrupt and torn entries, a full or
unwritable disk, stats and clear, and the vector index behind semantic lookups."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rillflow.runtime import cache_sqlite
from rillflow.runtime.cache_open import open_cache, sqlite_path
from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.cache_store import CacheEntry, encode


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(text: str = "q", *, flow: str = "qa", node: str = "answer", expires: float | None = None, answer: str = "Paris") -> CacheEntry:
    return CacheEntry(key=key_of(f"{flow}/{node}/{text}"), flow=flow, node=node, node_type="llm", tenant=None,
                      created=time.time(), expires=expires, payload={"outputs": {"text": answer}, "chunks": {"text": [answer]}})


def vec(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
async def cache(tmp_path: Path):
    store = SqliteCache(tmp_path / "state" / "cache.db")
    yield store
    store.close()


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="rillflow.cache")
    return caplog


def db(cache: SqliteCache) -> sqlite3.Connection:
    return sqlite3.connect(cache.path, isolation_level=None)


async def test_put_then_get_round_trips_unicode_payloads(cache: SqliteCache) -> None:
    e = entry("héllo", answer="Ça va? 東京 \u202e 🙂")
    cache.put(e)
    await cache.flush()
    got = await cache.get(e.key)
    assert got == e
    assert await cache.get(key_of("never stored")) is None


async def test_a_put_is_visible_at_once_while_the_writer_waits_for_the_file(cache: SqliteCache) -> None:
    cache.put(entry("warm-up"))
    await cache.flush()
    other = db(cache)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: our writer must wait
    try:
        e = entry("fresh")
        cache.put(e)
        await asyncio.sleep(0.05)
        assert e.key in cache._pending  # not written yet...
        assert await cache.get(e.key) == e  # ...and served from memory, without waiting for the lock
        assert await cache.get(entry("warm-up").key) is not None  # WAL: reads never wait for a writer
    finally:
        other.execute("ROLLBACK")
        other.close()
    await cache.flush()
    assert not cache._pending
    assert await cache.get(e.key) == e


async def test_an_expired_entry_is_a_miss_unless_now_is_zero(cache: SqliteCache) -> None:
    past, future = entry("old", expires=time.time() - 1), entry("new", expires=time.time() + 60)
    cache.put(past)
    cache.put(future)
    assert await cache.get(past.key) is None  # pending and expired
    await cache.flush()
    assert await cache.get(past.key) is None
    assert await cache.get(past.key, now=0.0) == past
    assert await cache.get(future.key) == future
    assert await cache.get(future.key, now=future.expires + 1) is None  # type: ignore[operator]


async def test_purge_expired_deletes_only_expired_entries_and_their_vectors(cache: SqliteCache) -> None:
    cache.put(entry("old", expires=time.time() - 1), vec(1, 0), "s")
    cache.put(entry("new", expires=None), vec(0, 1), "s")
    await cache.flush()
    assert cache.purge_expired() == 1
    with db(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 1


def tamper(cache: SqliteCache, key: str, doc: str | bytes) -> None:
    with db(cache) as conn:
        conn.execute("UPDATE entries SET doc = ? WHERE key = ?", (doc, key))


@pytest.mark.parametrize("damage", ["payload", "garbage", "not utf-8", "other key", "checksum field", "future format"])
async def test_a_corrupt_entry_is_a_warned_and_counted_miss(cache: SqliteCache, warnings_logged: pytest.LogCaptureFixture, damage: str) -> None:
    e, other = entry("q", answer="Paris"), entry("other", answer="Rome")
    cache.put(e)
    cache.put(other)
    await cache.flush()
    doc = encode(e)
    bad: str | bytes = {
        "payload": doc.replace("Paris", "Lyon!"),
        "garbage": "{not json at all",
        "not utf-8": b"\xff\xfe\x00garbage",
        "other key": encode(other),
        "checksum field": doc.replace('"checksum":"', '"checksum":"0'),
        "future format": doc.replace('"format":1', '"format":99'),
    }[damage]
    tamper(cache, e.key, bad)
    assert await cache.get(e.key) is None
    assert await cache.get(other.key) == other  # the rest of the cache still serves
    [record] = [r for r in warnings_logged.records if r.name == "rillflow.cache"]
    assert e.key[:12] in record.getMessage() and "corrupt" in record.getMessage() and "qa.answer" in record.getMessage()
    await cache.flush()
    [row] = cache.stats()
    assert row["corrupt"] == 1


HOSTILE = {
    "deeply nested": lambda doc: "[" * 100_000 + "]" * 100_000,  # RecursionError in json.loads
    "huge int": lambda doc: doc.replace('"created":', '"created":1' + "0" * 400 + ',"was":'),  # OverflowError in float()
}


@pytest.mark.parametrize("damage", sorted(HOSTILE))
async def test_regression_a_doc_that_overflows_the_parser_is_corrupt_not_an_exception(
    cache: SqliteCache, warnings_logged: pytest.LogCaptureFixture, damage: str
) -> None:
    # decode() let RecursionError and OverflowError escape: one hostile entry made every lookup of it raise
    e = entry("q")
    cache.put(e)
    await cache.flush()
    tamper(cache, e.key, HOSTILE[damage](encode(e)))
    assert await cache.get(e.key) is None
    assert any("corrupt" in r.getMessage() for r in warnings_logged.records)


async def test_entries_are_stored_as_json_and_vectors_as_raw_float32_never_pickle(cache: SqliteCache) -> None:
    e = entry("q")
    v = vec(3, 4, 0)
    cache.put(e, v, "tenant-a/semantic")
    await cache.flush()
    with db(cache) as conn:
        (doc,) = conn.execute("SELECT doc FROM entries WHERE key = ?", (e.key,)).fetchone()
        dim, blob = conn.execute("SELECT dim, vec FROM vectors WHERE key = ?", (e.key,)).fetchone()
    assert json.loads(doc)["key"] == e.key
    assert json.loads(json.loads(doc)["payload"]) == e.payload
    assert dim == 3 and len(blob) == 12
    assert np.array_equal(np.frombuffer(blob, dtype="<f4"), v)


async def test_the_file_is_private(tmp_path: Path) -> None:
    store = SqliteCache(tmp_path / "private" / "cache.db")
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "private" / "cache.db").st_mode) == 0o600


async def test_stats_count_entries_bytes_and_lookups_per_flow_and_node(cache: SqliteCache) -> None:
    for i in range(3):
        cache.put(entry(str(i), flow="qa", node="answer"))
    cache.put(entry("x", flow="qa", node="retrieve"))
    cache.put(entry("y", flow="chat", node="answer"))
    for what in ("hit", "hit", "hit", "miss", "write"):
        cache.count("qa", "answer", what)  # type: ignore[arg-type]
    cache.count("chat", "answer", "miss")
    rows = {(r["flow"], r["node"]): r for r in cache.stats()}  # stats writes what is queued first
    assert set(rows) == {("qa", "answer"), ("qa", "retrieve"), ("chat", "answer")}
    qa = rows["qa", "answer"]
    assert (qa["entries"], qa["hits"], qa["misses"], qa["writes"], qa["corrupt"], qa["hit_rate"]) == (3, 3, 1, 1, 0, 0.75)
    with db(cache) as conn:
        docs = conn.execute("SELECT doc FROM entries WHERE flow = 'qa' AND node = 'answer'").fetchall()
    assert qa["bytes"] == sum(len(d.encode()) for (d,) in docs) > 0
    assert rows["qa", "retrieve"]["hit_rate"] is None
    assert rows["chat", "answer"]["hit_rate"] == 0.0
    assert [r["node"] for r in cache.stats("qa")] == ["answer", "retrieve"]


async def test_clear_deletes_a_node_a_flow_or_everything(cache: SqliteCache) -> None:
    a, b, c = entry("1", flow="qa", node="answer"), entry("2", flow="qa", node="retrieve"), entry("3", flow="chat", node="answer")
    for e, v in ((a, vec(1, 0)), (b, vec(0, 1)), (c, vec(1, 1))):
        cache.put(e, v, "s")
    cache.count("qa", "answer", "hit")
    assert cache.clear(flow="qa", node="answer") == 1
    assert await cache.get(a.key) is None and await cache.get(b.key) == b
    assert await cache.nearest("s", vec(1, 0), 0.99) is None  # its vector went with it
    assert [(r["flow"], r["node"]) for r in cache.stats()] == [("chat", "answer"), ("qa", "retrieve")]
    assert cache.clear(node="answer") == 1
    assert cache.clear(flow="nope") == 0
    assert cache.clear() == 1
    assert cache.stats() == []
    with db(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0


async def test_nearest_finds_the_most_similar_entry_at_or_above_the_threshold(cache: SqliteCache) -> None:
    close, far = entry("close"), entry("far")
    cache.put(close, vec(1, 0.1, 0), "t1/semantic")
    cache.put(far, vec(0, 1, 0), "t1/semantic")
    found = await cache.nearest("t1/semantic", vec(1, 0, 0), 0.9)  # still pending: found from memory
    assert found is not None and found[0] == close and 0.99 < found[1] <= 1.0
    await cache.flush()
    assert (await cache.nearest("t1/semantic", vec(1, 0, 0), 0.9))[0] == close  # type: ignore[index]
    assert await cache.nearest("t1/semantic", vec(1, 0, 0), 0.999) is None
    assert (await cache.nearest("t1/semantic", vec(0.1, 1, 0), 0.9))[0] == far  # type: ignore[index]
    assert await cache.nearest("t1/semantic", [0.0, 0.0, 0.0], 0.1) is None  # a zero vector matches nothing
    assert await cache.nearest("t1/semantic", vec(1, 0), 0.1) is None  # another dimension matches nothing


async def test_a_vector_in_one_scope_never_matches_in_another(cache: SqliteCache) -> None:
    mine = entry("tenant a's question")
    cache.put(mine, vec(1, 2, 3), "tenant-a/semantic")
    await cache.flush()
    assert await cache.nearest("tenant-b/semantic", vec(1, 2, 3), 0.0) is None
    assert (await cache.nearest("tenant-a/semantic", vec(1, 2, 3), 0.0))[0] == mine  # type: ignore[index]


async def test_nearest_sees_entries_put_after_the_scope_was_loaded_and_skips_expired_ones(cache: SqliteCache) -> None:
    first = entry("first")
    cache.put(first, vec(1, 0), "s")
    await cache.flush()
    assert (await cache.nearest("s", vec(1, 0), 0.9))[0] == first  # type: ignore[index]  # loads the matrix
    stale, better = entry("stale", expires=time.time() - 1), entry("better")
    cache.put(stale, vec(0, 1), "s")
    cache.put(better, vec(1, 0.01), "s")
    assert (await cache.nearest("s", vec(1, 0.01), 0.9))[0] == better  # type: ignore[index]
    assert await cache.nearest("s", vec(0, 1), 0.9) is None
    await cache.flush()
    offline = await cache.nearest("s", vec(0, 1), 0.9, include_expired=True)
    assert offline is not None and offline[0] == stale


async def test_nearest_skips_a_corrupt_best_match_for_the_next_one(cache: SqliteCache, warnings_logged: pytest.LogCaptureFixture) -> None:
    best, second = entry("best"), entry("second")
    cache.put(best, vec(1, 0), "s")
    cache.put(second, vec(1, 0.2), "s")
    await cache.flush()
    tamper(cache, best.key, "garbage")
    found = await cache.nearest("s", vec(1, 0), 0.5)
    assert found is not None and found[0] == second
    assert any("corrupt" in r.getMessage() for r in warnings_logged.records)


async def test_another_process_s_vectors_show_up_after_the_recheck_interval(cache: SqliteCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_sqlite, "MATRIX_RECHECK_S", 0.0)
    assert await cache.nearest("s", vec(1, 0), 0.9) is None  # loads an empty matrix
    other = SqliteCache(cache.path)
    try:
        theirs = entry("theirs")
        other.put(theirs, vec(1, 0), "s")
        await other.flush()
    finally:
        other.close()
    assert (await cache.nearest("s", vec(1, 0), 0.9))[0] == theirs  # type: ignore[index]


KILL_WRITER = textwrap.dedent("""
    import hashlib, sys, time
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.cache_store import CacheEntry
    cache = SqliteCache(sys.argv[1])
    i = 0
    while True:
        key = hashlib.sha256(str(i).encode()).hexdigest()
        cache.put(CacheEntry(key=key, flow="f", node="n", node_type="llm", tenant=None, created=time.time(), expires=None,
                             payload={"outputs": {"text": "x" * (500 + i % 3000), "i": i}}), [1.0, float(i % 13), 2.0], "s")
        i += 1
        if i % 500 == 0:
            time.sleep(0.002)
""")


async def test_kill_9_mid_write_leaves_no_torn_entry(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(path)])
    try:
        deadline = time.monotonic() + 20
        rows = 0
        while rows < 3000 and time.monotonic() < deadline and proc.poll() is None:
            await asyncio.sleep(0.05)
            try:
                with sqlite3.connect(path, timeout=1) as conn:
                    rows = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0  # the schema is not there yet
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert rows >= 3000, "the writer never got going"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in conn.execute("SELECT key FROM entries")]
        assert conn.execute("SELECT COUNT(*) FROM vectors WHERE key NOT IN (SELECT key FROM entries)").fetchone()[0] == 0
    reopened = SqliteCache(path)
    try:
        got = [await reopened.get(k) for k in keys]
        assert all(e is not None for e in got)
        assert {e.payload["outputs"]["i"] for e in got if e is not None} == set(range(len(keys)))  # whole batches, in order
    finally:
        reopened.close()


async def test_an_unwritable_location_makes_every_lookup_a_miss_and_never_raises(tmp_path: Path, warnings_logged: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    store = SqliteCache(tmp_path / "a-file" / "cache.db")
    try:
        assert store.broken is not None
        e = entry("q")
        store.put(e, vec(1, 0), "s")
        store.count("qa", "answer", "miss")
        await store.flush()
        assert store.errors == 1
        assert await store.get(e.key) is None
        assert await store.nearest("s", vec(1, 0), 0.5) is None
        assert any("cannot open" in r.getMessage() for r in warnings_logged.records)
        with pytest.raises(OSError, match=r"cannot open the cache at .*a-file"):
            store.stats()
    finally:
        store.close()


async def test_a_full_disk_fails_writes_with_a_warning_and_keeps_serving(cache: SqliteCache, warnings_logged: pytest.LogCaptureFixture) -> None:
    kept = entry("kept")
    cache.put(kept)
    await cache.flush()
    pages = cache._wconn.execute("PRAGMA page_count").fetchone()[0]
    cache._wconn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL, as on a full disk
    big = entry("big", answer="x" * 200_000)
    cache.put(big)
    await cache.flush()
    assert cache.errors == 1
    assert await cache.get(big.key) is None
    assert await cache.get(kept.key) == kept
    assert any("cache write failed" in r.getMessage() and "full" in r.getMessage() for r in warnings_logged.records)


async def test_an_unencodable_payload_is_not_cached_and_does_not_raise(cache: SqliteCache) -> None:
    e = entry("nan")
    e.payload = {"outputs": {"score": float("nan")}}
    cache.put(e)
    assert cache.errors == 1
    assert await cache.get(e.key) is None


async def test_close_writes_what_is_queued_and_is_idempotent(tmp_path: Path) -> None:
    store = SqliteCache(tmp_path / "cache.db")
    e = entry("q")
    store.put(e)
    store.count("qa", "answer", "write")
    store.close()
    store.close()
    store.put(entry("late"))  # after close: dropped, counted, no exception
    assert store.errors == 1 and await store.get(e.key) is None
    reopened = SqliteCache(tmp_path / "cache.db")
    try:
        assert await reopened.get(e.key) == e
        assert reopened.stats()[0]["writes"] == 1
    finally:
        reopened.close()


def test_open_cache_shares_one_store_per_url_and_reopens_a_closed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_cache("sqlite:///rel/cache.db")
    try:
        assert isinstance(first, SqliteCache) and first.path == Path("rel/cache.db")
        assert open_cache(str(tmp_path / "rel" / "cache.db")) is first
        assert open_cache(f"sqlite:///{tmp_path}/rel/cache.db") is first
    finally:
        first.close()
    second = open_cache("sqlite:///rel/cache.db")
    try:
        assert second is not first
    finally:
        second.close()


def test_open_cache_defaults_to_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RILL_CACHE_URL", raising=False)
    monkeypatch.setenv("RILL_STATE_DIR", str(tmp_path / "state"))
    store = open_cache()
    try:
        assert isinstance(store, SqliteCache) and store.path == tmp_path / "state" / "cache.db"
    finally:
        store.close()


@pytest.mark.parametrize("url", ["postgres://db/cache", "sqlite://cache.db", "sqlite:///", "sqlite:///:memory:", "http://x"])
def test_open_cache_rejects_other_urls_listing_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///relative/path\.db.*redis://"):
        open_cache(url)


def test_sqlite_paths_are_relative_or_absolute() -> None:
    assert sqlite_path("sqlite:///.rill/cache.db") == Path(".rill/cache.db")
    assert sqlite_path("sqlite:////var/cache/rill.db") == Path("/var/cache/rill.db")
    assert sqlite_path("cache.db") == Path("cache.db")
    assert sqlite_path("redis://localhost:6379/0") is None
