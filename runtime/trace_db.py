"""The trace file: its schema, how it is opened, and how a run is written to it or found in it.

``connect`` creates the SQLite file 0600 in a 0700 folder (it holds what users asked), puts it in WAL
mode and checks that its schema is one this rillflow reads; ``transaction`` is the explicit
BEGIN IMMEDIATE / COMMIT that every write goes through, so a read never holds a write lock.
``insert_run`` writes a record (rillflow.runtime.trace_records), replacing the spans of a run written
before; ``find_run`` looks a run up by id or, as git does, by a unique prefix of MIN_PREFIX or more
characters. TraceStoreError and AmbiguousRunId, which the trace store raises, are defined here.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rillflow.runtime.errors import RillError
from rillflow.runtime.trace_records import RUN_COLUMNS, SPAN_COLUMNS, to_json

SCHEMA_VERSION = 1
MIN_PREFIX = 6
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, trace_id TEXT NOT NULL, root_span_id TEXT, flow TEXT NOT NULL, tenant TEXT,
    started_at REAL NOT NULL, duration_ms REAL, status TEXT NOT NULL, error_kind TEXT, error_message TEXT, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, cache_hits INTEGER, inputs TEXT, outputs TEXT, span_count INTEGER);
CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_flow ON runs (flow);
CREATE TABLE IF NOT EXISTS spans (
    run_id TEXT NOT NULL, span_id TEXT NOT NULL, node TEXT NOT NULL, node_type TEXT, attempt INTEGER, start_ms REAL,
    end_ms REAL, status TEXT, attributes TEXT, events TEXT);
CREATE INDEX IF NOT EXISTS spans_run_id ON spans (run_id);
CREATE TABLE IF NOT EXISTS feedback (run_id TEXT NOT NULL, created REAL NOT NULL, score INTEGER NOT NULL, comment TEXT, tenant TEXT);
CREATE INDEX IF NOT EXISTS feedback_run_id ON feedback (run_id);
"""


class TraceStoreError(RillError):
    """The trace file cannot be read (corrupt, written by a newer rillflow, not a file)."""


class AmbiguousRunId(TraceStoreError, LookupError):
    """A run-id prefix matches more than one run; ``matches`` lists some of them."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(f"run id '{prefix}' is ambiguous: it starts {', '.join(matches)}; give more characters")
        self.matches = matches


def insert_run(conn: sqlite3.Connection, record: dict[str, Any]) -> None:
    """Write ``record`` and its spans (inside the caller's transaction); a run written before is replaced."""
    values = [to_json(record[c]) if c in ("inputs", "outputs") else record[c] for c in RUN_COLUMNS]
    conn.execute("DELETE FROM spans WHERE run_id = ?", (record["run_id"],))  # a resubmitted run replaces its spans
    conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})", values)
    conn.executemany(
        f"INSERT INTO spans (run_id, {', '.join(SPAN_COLUMNS)}) VALUES ({', '.join('?' * (len(SPAN_COLUMNS) + 1))})",
        [(record["run_id"], *(to_json(s[c]) if c in ("attributes", "events") else s[c] for c in SPAN_COLUMNS)) for s in record["spans"]],
    )


def find_run(conn: sqlite3.Connection, run_id: str, tenant: str | None) -> sqlite3.Row | None:
    """The ``runs`` row of ``run_id`` or of the one run it is a prefix of (``tenant``'s only, when given)."""
    scope, args = ("AND tenant = ?", (tenant,)) if tenant is not None else ("", ())
    row: sqlite3.Row | None = conn.execute(f"SELECT * FROM runs WHERE run_id = ? {scope}", (run_id, *args)).fetchone()
    if row is not None or len(run_id) < MIN_PREFIX:
        return row
    # A prefix, as git takes one. U+10FFFF sorts after every character a run id can hold.
    rows = conn.execute(f"SELECT * FROM runs WHERE run_id >= ? AND run_id < ? {scope} ORDER BY run_id LIMIT 5",
                        (run_id, run_id + "\U0010ffff", *args)).fetchall()
    if len(rows) > 1:
        raise AmbiguousRunId(run_id, [r["run_id"] for r in rows])
    return rows[0] if rows else None


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open the trace file (creating it, private, when ``create``) with its schema in place."""
    if create:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite gives -wal and -shm the file's mode
    # isolation_level=None: transactions are explicit (transaction()), so a read never holds a write lock.
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=True)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        conn.executescript(_SCHEMA)
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if version is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version > SCHEMA_VERSION:
            raise TraceStoreError(f"{path}: trace schema {version} is newer than this rillflow reads ({SCHEMA_VERSION}): "
                                  "upgrade rillflow or point RILL_TRACE_DB elsewhere")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back when the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
