"""Shared test helpers: compile inline flows, run them, read their events."""

from __future__ import annotations

from typing import Any

from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.plan import Plan
from rillflow.runtime.sync import RunResult, collect


def flow(body: str, **env: str) -> Plan:
    """Compile a flow; the header (version, name) is implied."""
    return load_flow_text("version: 1\nname: t\n" + body, env=env or None)


async def run_flow(plan: Plan, inputs: dict[str, Any] | None = None, **options: Any) -> RunResult:
    return await collect(plan, inputs, **options)


def types(result: RunResult, node: str | None = None) -> list[str]:
    return [e.type for e in result.events if node is None or e.node == node]
