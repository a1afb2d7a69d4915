"""`static`: a fixed value (or a reshaped bundle of references) as a node output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from rillflow.nodes.base import Emit, Node, NodeConfig, Output, OutputField, RunContext, ValueType, Wired, register
from rillflow.runtime.refs import Interp, Ref


def literal_type(value: Any) -> ValueType:
    """The output type of a literal config value, for the compiler's edge checks."""
    if isinstance(value, (Ref,)):
        return "any"
    if isinstance(value, (str, Interp)):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "any"


@register("static")
class StaticNode(Node):
    """Output ``value``: a literal, or a structure whose leaves may be references."""

    class Config(NodeConfig):
        value: Wired[Any] = Field(description="Any value; references inside it are resolved per run.")

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {"value": OutputField(literal_type(config.value))}

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        yield Output(value=inputs["value"])
