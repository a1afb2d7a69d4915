"""The compiled, immutable plan of a flow: what the runtime runs, as many times as requests come."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rillflow.nodes.base import FlowEnv, Node, NodeConfig, OutputField
from rillflow.runtime.errors import Diagnostic
from rillflow.runtime.policies import CachePolicy, MapPolicy, OnFail, RetryPolicy, TimeoutPolicy
from rillflow.runtime.spec import FlowSpec, InputSpec


@dataclass(frozen=True, slots=True)
class StreamEdge:
    """A reference along which chunks flow as they are produced."""

    source: str
    field: str
    target: str  # node id, or "outputs"
    target_field: str


@dataclass(frozen=True, slots=True)
class PlanNode:
    id: str
    type: str
    node: Node
    config: NodeConfig
    inputs: Mapping[str, Any]  # config fields (policies excluded) holding literals, Ref or Interp
    wired: frozenset[str]  # names of inputs that contain references
    stream_inputs: frozenset[tuple[str | int, ...]]  # input locations fed by a chunk stream
    deps: tuple[str, ...]  # nodes whose outputs (or skip state) this node waits for
    stream_deps: frozenset[str]  # deps read only as chunk streams: this node may start when they start
    dependants: tuple[str, ...]
    outputs: Mapping[str, OutputField]
    stream_outputs: tuple[str, ...]  # output fields that stream
    when: Callable[..., Any] | None
    when_source: str | None
    timeout: TimeoutPolicy | None
    retry: RetryPolicy | None
    on_fail: OnFail | None
    fallback: str | None
    map: MapPolicy | None
    fallback_only: bool  # runs only when the node it stands in for fails
    cache: CachePolicy | None = None  # None: never cached (mode off, or no policy)

    def __repr__(self) -> str:  # config and inputs may hold resolved ${env.*} secrets: never print them
        return f"PlanNode(id={self.id!r}, type={self.type!r}, deps={list(self.deps)})"


@dataclass(frozen=True)
class Plan:
    name: str
    path: str
    description: str | None
    spec: FlowSpec
    inputs: Mapping[str, InputSpec]
    outputs: Mapping[str, Any]  # output name -> Ref / Interp / literal
    output_streams: frozenset[str]  # outputs whose value streams to the caller
    nodes: Mapping[str, PlanNode]
    order: tuple[str, ...]  # topological order of the nodes a run executes
    stream_edges: frozenset[StreamEdge]
    concurrency: int | None
    warnings: tuple[Diagnostic, ...] = ()
    secrets: frozenset[str] = field(default_factory=frozenset)
    env: FlowEnv = field(default_factory=FlowEnv)
    #: Mutable per-plan runtime state (e.g. "prepared"): a plan is compiled once and run many times.
    state: dict[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:  # the spec and node configs hold resolved secrets: never print them
        return f"Plan(name={self.name!r}, nodes={list(self.order)})"
