"""The optional ``judge`` assertion: a model the test file names scores an output against criteria.

The judge is a one-node flow compiled from the test file's ``judge: {model: ...}``, so it is any model a
flow can use (local llama.cpp or an OpenAI-compatible server) and its call goes through the case's
cassette like every other model call: recorded once, replayed offline, deterministic in CI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rillflow.runtime.cassette import Cassette, RecordedNode
from rillflow.runtime.plan import Plan
from rillflow.runtime.testfile import JudgeConfig

NODE = "rill_judge"
SYSTEM = ("You grade an answer against criteria. Reply with JSON only: {\"score\": a number from 0 (fails the criteria) "
          "to 1 (fully meets them), \"reason\": one short sentence}.")
SCHEMA = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}, "reason": {"type": "string"}},
          "required": ["score", "reason"]}


def judge_flow(config: JudgeConfig) -> dict[str, Any]:
    return {"version": 1, "name": "judge",
            "inputs": {"criteria": {"type": "string"}, "answer": {"type": "string"}},
            "models": {"judge": config.model},
            "nodes": {NODE: {"type": "llm", "model": "judge", "max_tokens": config.max_tokens, "system": SYSTEM, "json_schema": SCHEMA,
                             "prompt": "Criteria: ${inputs.criteria}\n\nAnswer to grade:\n${inputs.answer}"}},
            "outputs": {"verdict": "${" + NODE + ".json}"}}


def compile_judge(config: JudgeConfig, test_path: Path) -> Plan:
    """The judge's plan; FlowError when its model section is wrong (reported at the test file's ``judge:``)."""
    from rillflow.runtime.compiler import compile_flow
    from rillflow.runtime.yaml_source import SourceMap

    return compile_flow(judge_flow(config), SourceMap(str(test_path), ""), flow_dir=str(test_path.parent))


class Judge:
    def __init__(self, plan: Plan, cassette: Cassette | None, prepared: Callable[[Plan], Awaitable[None]]) -> None:
        nodes = dict(plan.nodes)
        if cassette is not None:
            pn = nodes[NODE]
            nodes[NODE] = dataclasses.replace(pn, node=RecordedNode(pn.node, cassette))
        self.plan = dataclasses.replace(plan, nodes=nodes, state={})
        self.prepared = prepared

    async def score(self, criteria: str, answer: str) -> tuple[float, str]:
        from rillflow.runtime.sync import collect

        await self.prepared(self.plan)
        result = await collect(self.plan, {"criteria": criteria, "answer": answer})
        if not result.ok:
            error = result.error or {}
            return 0.0, f"the judge model failed: {error.get('kind')}: {error.get('message')}"
        verdict = result.outputs.get("verdict") or {}
        return float(verdict.get("score", 0.0)), str(verdict.get("reason", ""))
