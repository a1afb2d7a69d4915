"""The SQLite cache file: its schema, the statements the store's hot paths run, and how it is opened.

``connect`` creates the file 0600 in a 0700 folder (entries hold what users asked), puts it in WAL mode
with its tables and returns two connections: the writer, which the store's writer thread commits
batches on, and the reader, whose short busy timeout turns a locked file into a quick miss instead
of a stalled event loop. The statements are rillflow.runtime.cache_sqlite.SqliteCache's.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(key TEXT PRIMARY KEY, flow TEXT NOT NULL, node TEXT NOT NULL, node_type TEXT NOT NULL,
    tenant TEXT, created REAL NOT NULL, expires REAL, size INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_flow_node ON entries(flow, node);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires);
CREATE TABLE IF NOT EXISTS vectors(key TEXT PRIMARY KEY, scope TEXT NOT NULL, dim INTEGER NOT NULL, vec BLOB NOT NULL, expires REAL);
CREATE INDEX IF NOT EXISTS vectors_scope ON vectors(scope);
CREATE TABLE IF NOT EXISTS counters(flow TEXT NOT NULL, node TEXT NOT NULL, hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0, writes INTEGER NOT NULL DEFAULT 0, corrupt INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(flow, node));
"""
# CAST: a doc that is not valid UTF-8 comes back as bytes and fails in decode() (a corrupt entry),
# instead of failing the fetch itself.
SELECT_DOC = "SELECT CAST(doc AS BLOB), expires, flow, node FROM entries WHERE key = ?"
INSERT_ENTRY = "INSERT OR REPLACE INTO entries(key, flow, node, node_type, tenant, created, expires, size, doc) VALUES (?,?,?,?,?,?,?,?,?)"
INSERT_VECTOR = "INSERT OR REPLACE INTO vectors(key, scope, dim, vec, expires) VALUES (?,?,?,?,?)"
ADD_COUNTS = """INSERT INTO counters(flow, node, hits, misses, writes, corrupt) VALUES (?,?,?,?,?,?)
    ON CONFLICT(flow, node) DO UPDATE SET hits = hits + excluded.hits, misses = misses + excluded.misses,
    writes = writes + excluded.writes, corrupt = corrupt + excluded.corrupt"""


def connect(path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """The writer and the reader connection of the cache file at ``path``, created private, in WAL mode, with its schema."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():  # private from the first byte: entries hold what users asked
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        writer.executescript(SCHEMA)
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.05)
    except BaseException:
        writer.close()
        raise
    return writer, reader
