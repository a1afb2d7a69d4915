"""`split`: cut a long text into passages for a `map` (summarise, extract or classify part by part).

It uses the same splitter as `rill ingest` (``rillflow.nodes.chunking``): passages never cross a
Markdown heading, break at paragraph and sentence ends where they can, and carry the heading path
above them, so a per-part prompt knows which section it reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field, model_validator

from rillflow.nodes.base import Emit, Node, NodeConfig, Output, OutputField, RunContext, Wired, register
from rillflow.nodes.chunking import chunk_lines, markdown_lines, text_lines
from rillflow.runtime.errors import NodeError


@register("split")
class SplitNode(Node):
    """Outputs ``passages`` ([{index, text, heading}]) and their ``count``."""

    class Config(NodeConfig):
        text: Wired[str] = Field(description="The text to cut, e.g. ${inputs.document}.")
        format: Literal["markdown", "text"] = Field("markdown", description="markdown keeps headings as section boundaries.")
        chunk_size: int = Field(1500, ge=100, le=100_000, description="Most characters per passage.")
        overlap: int = Field(0, ge=0, description="Characters repeated from the end of the previous passage.")
        max_passages: int = Field(64, ge=1, le=10_000, description="More passages than this fails the node (kind bad_request): a bound on cost.")

        @model_validator(mode="after")
        def _overlap_below_size(self) -> SplitNode.Config:
            if self.overlap >= self.chunk_size:
                raise ValueError(f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})")
            return self

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "passages": OutputField("list", description="[{index, text, heading}] in document order; index counts from 1."),
            "count": OutputField("integer", description="How many passages."),
        }

    config: Config

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        text = inputs["text"]
        if not isinstance(text, str):
            raise NodeError("bad_request", f"split needs text, got {type(text).__name__}")
        lines = markdown_lines(text)[0] if self.config.format == "markdown" else text_lines(text)
        passages = chunk_lines(lines, chunk_size=self.config.chunk_size, overlap=self.config.overlap)
        if len(passages) > self.config.max_passages:
            raise NodeError("bad_request", f"the text makes {len(passages)} passages, more than max_passages ({self.config.max_passages}): "
                            "send a shorter text or raise max_passages")
        yield Output(passages=[{"index": i, "text": p.text, "heading": p.heading} for i, p in enumerate(passages, 1)], count=len(passages))
