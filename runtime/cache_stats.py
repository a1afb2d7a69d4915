"""What both cache stores report: their per-node counters, the stats rows built from them, and warnings.

COUNTERS gives each counter (hit, miss, write, corrupt) its slot in the lists the stores accumulate
before writing them out, FIELDS its name in a stats row; ``merge_stats`` joins the stores' (flow, node, entries, bytes) and
(flow, node, hits, misses, writes, corrupt) rows into the dicts ``rill cache stats`` prints. A Warner
logs a failure that recurs on every call (a full disk, a Redis that is down) once per interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("rillflow.cache")
COUNTERS: dict[str, int] = {"hit": 0, "miss": 1, "write": 2, "corrupt": 3}
FIELDS = ("hits", "misses", "writes", "corrupt")  # the counters' names in stats rows (and Redis hashes), in slot order


class Warner:
    """Log a recurring failure (a full disk, a down server) once per ``every`` seconds, not once per call."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def warn(self, what: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(what, -self.every) >= self.every:
            self._last[what] = now
            log.warning(message, *args)


def merge_stats(sizes: list[tuple[str, str, int, int]], counters: list[tuple[str, str, int, int, int, int]]) -> list[dict[str, Any]]:
    """Rows of (flow, node, entries, bytes) and (flow, node, hits, misses, writes, corrupt) as one dict per (flow, node)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(flow: str, node: str) -> dict[str, Any]:
        return rows.setdefault((flow, node), {"flow": flow, "node": node, "entries": 0, "bytes": 0, "hits": 0, "misses": 0,
                                              "writes": 0, "corrupt": 0, "hit_rate": None})

    for flow, node, entries, size in sizes:
        row(flow, node).update(entries=int(entries), bytes=int(size))
    for flow, node, hits, misses, writes, corrupt in counters:
        row(flow, node).update(hits=int(hits), misses=int(misses), writes=int(writes), corrupt=int(corrupt))
    for r in rows.values():
        looked = r["hits"] + r["misses"]
        r["hit_rate"] = r["hits"] / looked if looked else None
    return [rows[k] for k in sorted(rows)]
