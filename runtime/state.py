"""Where rillflow keeps its local state (traces, cache, checkpoints) and the operator's settings for it.

The state folder is ``.rill`` in the working directory (the project), or ``RILL_STATE_DIR``. It is
created private (0700): traces and cache entries hold what users asked and what models answered.
"""

from __future__ import annotations

import os
from pathlib import Path

from rillflow.runtime.policies import parse_duration


def state_dir() -> Path:
    """The state folder, created (0700) on first use."""
    path = Path(os.environ.get("RILL_STATE_DIR") or ".rill")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def trace_db_path() -> Path:
    return Path(os.environ.get("RILL_TRACE_DB") or state_dir() / "traces.db")


def cache_url() -> str:
    """``RILL_CACHE_URL``: ``redis://host:port/db`` or ``sqlite:///path``; default: SQLite in the state folder."""
    return os.environ.get("RILL_CACHE_URL") or f"sqlite:///{state_dir() / 'cache.db'}"


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def env_duration(name: str, default: float | None) -> float | None:
    """A duration setting such as RILL_TRACE_RETENTION=30d; 'off' or '0' means no limit (None)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    raw = raw.strip().lower()
    if raw in ("off", "none", "0"):
        return None
    if raw.endswith("d") and raw[:-1].replace(".", "", 1).isdigit():
        return float(raw[:-1]) * 86400
    try:
        return float(parse_duration(raw))
    except ValueError:
        raise ValueError(f"{name}={raw!r}: write a duration such as 30d, 12h or 90m, or 'off'") from None
