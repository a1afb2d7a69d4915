"""`map`: run a node once per item of a list, a bounded number at a time, reporting each as it lands."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rillflow.runtime.attempts import AttemptsFailed, run_attempts
from rillflow.runtime.errors import NodeError

if TYPE_CHECKING:
    from rillflow.runtime.plan import PlanNode
    from rillflow.runtime.scheduler import Run


async def run_map(run: Run, pn: PlanNode) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Outputs are lists in item order; progress events carry each item's value as it finishes."""
    assert pn.map is not None
    items = run.resolver.value(pn.map.over, ("map", "over"), None)
    if not isinstance(items, list):
        raise AttemptsFailed(NodeError("config", f"map of node '{pn.id}' needs a list, got {type(items).__name__}"), 1)
    total = len(items)
    results: list[dict[str, Any] | None] = [None] * total
    limit = asyncio.Semaphore(pn.map.concurrency)
    done = [0, 0]  # items finished, attempts made

    async def one(index: int, item: Any) -> None:
        error: dict[str, str] | None = None
        async with limit:
            try:
                values, attempts, _ = await run_attempts(run, pn, run.resolver.inputs_for(pn, item), index)
            except AttemptsFailed as failed:
                if pn.map.on_item_fail != "skip":  # type: ignore[union-attr]
                    raise AttemptsFailed(NodeError(failed.error.kind, f"item {index}: {failed.error.message}"), failed.attempts) from None
                values, attempts = None, failed.attempts
                error = {"kind": failed.error.kind, "message": failed.error.message}
        results[index] = values
        done[0] += 1
        done[1] += attempts
        data: dict[str, Any] = {"done": done[0], "total": total, "message": f"{done[0]}/{total}", "index": index, "value": values}
        if error is not None:
            data["error"] = error
        run.emit("node_progress", pn.id, data)

    tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    outputs = {field: [r[field] if r is not None else None for r in results] for field in pn.outputs}
    return outputs, done[1], None
