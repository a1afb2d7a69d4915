"""RedisCache: one cache shared by several `rill serve` workers (and hosts), through redis-py.

Layout under the prefix (default ``rill:``): ``e:{key}`` the entry document (SET with PXAT from the
entry's expiry: Redis drops expired entries itself); ``n:{flow}:{node}`` the set of keys a node
wrote, for ``clear`` and ``stats``; ``c:{flow}:{node}`` a hash of counters; ``v:{scope}`` a hash of
key -> raw little-endian float32 vector for ``nearest``.

A down or slow Redis makes runs slower, never failing: every call has a 0.5 s socket timeout and no
retries (redis-py retries 10 times with backoff by default), a failure is a miss with a warning at
most every 30 s, and after one the store skips Redis for a second instead of timing out on each call.

redis.asyncio clients belong to the event loop that opened their connections, so there is one per
loop (as nodes/llm_remote.py does for AsyncOpenAI), closed when that loop shuts down. Opening clients
and handling their errors is rillflow.runtime.cache_redis_client, the blocking walks behind ``stats``
and ``clear`` are rillflow.runtime.cache_redis_admin; ``redact`` is still imported from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from rillflow.runtime.cache_redis_admin import clear_all, clear_some, scan_stats
from rillflow.runtime.cache_redis_client import LoopClient, admin_errors, as_bytes, as_text, blocking_client, redact
from rillflow.runtime.cache_stats import COUNTERS, FIELDS, Warner, log, merge_stats
from rillflow.runtime.cache_store import CacheEntry, CorruptEntry, Counter, decode, encode
from rillflow.runtime.cache_vectors import ScopeMatrix, Vector, unit

__all__ = ["ADMIN_TIMEOUT_S", "COUNTER_FLUSH_S", "FIELDS", "MATRIX_TTL_S", "MAX_BATCH", "MAX_CANDIDATES", "SKIP_AFTER_FAILURE_S",
           "SOCKET_TIMEOUT_S", "Errors", "RedisCache", "redact"]

SOCKET_TIMEOUT_S = 0.5
ADMIN_TIMEOUT_S = 5.0  # stats and clear walk the whole keyspace: give them longer
SKIP_AFTER_FAILURE_S = 1.0
COUNTER_FLUSH_S = 1.0
MATRIX_TTL_S = 3.0  # other workers' vectors show up within this
MAX_BATCH = 500  # puts per pipeline
MAX_CANDIDATES = 8  # documents fetched by one nearest() before it gives up (vectors of expired entries)
Errors = (redis.RedisError, OSError)


@dataclass(slots=True)
class _Write:
    entry: CacheEntry
    doc: bytes
    scope: str | None
    vector: Vector | None


class RedisCache:
    """The cache in Redis; see the module docstring. ``errors`` counts entries that could not be written."""

    def __init__(self, url: str, *, prefix: str = "rill:") -> None:
        self.url = url
        self.prefix = prefix
        self.errors = 0
        self.closed = False
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClient] = weakref.WeakKeyDictionary()
        self._sync: redis.Redis | None = None  # puts and counts without an event loop
        self._admin_client: redis.Redis | None = None  # stats and clear: longer timeouts
        self._pending: dict[str, bytes] = {}  # key -> doc, until its SET is acknowledged
        self._pending_vectors: dict[str, tuple[str, Vector]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # background writes: referenced so they are not collected
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._count_timer: asyncio.TimerHandle | None = None
        self._outbox: list[_Write] = []  # puts waiting for the writer task
        self._writer: asyncio.Task[None] | None = None
        self._matrices: dict[tuple[str, int], ScopeMatrix] = {}
        self._skip_until = 0.0
        self._warner = Warner()

    def __repr__(self) -> str:
        return f"RedisCache({redact(self.url)!r}, prefix={self.prefix!r})"

    # -- clients -----------------------------------------------------------------------------
    async def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        held = self._clients.get(loop)
        if held is None:
            client = aioredis.Redis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
                                             retry=AsyncRetry(NoBackoff(), 0))
            held = self._clients[loop] = LoopClient(client, self._closer(client, weakref.ref(loop)))
            await held.closer.__anext__()  # started: the loop now finalizes it at shutdown
        return held.client

    async def _closer(self, client: aioredis.Redis, loop: weakref.ref[asyncio.AbstractEventLoop]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            held = loop()
            if held is not None:
                self._clients.pop(held, None)
            await self._drain(client)  # what the loop's cancelled writer left
            with contextlib.suppress(*Errors):  # the server went away: the sockets are closed either way
                await client.aclose()

    def _sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = blocking_client(self.url, SOCKET_TIMEOUT_S)
        return self._sync

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _unreachable(self, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + SKIP_AFTER_FAILURE_S
        self._warner.warn("down", "cache at %s unreachable (%s: %s); running without it for now", redact(self.url), type(exc).__name__, exc)

    def _ekey(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    # -- reads -------------------------------------------------------------------------------
    async def get(self, key: str, *, now: float | None = None) -> CacheEntry | None:
        """The live entry under ``key`` (live at ``now``, default the current time); None when absent, expired, corrupt or unreachable."""
        doc = await self._fetch(key)
        return None if doc is None else self._decoded(key, doc, time.time() if now is None else now)

    async def _fetch(self, key: str) -> bytes | None:
        doc = self._pending.get(key)
        if doc is not None or self._skipping() or self.closed:
            return doc
        try:
            client = await self._client()
            found = await client.get(self._ekey(key))
        except Errors as exc:
            self._unreachable(exc)
            return None
        return None if found is None else as_bytes(found)

    def _decoded(self, key: str, doc: bytes, at: float) -> CacheEntry | None:
        try:
            entry = decode(doc, key)
        except CorruptEntry as exc:
            flow, node = _owner(doc)
            log.warning("cache entry %s... of %s.%s is corrupt, ignored: %s", key[:12], flow or "?", node or "?", exc)
            if flow is not None and node is not None:
                self.count(flow, node, "corrupt")
            return None
        return None if entry.expires is not None and entry.expires <= at else entry

    async def nearest(self, scope: str, vector: Any, threshold: float, *, include_expired: bool = False) -> tuple[CacheEntry, float] | None:
        """The entry indexed under ``scope`` most similar (cosine) to ``vector``, if at least ``threshold``.
        Redis drops expired entries, so ``include_expired`` only finds those it still holds."""
        query = unit(vector)
        if query is None or self.closed:
            return None
        matrix = await self._matrix(scope, query.shape[0])
        at = -np.inf if include_expired else time.time()
        gone: list[str] = []
        found = None
        for key, similarity in matrix.search(query, threshold, None if include_expired else at)[:MAX_CANDIDATES]:
            doc = await self._fetch(key)
            entry = None if doc is None else self._decoded(key, doc, at)
            if entry is not None:
                found = entry, similarity
                break
            if doc is None and not self._skipping():
                gone.append(key)
        if gone:  # vectors of entries Redis expired: drop them (hash fields have no TTL before Redis 7.4)
            matrix.drop(gone)
            self._spawn(self._forget_vectors(scope, gone))
        return found

    async def _matrix(self, scope: str, dim: int) -> ScopeMatrix:
        matrix = self._matrices.get((scope, dim))
        if matrix is not None and (time.monotonic() - matrix.loaded < MATRIX_TTL_S or self._skipping()):
            return matrix
        waiting = [(k, v) for k, (s, v) in list(self._pending_vectors.items()) if s == scope and v.shape[0] == dim]
        try:
            client = await self._client()
            raw = await client.hgetall(f"{self.prefix}v:{scope}")
        except Errors as exc:
            self._unreachable(exc)
            return matrix or ScopeMatrix.from_rows([], dim)
        fresh = ScopeMatrix.from_rows([(as_text(k), as_bytes(v), None) for k, v in raw.items()], dim)
        for key, vec in waiting:
            fresh.add(key, vec, None)
        self._matrices[(scope, dim)] = fresh
        return fresh

    async def _forget_vectors(self, scope: str, keys: list[str]) -> None:
        try:
            await (await self._client()).hdel(f"{self.prefix}v:{scope}", *keys)
        except Errors as exc:
            self._unreachable(exc)

    # -- writes: batched by one background task per event loop ----------------------------------
    def put(self, entry: CacheEntry, vector: Any = None, scope: str | None = None) -> None:
        """Store (replace) ``entry`` in the background; a ``get`` in this process sees it at once."""
        try:
            doc = encode(entry).encode()
        except (TypeError, ValueError) as exc:
            self._write_failed(1, f"entry {entry.key[:12]}... of {entry.flow}.{entry.node} is not JSON-able: {exc}")
            return
        if self.closed:
            self._write_failed(1, "the cache is closed")
            return
        vec = unit(vector) if vector is not None and scope is not None else None
        if vec is not None and scope is not None:
            self._pending_vectors[entry.key] = (scope, vec)
            matrix = self._matrices.get((scope, vec.shape[0]))
            if matrix is not None:
                matrix.add(entry.key, vec, entry.expires)
        self._pending[entry.key] = doc
        write = _Write(entry, doc, scope if vec is not None else None, vec)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a thread): write now with the blocking client
            self._send_sync([write])
            return
        self._outbox.append(write)
        self._kick(loop)

    def count(self, flow: str, node: str, what: Counter) -> None:
        """Count a hit, miss, write or corrupt entry; sent within a second (at once without an event loop)."""
        self._counts.setdefault((flow, node), [0, 0, 0, 0])[COUNTERS[what]] += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send_sync([])
            return
        if self._count_timer is None or self._count_timer.when() <= loop.time():
            self._count_timer = loop.call_later(COUNTER_FLUSH_S, self._kick, loop)

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a writer task runs on ``loop``: one pipeline (MULTI/EXEC) per batch, not a connection per put."""
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._drain())
            self._tasks.add(self._writer)
            self._writer.add_done_callback(self._tasks.discard)

    async def _drain(self, client: aioredis.Redis | None = None) -> None:
        while self._outbox or self._counts:
            batch = self._outbox[:MAX_BATCH]
            del self._outbox[:len(batch)]
            counts, self._counts = self._counts, {}
            if self._skipping():
                self._skip(batch)
                continue
            try:
                pipe = (client or await self._client()).pipeline(transaction=True)
                self._queue(pipe, batch, counts)
                await pipe.execute()
            except asyncio.CancelledError:  # the loop is shutting down: its finalizer sends the batch again
                self._outbox[:0] = batch
                raise
            except Errors as exc:
                self._unreachable(exc)
                if batch:
                    self._write_failed(len(batch), exc)
            self._settled(batch)

    def _send_sync(self, batch: list[_Write]) -> None:
        counts, self._counts = self._counts, {}
        if self._skipping():
            self._skip(batch)
            return
        try:
            pipe = self._sync_client().pipeline(transaction=True)
            self._queue(pipe, batch, counts)
            pipe.execute()
        except Errors as exc:
            self._unreachable(exc)
            if batch:
                self._write_failed(len(batch), exc)
        finally:
            self._settled(batch)

    def _skip(self, batch: list[_Write]) -> None:
        """Drop a batch (and the counts) while Redis is down, without trying it again."""
        if batch:
            self._write_failed(len(batch), f"the cache at {redact(self.url)} was unreachable a moment ago")
        self._settled(batch)

    def _queue(self, pipe: Any, batch: list[_Write], counts: dict[tuple[str, str], list[int]]) -> None:
        for w in batch:
            e = w.entry
            expiry = {} if e.expires is None else {"pxat": max(1, int(e.expires * 1000))}
            pipe.set(self._ekey(e.key), w.doc, **expiry)
            pipe.sadd(f"{self.prefix}n:{e.flow}:{e.node}", e.key)
            if w.scope is not None and w.vector is not None:
                pipe.hset(f"{self.prefix}v:{w.scope}", e.key, w.vector.astype("<f4").tobytes())
        for (flow, node), values in counts.items():
            for field, n in zip(FIELDS, values, strict=True):
                if n:
                    pipe.hincrby(f"{self.prefix}c:{flow}:{node}", field, n)

    def _settled(self, batch: list[_Write]) -> None:
        for w in batch:
            if self._pending.get(w.entry.key) is w.doc:
                del self._pending[w.entry.key]
                self._pending_vectors.pop(w.entry.key, None)

    def _write_failed(self, n: int, why: object) -> None:
        self.errors += n
        self._warner.warn("write", "cache write failed, %d entr%s not cached: %s", n, "y" if n == 1 else "ies", why)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait until the puts and counts so far are written (those of this event loop's tasks)."""
        loop = asyncio.get_running_loop()
        if self._outbox or self._counts:
            self._kick(loop)
        while mine := [t for t in self._tasks if t.get_loop() is loop and not t.done()]:
            await asyncio.gather(*mine, return_exceptions=True)

    # -- maintenance (blocking, for the CLI) -------------------------------------------------
    def stats(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Per (flow, node): entries, bytes, hits, misses, writes, corrupt, hit_rate. Forgets keys Redis expired."""
        r = self._admin()
        with admin_errors(self.url):
            self._send_sync([])
            sizes, counters = scan_stats(r, self.prefix, flow)
        return merge_stats(sizes, counters)

    def clear(self, flow: str | None = None, node: str | None = None) -> int:
        """Delete the entries, vectors and counters of a flow / node (all under the prefix when both are None); return how many entries."""
        r = self._admin()
        with admin_errors(self.url):
            removed = clear_all(r, self.prefix) if flow is None and node is None else clear_some(r, self.prefix, flow, node)
        self._matrices = {}
        return removed

    def _admin(self) -> redis.Redis:
        if self.closed:
            raise RuntimeError(f"the cache at {redact(self.url)} is closed")
        if self._admin_client is None:
            self._admin_client = blocking_client(self.url, ADMIN_TIMEOUT_S)
        return self._admin_client

    # -- closing -----------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Write what is queued, then close this loop's client and the store."""
        await self.flush()
        held = self._clients.get(asyncio.get_running_loop())
        if held is not None:
            await held.closer.aclose()  # type: ignore[attr-defined]
        self.close()

    def close(self) -> None:
        """Close every client this store opened (those of loops still open); idempotent."""
        self.closed = True
        for client in (self._sync, self._admin_client):
            if client is not None:
                client.close()
        self._sync = self._admin_client = None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, held in list(self._clients.items()):
            closing = held.closer.aclose()  # type: ignore[attr-defined]
            if loop is running:
                self._spawn(closing)
            elif not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(closing)
            elif not loop.is_closed():  # running in another thread
                asyncio.run_coroutine_threadsafe(closing, loop)
            else:
                closing.close()


def _owner(doc: bytes) -> tuple[str | None, str | None]:
    """The flow and node a corrupt document claims, when it still parses that far."""
    try:
        parsed = json.loads(doc)
        flow, node = parsed.get("flow"), parsed.get("node")
    except (ValueError, AttributeError):
        return None, None
    return (flow, node) if isinstance(flow, str) and isinstance(node, str) else (None, None)
