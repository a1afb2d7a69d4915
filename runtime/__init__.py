"""rillflow's runtime: ``load_flow`` compiles a YAML flow, ``run`` streams its events.

Attributes load lazily so that `rill validate` never imports the scheduler.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_flow", "run", "run_sync"]


def __getattr__(name: str) -> Any:
    if name == "load_flow":
        from rillflow.runtime.compiler import load_flow

        return load_flow
    if name == "run":
        from rillflow.runtime.scheduler import run

        return run
    if name == "run_sync":
        from rillflow.runtime.sync import run_sync

        return run_sync
    raise AttributeError(f"module 'rillflow.runtime' has no attribute {name!r}")
