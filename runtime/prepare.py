"""Open what a plan's nodes need (models, embedders, collections) before its first run.

Loading is slow (seconds) and can fail for reasons only the operator can fix (a model not installed,
a Qdrant folder locked by another process), so it happens once per plan, before any request is
served: `rill serve` calls it at start-up, `rill run` before the run; a run of an unprepared plan
prepares it first. Resources themselves are shared per process (``RESOURCES``), so two flows naming
the same model load it once.
"""

from __future__ import annotations

import asyncio

from rillflow.runtime.context import executor
from rillflow.runtime.errors import NodeError
from rillflow.runtime.plan import Plan, PlanNode


class PrepareError(Exception):
    """A node could not open what it needs; ``problems`` maps node id -> a message for the operator."""

    def __init__(self, flow: str, problems: dict[str, str]) -> None:
        self.flow = flow
        self.problems = problems
        lines = "; ".join(f"node '{node}': {message}" for node, message in problems.items())
        super().__init__(f"flow '{flow}' cannot start: {lines}")


async def prepare(plan: Plan) -> None:
    """Prepare every node of ``plan`` (concurrently, in worker threads); idempotent."""
    if plan.state.get("prepared"):
        return
    loop = asyncio.get_running_loop()
    nodes = list(plan.nodes.values())
    results = await asyncio.gather(*(loop.run_in_executor(executor(), _prepare_node, pn, plan.env.flow_dir) for pn in nodes),
                                   return_exceptions=True)
    problems: dict[str, str] = {}
    for pn, result in zip(nodes, results, strict=True):
        if isinstance(result, NodeError):
            problems[pn.id] = result.message
        elif isinstance(result, BaseException):
            problems[pn.id] = f"{type(result).__name__}: {result}"
    if problems:
        raise PrepareError(plan.name, problems)
    plan.state["prepared"] = True


def _prepare_node(pn: PlanNode, flow_dir: str) -> None:
    pn.node.prepare()
    tier = pn.cache.semantic or pn.cache.offline if pn.cache is not None else None
    if tier is not None:  # the semantic cache tiers embed questions: load that model now, not on the first request
        from rillflow.nodes.embedder import load_embedder

        load_embedder(tier.embedder, flow_dir)


async def close_resources() -> None:
    """Close what prepared plans opened (remote clients, models, Qdrant folders), so the next process can open them."""
    from rillflow.nodes.llm_remote import close_clients
    from rillflow.runtime.context import RESOURCES

    await close_clients()
    await asyncio.to_thread(RESOURCES.close)


def prepare_sync(plan: Plan) -> None:
    asyncio.run(prepare(plan))
