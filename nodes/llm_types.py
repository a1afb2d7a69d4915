"""What the llm node and its backends exchange: generation parameters and the end of a generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class GenerateParams:
    max_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: Any = None  # llama.cpp grammar (structured output on local models)
    json_mode: bool = False  # remote: ask for structured output (response_format)
    json_schema: dict[str, Any] | None = None  # remote: the schema the server may constrain decoding to
    extra: dict[str, Any] = field(default_factory=dict)


class Finish(NamedTuple):
    """How a generation ended. ``reason``: stop, length, cancelled. Token counts are the provider's
    (or the local tokenizer's); ``estimated`` marks counts we had to estimate (a server sent no usage)."""

    reason: str
    input_tokens: int
    output_tokens: int
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    estimated: bool = False


def cost(price: Any, input_tokens: int, output_tokens: int) -> float | None:
    """Cost in the price table's currency, from a ``Price`` (per million tokens), or None without one."""
    if price is None:
        return None
    return round(float(input_tokens * price.input + output_tokens * price.output) / 1_000_000, 10)
