"""`rill cache ...` (filled in by the cache-store work)."""

from __future__ import annotations

from typing import Any


def add_cache_commands(app: Any) -> None:
    """Register the `cache` command group on the CLI."""
