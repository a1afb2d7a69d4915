"""`rill trace ...` (filled in by the trace-store work)."""

from __future__ import annotations

from typing import Any


def add_trace_commands(app: Any) -> None:
    """Register the `trace` command group on the CLI."""
