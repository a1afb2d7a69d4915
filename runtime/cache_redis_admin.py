"""Blocking maintenance of the Redis cache's keyspace, for ``rill cache stats`` and ``rill cache clear``.

Both walk the keys under the prefix with SCAN (never KEYS, which would block the server) on a
blocking client that RedisCache opens with the longer admin timeouts. ``scan_stats`` reads each
node's key set (forgetting the keys Redis has expired since) and its counter hash; ``clear_all``
deletes the cache's own keys under the prefix (never rate-limit state sharing it), ``clear_some`` one flow's or node's entries, their vectors and
counters. The layout they walk is described in rillflow.runtime.cache_redis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import redis

from rillflow.runtime.cache_redis_client import as_text
from rillflow.runtime.cache_stats import FIELDS


def scan_stats(r: redis.Redis, prefix: str, flow: str | None) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, str, int, int, int, int]]]:
    """The (flow, node, entries, bytes) and (flow, node, hits, misses, writes, corrupt) rows under ``prefix``, for merge_stats."""
    pattern, flows = _glob(prefix), _glob(flow) if flow else "*"
    sizes = [_node_size(r, prefix, name) for name in r.scan_iter(match=f"{pattern}n:{flows}:*", count=1000)]
    counters: list[tuple[str, str, int, int, int, int]] = []
    for name in r.scan_iter(match=f"{pattern}c:{flows}:*", count=1000):
        got = {as_text(k): int(v) for k, v in r.hgetall(name).items()}
        hits, misses, writes, corrupt = (got.get(f, 0) for f in FIELDS)
        counters.append((*_owner_of(prefix, name, "c:"), hits, misses, writes, corrupt))
    return sizes, counters


def _node_size(r: redis.Redis, prefix: str, name: bytes) -> tuple[str, str, int, int]:
    keys = [k.decode() for k in r.smembers(name)]  # type: ignore[union-attr]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.strlen(f"{prefix}e:{key}")
    lengths = pipe.execute()
    gone = [k for k, n in zip(keys, lengths, strict=True) if not n]
    if gone:
        r.srem(name, *gone)
    return (*_owner_of(prefix, name, "n:"), len(keys) - len(gone), sum(lengths))


def _owner_of(prefix: str, name: bytes, kind: str) -> tuple[str, str]:
    flow, _, node = name.decode()[len(prefix) + len(kind):].partition(":")  # flow names have no ':'
    return flow, node


CACHE_KINDS = ("e:", "n:", "c:", "v:")  # the layout in rillflow.runtime.cache_redis


def clear_all(r: redis.Redis, prefix: str) -> int:
    """Delete the cache's own keys under ``prefix`` (entries, node sets, counters, vectors); return how many
    were entries. Only those four kinds: rate-limit state (``rill:limits:``) may share the prefix and database."""
    removed = 0
    for kind in CACHE_KINDS:
        for batch in _batches(r.scan_iter(match=f"{_glob(prefix)}{kind}*", count=1000)):
            deleted = int(r.delete(*batch))
            removed += deleted if kind == "e:" else 0
    return removed


def clear_some(r: redis.Redis, prefix: str, flow: str | None, node: str | None) -> int:
    """Delete the entries, vectors and counters of ``flow`` / ``node`` under ``prefix``; return how many entries."""
    scopes = list(r.scan_iter(match=f"{_glob(prefix)}v:*", count=1000))
    removed = 0
    for name in r.scan_iter(match=f"{_glob(prefix)}n:{_glob(flow) if flow else '*'}:{_glob(node) if node else '*'}", count=1000):
        owner = _owner_of(prefix, name, "n:")
        if (node is not None and owner[1] != node) or (flow is not None and owner[0] != flow):
            continue  # the glob matched across a ':' in a node name
        keys = [k.decode() for k in r.smembers(name)]  # type: ignore[union-attr]
        for batch in _batches(keys):
            removed += int(r.delete(*(f"{prefix}e:{k}" for k in batch)))
            for scope in scopes:
                r.hdel(scope, *batch)
        r.delete(name, f"{prefix}c:{owner[0]}:{owner[1]}")
    return removed


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _batches(items: Iterable[Any], size: int = 500) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
