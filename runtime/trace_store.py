"""Where run traces live: one SQLite file, written on a thread of its own, redacted before it is written.

The recorder calls ``TraceStore.submit`` on the event loop; that only puts the trace on a bounded
queue (a full queue drops the trace, counts it in ``dropped`` and warns at most once a minute), so a
slow or broken disk can never slow a run down. One daemon writer thread redacts each trace
(rillflow.runtime.redact: secrets always, PII unless ``pii=False``), writes batches in one
transaction each, and hands the redacted record to the OTLP exporter when there is one. Any failure
there (disk full, a locked or corrupt file, a path that is a folder) is counted in ``errors`` and
logged, never raised: tracing must not fail a run. Reads (``list_runs``, ``get_run``, feedback,
``prune``) block and are meant for the CLI and for worker threads of a server.

A record (what ``get_run`` returns and the exporter receives) is built and read back by
rillflow.runtime.trace_records; the file (schema, opening, transactions, lookup by id or prefix) is
rillflow.runtime.trace_db, created 0600 in a 0700 folder: it holds what users asked. The names that
moved there (TraceStoreError, AmbiguousRunId, MIN_PREFIX, to_record...) are re-exported from here.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rillflow.runtime.redact import Redactor
from rillflow.runtime.state import env_duration, trace_db_path
from rillflow.runtime.trace_db import (
    MIN_PREFIX,
    SCHEMA_VERSION,
    AmbiguousRunId,
    TraceStoreError,
    connect,
    find_run,
    insert_run,
    transaction,
)
from rillflow.runtime.trace_model import RunTrace
from rillflow.runtime.trace_records import RUN_COLUMNS, SPAN_COLUMNS, run_dict, span_dict, to_record

if TYPE_CHECKING:
    from rillflow.runtime.trace_otlp import OtlpExporter

__all__ = ["BATCH", "MAX_COMMENT", "MIN_PREFIX", "PRUNE_EVERY_S", "RUN_COLUMNS", "SCHEMA_VERSION", "SPAN_COLUMNS", "WARN_EVERY_S",
           "AmbiguousRunId", "TraceStore", "TraceStoreError", "to_record"]

log = logging.getLogger("rillflow.trace")

BATCH = 64  # traces per transaction: one fsync for many runs under load
PRUNE_EVERY_S = 600.0
WARN_EVERY_S = 60.0
MAX_COMMENT = 2000
_STOP = object()  # put by close(): the writer finishes what is before it, then exits


class TraceStore:
    """Stores redacted run traces in SQLite without ever blocking the event loop.

    Args:
        path: The SQLite file (created 0600, its missing folders 0700).
        retention_s: Runs older than this many seconds are deleted; None keeps them.
        max_runs: Only the newest this many runs are kept; None keeps all.
        pii: Replace personal data (e-mail, phone, card...) with placeholders; secrets go regardless.
        max_chars: Longest string kept in a trace.
        exporter: Also send each redacted run over OTLP (closed with the store).
        queue_size: Traces waiting to be written before new ones are dropped.
    """

    def __init__(self, path: str | Path, *, retention_s: float | None = 30 * 86400, max_runs: int | None = 100_000,
                 pii: bool = True, max_chars: int = 4000, exporter: OtlpExporter | None = None, queue_size: int = 1000) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_runs = max_runs
        self.exporter = exporter
        self.redactor = Redactor(pii=pii, max_chars=max_chars)
        self.dropped = 0
        self.errors = 0
        self.written = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)  # RunTrace, a flush Event, or _STOP
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._conn: sqlite3.Connection | None = None  # the writer thread's own
        self._last_prune = 0.0
        self._warned: dict[str, float] = {}
        atexit.register(self.close)

    @classmethod
    def from_env(cls, path: str | Path | None = None, *, export: bool = True) -> TraceStore:
        """A store configured by RILL_TRACE_DB (or the state folder), RILL_TRACE_RETENTION, RILL_TRACE_MAX_RUNS,
        RILL_TRACE_PII and, when ``export`` and OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, an OTLP exporter."""
        pii = os.environ.get("RILL_TRACE_PII", "").strip().lower() or "redact"
        if pii not in ("redact", "keep"):
            raise ValueError(f"RILL_TRACE_PII={pii!r}: write 'redact' (the default) or 'keep'")
        exporter = None
        if export and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            from rillflow.runtime.trace_otlp import OtlpExporter

            exporter = OtlpExporter()
        return cls(path or trace_db_path(), retention_s=env_duration("RILL_TRACE_RETENTION", 30 * 86400),
                   max_runs=_env_count("RILL_TRACE_MAX_RUNS", 100_000), pii=pii == "redact", exporter=exporter)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing (submit on the loop; everything else on the writer thread) --------------------------

    def submit(self, trace: RunTrace) -> None:
        """Queue a trace for writing; never blocks. A full queue (or a closed store) drops it."""
        if self._thread is None and not self._closed:
            self._start()
        try:
            if not self._closed:
                self._queue.put_nowait(trace)
                return
        except queue.Full:
            pass
        self.dropped += 1
        self._warn("dropped", "trace store %s: dropped the trace of run %s (queue full or store closed; %d dropped so far)",
                   self.path, trace.run_id, self.dropped)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every trace submitted so far is written (or failed); False when ``timeout`` passed first."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer thread and shut the exporter down. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
                self._thread.join(timeout)
            except queue.Full:
                self._warn("error", "trace store %s: closing with traces still queued (the writer is stuck)", self.path)
        if self.exporter is not None:
            self.exporter.shutdown()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rill-trace-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            traces = [item for item in batch if isinstance(item, RunTrace)]
            if traces:
                self._write(traces)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in batch):
                self._drop_conn()
                return

    def _write(self, traces: list[RunTrace]) -> None:
        records = []
        for trace in traces:
            try:
                records.append(to_record(trace, self.redactor))
            except Exception as exc:  # a trace the recorder built wrong: lose it, keep the others
                self._failed(1, exc)
        try:
            conn = self._writer_conn()
            with transaction(conn):
                for record in records:
                    insert_run(conn, record)
            self.written += len(records)
        except Exception as exc:
            self._failed(len(records), exc)
            self._drop_conn()
        else:
            if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                self._prune_quietly(conn)
        if self.exporter is not None:
            self._export(self.exporter, records)

    def _export(self, exporter: OtlpExporter, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                exporter.export(record)
            except Exception as exc:  # export() promises not to raise; a bug there must not stop the writer
                self._warn("export", "trace store %s: OTLP export failed: %s: %s", self.path, type(exc).__name__, exc)

    def _writer_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, create=True)
            self._prune_quietly(self._conn)  # on start: a store reopened after weeks sheds its old runs first
        return self._conn

    def _prune_quietly(self, conn: sqlite3.Connection) -> None:
        try:
            self._prune(conn)
        except Exception as exc:  # retention can wait ten minutes; the runs being written cannot
            self.errors += 1
            self._warn("prune", "trace store %s: could not delete old runs: %s: %s", self.path, type(exc).__name__, exc)

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _failed(self, count: int, exc: BaseException) -> None:
        self.errors += count
        self._warn("error", "trace store %s: could not write %d trace(s): %s: %s (%d errors so far)",
                   self.path, count, type(exc).__name__, exc, self.errors)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is None or now - last >= WARN_EVERY_S:  # a full disk must not flood the log
            self._warned[kind] = now
            log.warning(message, *args)

    # -- retention -------------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete runs (with their spans and feedback) past retention or beyond max_runs now; return how many."""
        with self._reader() as conn:
            return 0 if conn is None else self._prune(conn)

    def _prune(self, conn: sqlite3.Connection) -> int:
        self._last_prune = time.monotonic()
        with transaction(conn):
            doomed: set[str] = set()
            if self.retention_s is not None:
                doomed.update(r[0] for r in conn.execute("SELECT run_id FROM runs WHERE started_at < ?", (time.time() - self.retention_s,)))
            if self.max_runs is not None:
                doomed.update(r[0] for r in conn.execute(
                    "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT -1 OFFSET ?", (self.max_runs,)))
            ids = sorted(doomed)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for table in ("spans", "feedback", "runs"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", chunk)
        return len(ids)

    # -- reading (blocking: call from the CLI or a worker thread) ---------------------------------

    def list_runs(self, *, limit: int = 50, flow: str | None = None, status: str | None = None, tenant: str | None = None,
                  since: float | None = None) -> list[dict[str, Any]]:
        """Runs newest first, without their spans; filters combine. ``since`` is Unix time."""
        filters = {"flow = ?": flow, "status = ?": status, "tenant = ?": tenant, "started_at >= ?": since}
        used = {clause: value for clause, value in filters.items() if value is not None}
        where = f"WHERE {' AND '.join(used)}" if used else ""
        with self._reader() as conn:
            if conn is None:
                return []
            rows = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} ORDER BY started_at DESC, run_id DESC LIMIT ?",
                                (*used.values(), max(0, limit))).fetchall()
        return [run_dict(row) for row in rows]

    def get_run(self, run_id: str, *, tenant: str | None = None) -> dict[str, Any] | None:
        """A run with its spans (by start) and feedback, by id or a unique prefix of 6+ characters.

        None when unknown or (with ``tenant``) another tenant's; AmbiguousRunId when a prefix matches several.
        """
        with self._reader() as conn:
            if conn is None:
                return None
            row = find_run(conn, run_id, tenant)
            if row is None:
                return None
            run = run_dict(row)
            spans = conn.execute(f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans WHERE run_id = ? ORDER BY start_ms, attempt, rowid",
                                 (run["run_id"],)).fetchall()
            feedback = conn.execute("SELECT created, score, comment, tenant FROM feedback WHERE run_id = ? ORDER BY created, rowid",
                                    (run["run_id"],)).fetchall()
        run["spans"] = [span_dict(s) for s in spans]
        run["feedback"] = [dict(f) for f in feedback]
        return run

    def add_feedback(self, run_id: str, score: int, comment: str | None = None, *, tenant: str | None = None) -> bool:
        """Record +1 / -1 (and a redacted comment) on a run; False when the run is unknown or another tenant's."""
        if isinstance(score, bool) or score not in (1, -1):
            raise ValueError(f"feedback score must be 1 (up) or -1 (down), got {score!r}")
        text = None if comment is None else self.redactor.redact_text(comment[:MAX_COMMENT])
        with self._reader() as conn:
            if conn is None:
                return False
            row = find_run(conn, run_id, tenant)
            if row is None:
                return False
            with transaction(conn):
                conn.execute("INSERT INTO feedback (run_id, created, score, comment, tenant) VALUES (?, ?, ?, ?, ?)",
                             (row["run_id"], time.time(), score, text, row["tenant"]))
        return True

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        """A connection of its own for this call (None when there is no file yet); sqlite errors become TraceStoreError."""
        if not self.path.exists():
            yield None
            return
        try:
            with closing(connect(self.path, create=False)) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise TraceStoreError(f"{self.path}: cannot use the trace store: {exc}") from exc


def _env_count(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("off", "none", "0"):
        return None
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"{name}={raw!r}: write a number of runs, or 'off'") from None
