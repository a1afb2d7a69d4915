"""`scripted`: a model stand-in with exact timing and failures, for testing runtime logic.

It is a test instrument, never a feature's only test: real features are tested on real models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, model_validator

from rillflow.nodes.base import Emit, Node, NodeConfig, Output, OutputField, RunContext, Wired, register
from rillflow.runtime.errors import NodeError
from rillflow.runtime.policies import Duration, ErrorKind


@register("scripted")
class ScriptedNode(Node):
    """Stream ``text`` (split after each space) or ``tokens`` with delays; fail or hang on cue."""

    class Config(NodeConfig):
        text: Wired[str] | None = Field(None, description="Text to stream, one word (with its space) per chunk.")
        tokens: list[str] | None = Field(None, description="Exact chunks to stream.")
        delay: Duration = Field(0.0, description="Pause before each chunk after the first.")
        first_delay: Duration = Field(0.0, description="Pause before the first chunk.")
        fail_attempts: list[int] = Field(default_factory=list, description="Attempts (1-based) that fail.")
        fail_after: int = Field(0, ge=0, description="Chunks streamed before a failing attempt fails.")
        error: ErrorKind = Field("server", description="Error kind of a failing attempt.")
        hang: bool = Field(False, description="Never answer (until the runtime's deadline or cancellation).")

        @model_validator(mode="after")
        def _one_source(self) -> ScriptedNode.Config:
            if self.text is None and self.tokens is None:
                raise ValueError("give 'text' or 'tokens'")
            return self

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {"text": OutputField("string", stream=True, description="The streamed text.")}

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        import asyncio  # here, not at the top: `rill validate` never pays for importing asyncio

        tokens = inputs["tokens"] if inputs["tokens"] is not None else _words(str(inputs["text"]))
        failing = ctx.attempt in inputs["fail_attempts"]
        if inputs["hang"]:
            await asyncio.Event().wait()
        if inputs["first_delay"]:
            await asyncio.sleep(inputs["first_delay"])
        delay = inputs["delay"]
        for i, token in enumerate(tokens):
            if failing and i == inputs["fail_after"]:
                raise NodeError(inputs["error"], f"scripted failure on attempt {ctx.attempt}")
            if i and delay:
                await asyncio.sleep(delay)
            yield token
        if failing:
            raise NodeError(inputs["error"], f"scripted failure on attempt {ctx.attempt}")
        ctx.usage(output_tokens=len(tokens), model="scripted")
        yield Output(text="".join(tokens))


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + ([words[-1]] if words[-1] else [])
