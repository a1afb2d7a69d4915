"""Run a flow from synchronous code and collect the result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rillflow.runtime.events import Event
from rillflow.runtime.plan import Plan
from rillflow.runtime.scheduler import run


@dataclass
class RunResult:
    status: str  # ok | responded | failed | cancelled
    outputs: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "responded")


async def collect(plan: Plan, inputs: dict[str, Any] | None = None, **options: Any) -> RunResult:
    """Run to the end; ``options`` go to ``run`` (tenant, cache, trace, run_id, listeners)."""
    events = [event async for event in run(plan, inputs, **options)]
    last = events[-1]
    if last.type == "run_finished":
        return RunResult(last.data["status"], last.data["outputs"], events)
    return RunResult("cancelled" if last.data["error"]["kind"] == "cancelled" else "failed", {}, events, last.data["error"])


def run_sync(plan: Plan, inputs: dict[str, Any] | None = None) -> RunResult:
    """Run to the end and return outputs and events (for scripts and notebooks without a loop)."""
    return asyncio.run(collect(plan, inputs))
