"""Cache store costs: what a node pays to look up and store its result.

    python bench/cache.py                      # SQLite, and Redis on a redis-server started on loopback
    python bench/cache.py --redis redis://h:6379/0   # an existing Redis instead (keys under bench:)
    python bench/cache.py --quick              # fewer repetitions

get hit: median microseconds per ``await get(key)`` of an entry already written (decode and checksum
included; target < 100 us on SQLite). put: microseconds the caller spends in ``put`` (the write itself
happens on the writer thread / a background task), and entries per second until ``flush`` returns.
nearest: microseconds per ``await nearest()`` over 1k and 10k 384-dimension vectors in one scope,
once the scope's matrix is loaded, and the first (loading) call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.redis_server

from rillflow.runtime.cache_redis import RedisCache
from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.cache_store import CacheEntry

DIM = 384
ANSWER = "The Eiffel Tower is in Paris. " * 20  # a 600-character answer, as an llm node would cache


def entry(i: int) -> CacheEntry:
    return CacheEntry(key=hashlib.sha256(str(i).encode()).hexdigest(), flow="bench", node="answer", node_type="llm", tenant=None,
                      created=time.time(), expires=None, payload={"outputs": {"text": ANSWER}, "chunks": {"text": ANSWER.split(" ")}})


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def per_call(fn: Any, keys: list[Any], repeat: int) -> float:
    """Median microseconds per awaited call over ``repeat`` rounds of ``keys``."""
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for k in keys:
            await fn(k)
        rounds.append((time.perf_counter() - t0) / len(keys))
    return statistics.median(rounds) * 1e6


async def measure(store: Any, make: Callable[[], Any], label: str, quick: bool) -> list[tuple[str, str]]:
    n = 1000
    items = [entry(i) for i in range(n)]
    t0 = time.perf_counter()
    for e in items:
        store.put(e)
    put_us = (time.perf_counter() - t0) / n * 1e6
    await store.flush()
    written = n / (time.perf_counter() - t0)
    keys = [e.key for e in items]
    await per_call(store.get, keys[:50], 1)  # warm up
    rows = [(f"{label} get hit", f"{await per_call(store.get, keys, 3 if quick else 10):.1f} us")]
    miss = [hashlib.sha256(f"miss{i}".encode()).hexdigest() for i in range(200)]
    rows.append((f"{label} get miss", f"{await per_call(store.get, miss, 3 if quick else 10):.1f} us"))
    rows.append((f"{label} put (caller)", f"{put_us:.1f} us"))
    rows.append((f"{label} put until flushed", f"{written:,.0f} entries/s"))
    for size in (1000, 10_000):
        rows += await measure_nearest(store, make, label, size, quick)
    return rows


async def measure_nearest(store: Any, make: Callable[[], Any], label: str, size: int, quick: bool) -> list[tuple[str, str]]:
    scope = f"bench/{size}"
    base = 10_000_000 * size
    stored = vectors(size, seed=size)
    for i, v in enumerate(stored):
        store.put(entry(base + i), v, scope)
    await store.flush()
    fresh = make()  # a new store: the scope's matrix is not loaded yet
    queries = list(vectors(20, seed=1))
    t0 = time.perf_counter()
    await fresh.nearest(scope, queries[0], 0.99)
    first_ms = (time.perf_counter() - t0) * 1e3
    us = await per_call(lambda q: fresh.nearest(scope, q, 0.99), queries, 3 if quick else 10)
    hit = await fresh.nearest(scope, stored[7], 0.99)
    assert hit is not None and hit[0].key == entry(base + 7).key, "nearest missed an exact match"
    await close(fresh)
    return [(f"{label} nearest, {size:,} vectors", f"{us:.0f} us (first call {first_ms:.0f} ms)")]


async def close(store: Any) -> None:
    if isinstance(store, RedisCache):
        await store.aclose()
    else:
        store.close()


async def run_sqlite(quick: bool) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.db"
        store = SqliteCache(path)
        try:
            return await measure(store, lambda: SqliteCache(path), "sqlite", quick)
        finally:
            store.close()


async def run_redis(url: str, quick: bool) -> list[tuple[str, str]]:
    store = RedisCache(url, prefix="bench:")
    try:
        store.clear()
        return await measure(store, lambda: RedisCache(url, prefix="bench:"), "redis", quick)
    finally:
        store.clear()
        await store.aclose()


async def main(redis_url: str | None, quick: bool) -> None:
    rows = await run_sqlite(quick)
    server = None
    if redis_url is None:
        from tests.redis_server import RedisServer

        try:
            server = RedisServer().start()
            redis_url = server.url
        except RuntimeError as exc:
            print(f"(no Redis figures: {exc})")
    try:
        if redis_url is not None:
            rows += await run_redis(redis_url, quick)
    finally:
        if server is not None:
            server.stop()
    width = max(len(r[0]) for r in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")
    print(f"\npython {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cores")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="an existing Redis to measure (default: start redis-server on loopback)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.quick))
