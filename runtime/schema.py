"""JSON Schema of the flow format, generated from the pydantic models (never written by hand)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from rillflow.nodes.base import node_types
from rillflow.runtime.spec import ID_PATTERN, FlowSpec

SCHEMA_ID = "https://rillflow.dev/schema/flow-v1.json"


def flow_json_schema() -> dict[str, Any]:
    """The schema editors use for completion (`# yaml-language-server: $schema=...`)."""
    variants = []
    for name, node_cls in sorted(node_types().items()):
        literal: Any = Literal[name]  # a type built at run time: mypy versions disagree on how to type it
        variants.append(
            create_model(
                f"{node_cls.__name__}Config",
                __base__=node_cls.Config,
                __doc__=(node_cls.__doc__ or node_cls.Config.__doc__ or "").strip() or None,
                type=(literal, Field(description=f"Node type '{name}'.")),
            )
        )
    node_union = Annotated[Union[tuple(variants)], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    flow_model = create_model(
        "Flow",
        __base__=FlowSpec,
        __doc__=FlowSpec.__doc__,
        nodes=(dict[Annotated[str, Field(pattern=ID_PATTERN)], node_union], Field(description="Node id -> node config.")),  # type: ignore[valid-type]
    )
    schema = flow_model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "rillflow flow (version 1)"
    return schema
