"""The contract every cache store keeps, and the one on-disk/on-wire form of an entry.

An entry is JSON (never pickle: a cache must not be a way to run code) carrying its own key hash and
a SHA-256 checksum of its payload. A store that reads an entry whose key or checksum does not match,
or that does not parse, treats it as a miss, logs a warning and counts it: a cache can make a run
faster, never make it fail. Writes never block the event loop.

Stores: rillflow.runtime.cache_sqlite.SqliteCache (the default, one file under the state folder) and
rillflow.runtime.cache_redis.RedisCache (several `rill serve` workers sharing one cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger("rillflow.cache")

FORMAT = 1  # bump when the entry layout changes: older entries become misses, not errors
Counter = Literal["hit", "miss", "write", "corrupt"]


@dataclass(slots=True)
class CacheEntry:
    """One cached node result. ``payload`` is JSON-able: {"outputs": {...}, "chunks": {field: [str]}, ...}."""

    key: str  # hex SHA-256 of the node's content key
    flow: str
    node: str
    node_type: str
    tenant: str | None
    created: float  # Unix time
    expires: float | None  # Unix time; None = never
    payload: dict[str, Any] = field(default_factory=dict)


def encode(entry: CacheEntry) -> str:
    """The entry as one JSON document with its checksum (what stores write)."""
    body = _canonical(entry.payload)
    doc = {
        "format": FORMAT, "key": entry.key, "flow": entry.flow, "node": entry.node, "node_type": entry.node_type,
        "tenant": entry.tenant, "created": entry.created, "expires": entry.expires,
        "checksum": hashlib.sha256(body.encode("utf-8")).hexdigest(), "payload": body,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class CorruptEntry(ValueError):
    """A stored entry that does not parse or whose key or checksum does not match."""


def decode(text: str | bytes, expected_key: str) -> CacheEntry:
    """Parse and verify a stored entry; raise CorruptEntry when it cannot be trusted."""
    try:
        doc = json.loads(text)
        body = doc["payload"]
        if doc.get("format") != FORMAT:
            raise CorruptEntry(f"entry format {doc.get('format')!r}, expected {FORMAT}")
        if doc["key"] != expected_key:
            raise CorruptEntry("entry key does not match the key it is stored under")
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != doc["checksum"]:
            raise CorruptEntry("entry checksum does not match its payload")
        payload = json.loads(body)
        return CacheEntry(key=doc["key"], flow=doc["flow"], node=doc["node"], node_type=doc["node_type"], tenant=doc["tenant"],
                          created=float(doc["created"]), expires=None if doc["expires"] is None else float(doc["expires"]),
                          payload=payload)
    except CorruptEntry:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:  # deep nesting, a huge int
        raise CorruptEntry(f"entry does not parse: {type(exc).__name__}") from None


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


class CacheStore(Protocol):
    """What the runtime needs from a cache. ``get``/``nearest`` may await I/O; ``put``/``count`` never block."""

    async def get(self, key: str, *, now: float | None = None) -> CacheEntry | None:
        """The live entry under ``key``; None when absent, expired (unless now is given as 0), or corrupt (warned, counted)."""
        ...

    def put(self, entry: CacheEntry, vector: Any = None, scope: str | None = None) -> None:
        """Store (replace) an entry without blocking; a later ``get`` in this process sees it at once.
        With ``vector`` (a unit float32 numpy array) and ``scope``, also index it for ``nearest``."""
        ...

    async def nearest(self, scope: str, vector: Any, threshold: float, *, include_expired: bool = False) -> tuple[CacheEntry, float] | None:
        """The entry indexed under ``scope`` whose vector is most similar (cosine) to ``vector``, if at least ``threshold``."""
        ...

    def count(self, flow: str, node: str, what: Counter) -> None:
        """Count a hit, miss, write or corrupt entry for `rill cache stats` (never blocks)."""
        ...

    def stats(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Per (flow, node): entries, bytes, hits, misses, writes, corrupt, hit_rate. Blocking: call off the loop."""
        ...

    def clear(self, flow: str | None = None, node: str | None = None) -> int:
        """Delete entries (and their vectors) of a flow / node, or all; return how many. Blocking."""
        ...

    async def flush(self) -> None:
        """Wait until every put and count so far is durably written."""
        ...

    def close(self) -> None: ...
