"""SqliteCache: the default cache store, one SQLite file (WAL) under the state folder.

Reads run on the caller's thread, usually the event loop, against a dedicated read connection: a
primary-key SELECT in WAL mode does not wait for the writer and costs a few microseconds, far less
than a hop to a thread. Writes go to one daemon thread that commits them in batches, one transaction
each, so ``put`` never blocks and a killed process leaves whole entries or none. Entries still
waiting for the writer are kept in memory and served from there: a ``get`` right after a ``put`` hits.

``nearest`` is brute force: the scope's unit vectors as one numpy matrix (10k x 384 is 15 MB and one
matrix-vector product), loaded once and kept; vectors this process adds are appended in memory.
The file's schema and statements are in rillflow.runtime.cache_sqlite_db, the matrix in
rillflow.runtime.cache_vectors and the counters, stats and warnings both stores share in
rillflow.runtime.cache_stats; the names that moved there are re-exported from here.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rillflow.runtime.cache_sqlite_db import ADD_COUNTS, INSERT_ENTRY, INSERT_VECTOR, SCHEMA, SELECT_DOC, connect
from rillflow.runtime.cache_stats import COUNTERS, Warner, merge_stats
from rillflow.runtime.cache_store import CacheEntry, CorruptEntry, Counter, decode, encode
from rillflow.runtime.cache_vectors import ScopeMatrix, Vector, unit

__all__ = ["ADD_COUNTS", "COUNTERS", "COUNTER_FLUSH_S", "INSERT_ENTRY", "INSERT_VECTOR", "MATRIX_RECHECK_S", "MAX_BATCH", "SCHEMA",
           "SELECT_DOC", "ScopeMatrix", "SqliteCache", "Vector", "Warner", "log", "merge_stats", "unit"]

log = logging.getLogger("rillflow.cache")
T = TypeVar("T")

COUNTER_FLUSH_S = 1.0  # how long counts may wait in memory for the writer
MAX_BATCH = 512  # puts per transaction
MATRIX_RECHECK_S = 5.0  # how often a loaded matrix looks for rows written by other processes


@dataclass(slots=True)
class _Put:
    key: str
    doc: str
    row: tuple[Any, ...]
    vector: tuple[Any, ...] | None  # the vectors row
    indexed: _Indexed | None  # what nearest() sees until the row is committed


@dataclass(slots=True)
class _Indexed:
    scope: str
    vector: Vector
    expires: float | None


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    done: Future[Any]


class SqliteCache:
    """The cache in one SQLite file; safe to share between threads and event loops of one process,
    and between processes (SQLite locks the file). See the module docstring for the design."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.errors = 0  # entries that could not be written (disk full, read-only file)
        self.broken: str | None = None  # why the file could not be opened; the store then only misses
        self.closed = False
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # key -> doc, until the writer commits it
        self._pending_vectors: dict[str, _Indexed] = {}  # key -> its vector, until the writer commits it
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._matrices: dict[tuple[str, int], ScopeMatrix] = {}
        self._queue: queue.SimpleQueue[_Put | _Call | None] = queue.SimpleQueue()
        self._warner = Warner()
        self._read_lock = threading.Lock()
        try:
            self._wconn, self._rconn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            log.warning("cache disabled: cannot open %s: %s", self.path, self.broken)
            return
        self._thread = threading.Thread(target=self._write_loop, name=f"rill-cache-writer:{self.path.name}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- reads: on the caller's thread -------------------------------------------------------
    async def get(self, key: str, *, now: float | None = None) -> CacheEntry | None:
        """The live entry under ``key`` (live at ``now``, default the current time); None when absent, expired or corrupt."""
        return self._lookup(key, time.time() if now is None else now)

    def _lookup(self, key: str, at: float) -> CacheEntry | None:
        doc: str | bytes | None = self._pending.get(key)
        flow = node = None
        if doc is None:
            row = self._read(key)
            if row is None:
                return None
            doc, expires, flow, node = row
            if expires is not None and expires <= at:
                return None
        try:
            entry = decode(doc, key)
        except CorruptEntry as exc:
            log.warning("cache entry %s... of %s.%s is corrupt, ignored: %s", key[:12], flow or "?", node or "?", exc)
            if flow is not None and node is not None:
                self.count(flow, node, "corrupt")
            return None
        return None if entry.expires is not None and entry.expires <= at else entry

    def _read(self, key: str) -> tuple[bytes, float | None, str, str] | None:
        if self.broken or self.closed:
            return None
        try:
            with self._read_lock:
                return self._rconn.execute(SELECT_DOC, (key,)).fetchone()  # type: ignore[no-any-return]
        except sqlite3.Error as exc:  # locked past the short timeout, a damaged file: a miss
            self._warner.warn("read", "cache read of %s... failed (%s); treated as a miss", key[:12], exc)
            return None

    async def nearest(self, scope: str, vector: Any, threshold: float, *, include_expired: bool = False) -> tuple[CacheEntry, float] | None:
        """The entry indexed under ``scope`` most similar (cosine) to ``vector``, if at least ``threshold``."""
        query = unit(vector)
        matrix = None if query is None else self._matrix(scope, query.shape[0])
        if query is None or matrix is None:
            return None
        at = -np.inf if include_expired else time.time()
        for key, similarity in matrix.search(query, threshold, None if include_expired else at):
            entry = self._lookup(key, at)
            if entry is not None:
                return entry, similarity
        return None

    def _matrix(self, scope: str, dim: int) -> ScopeMatrix | None:
        matrix = self._matrices.get((scope, dim))
        if matrix is not None and time.monotonic() - matrix.loaded < MATRIX_RECHECK_S:
            return matrix
        if self.broken or self.closed:
            return matrix
        waiting = [(k, ix) for k, ix in list(self._pending_vectors.items()) if ix.scope == scope and ix.vector.shape[0] == dim]
        try:
            with self._read_lock:
                # data_version changes when any other connection (our writer, another process) commits
                version = self._rconn.execute("PRAGMA data_version").fetchone()[0]
                if matrix is not None and version == matrix.version:
                    matrix.loaded = time.monotonic()
                    return matrix
                rows = self._rconn.execute("SELECT key, vec, expires FROM vectors WHERE scope = ? AND dim = ?", (scope, dim)).fetchall()
        except sqlite3.Error as exc:
            self._warner.warn("read", "cache vector read failed (%s); treated as a miss", exc)
            return matrix
        fresh = ScopeMatrix.from_rows(rows, dim, version)
        for key, ix in waiting:  # taken before the SELECT: a row committed in between is in one or both
            fresh.add(key, ix.vector, ix.expires)
        self._matrices[(scope, dim)] = fresh
        return fresh

    # -- writes: queued for the writer thread ------------------------------------------------
    def put(self, entry: CacheEntry, vector: Any = None, scope: str | None = None) -> None:
        """Store (replace) ``entry`` without blocking; with ``vector`` and ``scope`` also index it for ``nearest``."""
        if self.broken or self.closed:
            self._write_failed(1, self.broken or "the cache is closed")
            return
        try:
            doc = encode(entry)
        except (TypeError, ValueError) as exc:  # a payload that is not JSON: not cached, the run goes on
            self._write_failed(1, f"entry {entry.key[:12]}... of {entry.flow}.{entry.node} is not JSON-able: {exc}")
            return
        row = (entry.key, entry.flow, entry.node, entry.node_type, entry.tenant, entry.created, entry.expires, len(doc.encode()), doc)
        vec = unit(vector) if vector is not None and scope is not None else None
        vrow = indexed = None
        if vec is not None and scope is not None:
            vrow = (entry.key, scope, vec.shape[0], vec.astype("<f4").tobytes(), entry.expires)
            indexed = self._pending_vectors[entry.key] = _Indexed(scope, vec, entry.expires)
            matrix = self._matrices.get((scope, vec.shape[0]))
            if matrix is not None:
                matrix.add(entry.key, vec, entry.expires)
        self._pending[entry.key] = doc
        self._queue.put(_Put(entry.key, doc, row, vrow, indexed))

    def count(self, flow: str, node: str, what: Counter) -> None:
        """Count a hit, miss, write or corrupt entry; written with the next batch (within a second)."""
        with self._lock:
            self._counts.setdefault((flow, node), [0, 0, 0, 0])[COUNTERS[what]] += 1

    def _write_failed(self, n: int, why: object) -> None:
        with self._lock:
            self.errors += n
        self._warner.warn("write", "cache write failed, %d entr%s not cached: %s", n, "y" if n == 1 else "ies", why)

    def _write_loop(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=COUNTER_FLUSH_S)]
            except queue.Empty:
                batch = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not self._run_batch(batch):
                return

    def _run_batch(self, batch: list[_Put | _Call | None]) -> bool:
        """Commit consecutive puts together, run calls in order; False at the stop sentinel."""
        puts: list[_Put] = []
        for op in batch:
            if isinstance(op, _Put):
                puts.append(op)
                continue
            self._commit(puts)
            puts = []
            if op is None:
                return False
            self._call_now(op)
        self._commit(puts)
        return True

    def _commit(self, puts: list[_Put]) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if not puts and not counts:
            return
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_ENTRY, [p.row for p in puts])
            conn.executemany(INSERT_VECTOR, [p.vector for p in puts if p.vector is not None])
            conn.executemany(ADD_COUNTS, [(f, n, *c) for (f, n), c in counts.items()])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            if puts:
                self._write_failed(len(puts), exc)
        finally:
            with self._lock:  # committed (or lost): the file answers from now on
                for p in puts:
                    if self._pending.get(p.key) is p.doc:
                        del self._pending[p.key]
                    if p.indexed is not None and self._pending_vectors.get(p.key) is p.indexed:
                        del self._pending_vectors[p.key]

    def _call_now(self, call: _Call) -> None:
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = call.fn(conn)
            conn.execute("COMMIT")
            call.done.set_result(result)
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            call.done.set_exception(exc)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one transaction on the writer thread, after every write queued so far."""
        if self.broken:
            raise OSError(f"cannot open the cache at {self.path}: {self.broken}")
        if self.closed:
            raise RuntimeError(f"the cache at {self.path} is closed")
        done: Future[T] = Future()
        self._queue.put(_Call(fn, done))
        return done.result()

    # -- maintenance: blocking, for the CLI and housekeeping ----------------------------------
    def stats(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Per (flow, node): entries, bytes, hits, misses, writes, corrupt, hit_rate (None before any lookup)."""
        where, args = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
        sizes, counters = self._call(lambda conn: (
            conn.execute(f"SELECT flow, node, COUNT(*), COALESCE(SUM(size), 0) FROM entries {where} GROUP BY flow, node", args).fetchall(),
            conn.execute(f"SELECT flow, node, hits, misses, writes, corrupt FROM counters {where}", args).fetchall(),
        ))
        return merge_stats(sizes, counters)

    def clear(self, flow: str | None = None, node: str | None = None) -> int:
        """Delete the entries, vectors and counters of a flow / node (all when both are None); return how many entries."""
        conds = [(col, val) for col, val in (("flow", flow), ("node", node)) if val is not None]
        where = " AND ".join(f"{col} = ?" for col, _ in conds) or "1"
        args = tuple(val for _, val in conds)

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute(f"DELETE FROM vectors WHERE key IN (SELECT key FROM entries WHERE {where})", args)
            if not conds:
                conn.execute("DELETE FROM vectors")
            conn.execute(f"DELETE FROM counters WHERE {where}", args)
            return conn.execute(f"DELETE FROM entries WHERE {where}", args).rowcount

        removed = self._call(delete)
        self._matrices = {}
        return removed

    def purge_expired(self, now: float | None = None) -> int:
        """Delete entries (and vectors) expired at ``now`` (default: the current time); return how many entries."""
        at = time.time() if now is None else now

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM vectors WHERE expires IS NOT NULL AND expires <= ?", (at,))
            return conn.execute("DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?", (at,)).rowcount

        removed = self._call(delete)
        self._matrices = {}
        return removed

    async def flush(self) -> None:
        """Wait until every put and count so far is committed."""
        await asyncio.to_thread(self.flush_sync)

    def flush_sync(self) -> None:
        """``flush`` for threads without an event loop."""
        if self.broken is None and not self.closed:
            self._call(lambda conn: None)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file; idempotent."""
        if self.closed:
            return
        atexit.unregister(self.close)
        if self.broken is None:
            self._queue.put(None)
            self._thread.join()
            self._wconn.close()
            with self._read_lock:
                self._rconn.close()
        self.closed = True

    def __repr__(self) -> str:
        return f"SqliteCache({str(self.path)!r})"
