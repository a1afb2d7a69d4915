"""Sentence embeddings (sentence-transformers), loaded offline once per process, run in worker threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from rillflow.nodes.model_files import embedder_path
from rillflow.runtime.context import RESOURCES
from rillflow.runtime.errors import NodeError


class Embedder:
    """One loaded sentence-transformers model. ``embed`` is blocking: call it through ``ctx.to_thread``."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self._model = model
        self.dim: int = int(model.get_embedding_dimension())
        # torch modules are not documented as safe for concurrent forward passes: one batch at a time.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> list[list[float]]:
        """Unit-length vectors (cosine similarity = dot product), one per text, in order."""
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return [list(map(float, v)) for v in vectors]

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0]


def _load(name: str, flow_dir: str) -> Embedder:
    folder = embedder_path(name, flow_dir)
    # Never let a library reach for a model hub (none is reachable; a probe would hang on timeouts).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise NodeError("config", "sentence-transformers is not installed: pip install sentence-transformers") from None
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise NodeError("config", f"embedder '{name}' could not be loaded from {folder}: {exc} (HF_HUB_OFFLINE=1 is set)") from None
    return Embedder(name, model)


def load_embedder(name: str, flow_dir: str = ".") -> Embedder:
    """The process-wide embedder for ``name`` (loaded on first use, shared by every flow)."""
    return RESOURCES.get(("embedder", name, flow_dir if name not in _packaged() else ""), lambda: _load(name, flow_dir))


def _packaged() -> frozenset[str]:
    from rillflow.nodes.model_files import PACKAGED_EMBEDDERS

    return frozenset(PACKAGED_EMBEDDERS)
