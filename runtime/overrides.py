"""Per-node overrides of a test case: a fixed output, fixed chunks, a forced failure, a delay.

An override wraps the node in the case's copy of the plan, so the runtime treats it like the real
node: its retry, timeout, fallback and on_fail policies apply to a forced failure, its consumers read
fixed chunks as a stream, its events and trace spans are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from rillflow.nodes.base import Chunk, Emit, Node, Output, RunContext
from rillflow.runtime.errors import NodeError
from rillflow.runtime.plan import PlanNode
from rillflow.runtime.testfile import Override


class Delegate(Node):
    """A node that stands in for another one: same id, config and environment; everything it does not
    change goes to the node it wraps."""

    def __init__(self, inner: Node) -> None:
        super().__init__(inner.id, inner.config, inner.flow_dir, inner.env)
        self.inner = inner
        self.type_name = inner.type_name  # type: ignore[misc]  # an instance attribute shadows the class's on purpose

    def prepare(self) -> None:
        self.inner.prepare()

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        return await self.inner.cache_identity(ctx, inputs)

    def cacheable(self, outputs: dict[str, Any]) -> bool:
        return self.inner.cacheable(outputs)

    def semantic_text(self, inputs: dict[str, Any]) -> str | None:
        return self.inner.semantic_text(inputs)

    def nondeterministic(self) -> str | None:
        check = getattr(self.inner, "nondeterministic", None)
        return check() if check is not None else None


class OverriddenNode(Delegate):
    def __init__(self, pn: PlanNode, override: Override) -> None:
        super().__init__(pn.node)
        self.override = override
        self.fields = tuple(pn.outputs)
        self.main = "text" if "text" in pn.outputs else (pn.stream_outputs[0] if pn.stream_outputs else self.fields[0])
        self.streamed = frozenset(pn.stream_outputs)
        self.failures = 0  # a case's plan copy is its own, so this counts that case's attempts

    def prepare(self) -> None:
        if not self.override.replaces:  # a node that never runs loads no model
            self.inner.prepare()

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        if self.override.replaces:
            return {"override": self.override.model_dump(mode="json")}
        return await self.inner.cache_identity(ctx, inputs)

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        override = self.override
        if override.delay:
            await asyncio.sleep(override.delay)
        failure = override.failure
        if failure is not None and (failure.times is None or self.failures < failure.times):
            self.failures += 1
            raise NodeError(failure.kind, failure.message)
        if override.chunks is not None:
            field = self.main if self.main in self.streamed else next(iter(self.streamed))
            for text in override.chunks:
                yield Chunk(text, field)
            yield self._output({field: "".join(override.chunks)})
        elif override.output is not None:
            out = override.output
            values = dict(out) if isinstance(out, dict) and set(out) <= set(self.fields) and len(self.fields) > 1 else {self.main: out}
            for field, value in values.items():
                if field in self.streamed and isinstance(value, str):
                    yield Chunk(value, field)
            yield self._output(values)
        else:
            async for emit in self.inner.run(ctx, inputs):
                yield emit

    def _output(self, values: dict[str, Any]) -> Output:
        return Output({name: values.get(name) for name in self.fields})
