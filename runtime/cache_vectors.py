"""The vector index both cache stores search for ``nearest``: brute-force cosine over unit vectors.

``unit`` turns whatever an embedder returned into a flat unit float32 array (or None for an empty or
zero vector), so cosine similarity is a dot product. A ScopeMatrix holds one scope's vectors of one
dimension as one numpy matrix (10k x 384 is 15 MB and one matrix-vector product) with each row's
expiry; rows added in this process wait in a dict until the next search. The stores load and
refresh matrices from their own storage (rillflow.runtime.cache_sqlite, rillflow.runtime.cache_redis).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


def unit(vector: Any) -> Vector | None:
    """``vector`` as a flat unit float32 array; None for an empty or zero vector."""
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(arr))
    if arr.size == 0 or not np.isfinite(norm) or norm == 0.0:
        return None
    return (arr / norm).astype(np.float32, copy=False)


class ScopeMatrix:
    """One scope's vectors of one dimension, for brute-force cosine search (dot products of unit vectors).

    Rows added with ``add`` wait in a dict and are folded into the matrix at the next search, so a
    put never copies the matrix and a search right after a put sees the new row."""

    def __init__(self, keys: list[str], vectors: Vector, expires: npt.NDArray[np.float64], version: object = None) -> None:
        self.keys = keys
        self.vectors = vectors
        self.expires = expires  # +inf: never
        self.version = version  # what the loader needs to tell whether the source changed
        self.loaded = time.monotonic()
        self._added: dict[str, tuple[Vector, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_rows(cls, rows: list[tuple[str, bytes, float | None]], dim: int, version: object = None) -> ScopeMatrix:
        """From (key, raw little-endian float32 bytes, expires) rows; rows of another length are skipped."""
        rows = [r for r in rows if len(r[1]) == 4 * dim]
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").astype(np.float32).reshape(len(rows), dim)
        expires = np.array([np.inf if r[2] is None else r[2] for r in rows], dtype=np.float64)
        return cls([r[0] for r in rows], vectors, expires, version)

    def add(self, key: str, vector: Vector, expires: float | None) -> None:
        with self._lock:
            self._added[key] = (vector, np.inf if expires is None else expires)

    def search(self, query: Vector, threshold: float, now: float | None) -> list[tuple[str, float]]:
        """(key, similarity) of rows at least ``threshold`` similar and, unless ``now`` is None, live at ``now``; best first."""
        self._fold()
        if not self.keys:
            return []
        sims = self.vectors @ query
        mask = sims >= threshold
        if now is not None:
            mask &= self.expires > now
        found = np.flatnonzero(mask)
        found = found[np.argsort(-sims[found], kind="stable")]
        return [(self.keys[i], float(sims[i])) for i in found]

    def drop(self, keys: list[str]) -> None:
        """Forget rows (of entries found gone)."""
        self._fold()
        gone = set(keys)
        with self._lock:
            keep = np.array([k not in gone for k in self.keys], dtype=bool)
            self.keys = [k for k, kept in zip(self.keys, keep, strict=True) if kept]
            self.vectors, self.expires = self.vectors[keep], self.expires[keep]

    def _fold(self) -> None:
        with self._lock:
            if not self._added:
                return
            added, self._added = self._added, {}
            self.keys = self.keys + list(added)
            self.vectors = np.vstack([self.vectors, np.stack([v for v, _ in added.values()])])
            self.expires = np.concatenate([self.expires, np.array([e for _, e in added.values()], dtype=np.float64)])
