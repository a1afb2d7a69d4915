"""Per-node policies a flow declares in YAML: durations, timeout, retry, on_fail, map.

They live apart from the runtime so that loading and validating a flow stays import-light.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from rillflow.runtime.errors import ERROR_KINDS, RETRYABLE_KINDS

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """'500ms', '30s', '10m', '1h', '1d' or a number of seconds -> float seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '500ms', '30s', '10m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"invalid duration {str(value)[:40]!r}: write a number of seconds or text like '500ms', '30s', '10m'")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"}],
                    "description": "Seconds, or text such as '500ms', '30s', '10m', '1h', '1d'."}),
]

ErrorKind = Literal[ERROR_KINDS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeoutPolicy(Strict):
    """Deadlines for one node attempt."""

    total: Duration | None = Field(None, description="Deadline for the whole attempt.")
    first_chunk: Duration | None = Field(None, description="Deadline for a streaming node's first chunk.")


class RetryPolicy(Strict):
    """Retry a failed attempt with exponential backoff and full jitter."""

    attempts: int = Field(2, ge=1, le=20, description="Total attempts, the first included.")
    backoff: Duration = Field(0.5, description="Delay before the second attempt; doubles after each.")
    max_backoff: Duration = Field(8.0, description="Upper bound of one delay.")
    jitter: bool = Field(True, description="Randomise each delay in [0, delay] so clients do not retry in lockstep.")
    on: tuple[ErrorKind, ...] = Field(RETRYABLE_KINDS, description="Error kinds worth retrying.")


class Respond(Strict):
    respond: str = Field(description="End the run with this answer.")


OnFail = Literal["fail", "skip"] | Respond


class MapPolicy(Strict):
    """Run the node once per item of a list; ${item} names the current item."""

    over: Any = Field(description="A reference to a list, e.g. ${split.chunks}.")
    concurrency: int = Field(4, ge=1, le=256, description="Items running at once.")
    on_item_fail: Literal["fail", "skip"] = Field("fail", description="'skip' keeps going and leaves null for a failed item.")


class SemanticTier(Strict):
    """Match a new question against earlier answers of the same flow, node and tenant by meaning."""

    threshold: float = Field(0.92, ge=0.5, le=1.0, description="Least cosine similarity of the questions for a hit.")
    embedder: str = Field("all-MiniLM-L6-v2", description="A sentence-transformers model name or path for the questions.")


class OfflineAnswers(Strict):
    """When every model path of the node fails, serve the closest cached answer, labelled as such."""

    threshold: float = Field(0.8, ge=0.5, le=1.0, description="Least cosine similarity of the questions to serve a cached answer.")
    embedder: str = Field("all-MiniLM-L6-v2", description="A sentence-transformers model name or path for the questions.")


CacheMode = Literal["read_write", "read", "refresh", "off"]


def _cache_shorthand(value: Any) -> Any:
    """`cache: 10m` (a ttl), `cache: true` (the defaults), `cache: false` / `cache: off` (no caching)."""
    if value is True:
        return {}
    if value is False or value == "off":
        return {"mode": "off"}
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return {"ttl": value}
    return value


class CachePolicy(Strict):
    """Reuse a node's earlier outputs for the same content key (node type, resolved config and inputs,
    model identity and sampling, template, collection version, tenant)."""

    ttl: Duration | None = Field(86400.0, description="How long an entry lives; null for no expiry.")
    mode: CacheMode = Field("read_write", description="read_write, read (never write), refresh (never read, write), off.")
    unseeded: bool = Field(False, description="Cache an llm that samples without a seed (its answers vary run to run).")
    semantic: SemanticTier | None = Field(None, description="llm only: also hit on a question close in meaning to an earlier one.")
    offline: OfflineAnswers | None = Field(None, description="llm only: when it and its fallbacks fail, serve the closest cached answer.")


Cache = Annotated[CachePolicy, BeforeValidator(_cache_shorthand)]


class Defaults(Strict):
    """Policies every node gets unless it sets its own."""

    timeout: Duration | TimeoutPolicy | None = None
    retry: RetryPolicy | None = None
    on_fail: OnFail | None = None
    cache: Cache | None = Field(None, description="Cache policy for the node types where caching pays (llm, retrieve, python).")


def normalise_timeout(value: float | TimeoutPolicy | None) -> TimeoutPolicy | None:
    if value is None or isinstance(value, TimeoutPolicy):
        return value
    return TimeoutPolicy(total=value)

