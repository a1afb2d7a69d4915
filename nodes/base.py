"""The node contract: everything a node type is, may do and may raise, written once.

A **node type** is a class registered under a name (``@register("prompt")``) with

* ``Config``: a pydantic model (``extra="forbid"``, frozen) of what the YAML may say. Fields that may
  hold a reference are annotated ``Wired[T]`` (or ``Streamed[T]`` when the node can consume a chunk
  stream as it arrives). Everything about a config is checked when the flow loads; a node never sees
  an invalid config.
* ``outputs(config)``: the output fields it produces, each with a type and whether it streams. The
  compiler checks every ``${node.field}`` against this.
* ``check(config, ctx)`` (optional): extra load-time checks (template syntax, allowlists).
* ``async run(ctx, inputs)``: an async generator. ``inputs`` is the config as a plain dict with every
  reference resolved (a ``Streamed`` field fed by a stream arrives as an ``AsyncIterator[str]``). It
  may yield ``Progress``, ``Chunk`` and ``Signal`` items in any number (a plain ``str`` is a chunk of
  the ``text`` output: the cheapest form, for the per-token path), and must end with exactly one ``Output``
  holding a value for each declared output field (a streamed field's value is its joined text).

What is cheap and what is heavy: a node instance is built once per compiled plan and shared by every
run of it, so ``__init__`` may prepare (compile a template, import a function). Heavy resources
(models, clients, embedders) are loaded once per *process* through ``ctx.resources`` and never per
run. Blocking calls go through ``await ctx.to_thread(fn, ...)`` so the event loop never stalls.

What a node may raise: ``NodeError(kind, message)`` for failures the flow's policies understand
(``kind`` decides retry and fallback; the message is shown to end users, so no secrets and no stack
traces). Any other exception is reported as kind ``internal``. ``asyncio.CancelledError`` must be
let through: the run was cancelled. A node never retries or times out by itself: the runtime owns
the one retry loop and the one deadline (reliability notes, section 1.5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from rillflow.runtime.policies import Cache, Duration, MapPolicy, OnFail, RetryPolicy, TimeoutPolicy
from rillflow.runtime.refs import REF_JSON_SCHEMA, Interp, Ref

T = TypeVar("T")

ValueType = Literal["string", "integer", "number", "boolean", "list", "object", "any"]


@dataclass(frozen=True, slots=True)
class AcceptsRef:
    """Annotation marker: this config field may hold a reference instead of a literal."""

    stream: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def keep_refs(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
            return value if isinstance(value, (Ref, Interp)) else inner(value)

        return core_schema.no_info_wrap_validator_function(keep_refs, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), REF_JSON_SCHEMA]}


Wired = Annotated[T, AcceptsRef()]
Streamed = Annotated[T, AcceptsRef(stream=True)]


@dataclass(frozen=True, slots=True)
class OutputField:
    type: ValueType = "any"
    stream: bool = False
    description: str = ""


class NodeConfig(BaseModel):
    """Fields every node has: its type and the runtime policies (DESIGN.md section 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    type: str = Field(description="The node type, e.g. prompt, python, static.")
    description: str | None = Field(None, description="What this node is for (shown in graphs and traces).")
    when: str | None = Field(None, description="Jinja2 condition over inputs and node outputs; false skips the node.")
    timeout: Duration | TimeoutPolicy | None = Field(None, description="Deadline of one attempt: seconds, or {total, first_chunk}.")
    retry: RetryPolicy | None = None
    fallback: str | None = Field(None, description="Id of a node whose outputs stand in when this one fails.")
    on_fail: OnFail | None = Field(None, description="fail (default), skip, or {respond: message}.")
    map: MapPolicy | None = Field(None, description="Run once per item of a list; ${item} is the current item.")
    cache: Cache | None = Field(None, description="Reuse earlier outputs: {ttl, mode, unseeded, semantic, offline}, or a ttl such as 10m.")


POLICY_FIELDS = frozenset(NodeConfig.model_fields) - {"type"}


class Chunk(NamedTuple):
    """A piece of a streamed output field. (A NamedTuple: immutable, and built several times faster
    than a frozen dataclass on the per-chunk path that bench/runtime.py measures.)"""

    text: str
    field: str = "text"


class Progress(NamedTuple):
    done: int
    total: int | None = None
    message: str = ""


SignalType = Literal["retract", "guardrail_flagged", "route_chosen", "model_queued"]


class Signal(NamedTuple):
    """A node-level event beyond chunks and progress: a guardrail verdict, a retraction of text
    already streamed, a routing decision, a wait for a shared model. Emitted as an event of ``type``."""

    type: SignalType
    data: dict[str, Any]


class NotCacheable(Exception):
    """Raised by ``Node.cache_identity``: this call's outputs must not be cached (the reason says why)."""


class Output(dict[str, Any]):
    """The node's final values, one per declared output field."""


Emit = str | Chunk | Progress | Signal | Output


class RunContext(Protocol):
    """What the runtime gives a running node (implemented by rillflow.runtime.context)."""

    run_id: str
    node_id: str
    attempt: int
    #: The tenant the run is for, set by the caller (API key, server), never by flow input or prompt.
    tenant: str | None

    def progress(self, done: int, total: int | None = None, message: str = "") -> None: ...

    def usage(self, *, input_tokens: int = 0, output_tokens: int = 0, model: str | None = None, cost: float | None = None) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def resources(self) -> Any:
        """Process-wide shared resources: ``ctx.resources.get(key, factory)`` loads once."""

    async def to_thread(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


@dataclass(frozen=True)
class FlowEnv:
    """What a node knows of the flow it is in: its name, its folder and the models and collections it
    declares (validated ``runtime.spec`` objects, with ``${env.*}`` already substituted)."""

    name: str = ""
    flow_dir: str = "."
    models: Mapping[str, Any] = field(default_factory=dict)
    collections: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # model specs hold resolved API keys: never print them
        return f"FlowEnv(name={self.name!r}, models={sorted(self.models)}, collections={sorted(self.collections)})"


class CheckContext(Protocol):
    """What a node's load-time ``check`` may use to report problems at exact positions."""

    flow_dir: str
    env: FlowEnv

    def error(self, field_loc: tuple[str | int, ...], code: str, message: str, *, offset: int = 0, template_line: int | None = None) -> None: ...


class Node:
    """Base class of node types. Subclasses set ``Config`` and implement ``run``."""

    Config: ClassVar[type[NodeConfig]] = NodeConfig
    type_name: ClassVar[str] = ""
    #: Whether a flow-level ``defaults: {cache: ...}`` applies to this type: true where a run costs
    #: far more than a cache lookup (model calls, searches, user code); a node's own ``cache:`` always applies.
    worth_caching: ClassVar[bool] = False
    #: Whether runs of this type call a model or a store: `rill test --record` records them in a case's
    #: cassette and later runs replay them offline (docs/testing.md).
    records: ClassVar[bool] = False

    def __init__(self, node_id: str, config: NodeConfig, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        self.id = node_id
        self.config = config
        self.flow_dir = flow_dir
        self.env = env or FlowEnv(flow_dir=flow_dir)

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {"value": OutputField()}

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        """Extra load-time checks; report through ``ctx.error``."""

    def prepare(self) -> None:
        """Open what this node needs (models, embedders, collections) before the first run: blocking,
        called once per plan in a worker thread. Raise ``NodeError("config", ...)`` when something is
        missing; the message names what and how to fix it. Loads go through ``RESOURCES`` (once per process)."""

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        """What besides the type, resolved inputs and tenant decides this node's outputs, for its
        cache key: a model's identity and sampling, a template's hash, a collection's version. Any
        JSON value. Raise ``NotCacheable(reason)`` when outputs must not be reused (unseeded sampling)."""
        return None

    def cacheable(self, outputs: dict[str, Any]) -> bool:
        """Whether these (successful) outputs may be stored; false for e.g. a truncated answer."""
        return True

    def semantic_text(self, inputs: dict[str, Any]) -> str | None:
        """The text whose meaning a semantic cache tier matches (an llm node: the user's question)."""
        return None

    def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        raise TypeError(f"node type {self.type_name!r} does not implement run()")


_REGISTRY: dict[str, type[Node]] = {}
_entry_points_loaded = False


def register(name: str) -> Callable[[type[Node]], type[Node]]:
    """Class decorator: make a node type available to flows as ``type: name``."""

    def deco(cls: type[Node]) -> type[Node]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"node type {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    # Imported for their @register side effect; kept light so `rill validate` stays fast.
    # Each module imports its heavy libraries (llama_cpp, torch, qdrant_client, openai) lazily.
    from rillflow.nodes import guardrail, llm, prompt, python, retrieve, route, scripted, split, static  # noqa: F401


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="rillflow.nodes"):
        ep.load()


def node_types() -> dict[str, type[Node]]:
    """Every registered node type: built-ins plus packages in the ``rillflow.nodes`` entry-point group."""
    _load_builtins()
    _load_entry_points()
    return dict(_REGISTRY)


def get_node_type(name: str) -> type[Node] | None:
    _load_builtins()
    if name not in _REGISTRY:
        _load_entry_points()
    return _REGISTRY.get(name)


def check_resource_name(ctx: CheckContext, loc: tuple[str | int, ...], section: str, name: Any) -> bool:
    """Report (E027) a node naming a model or collection the flow does not declare."""
    from rillflow.runtime.errors import suggest

    available = ctx.env.models if section == "models" else ctx.env.collections
    if not isinstance(name, str) or name in available:
        return True
    kind = section.rstrip("s")
    known = ", ".join(sorted(available)) or "none"
    hint = suggest(name, available)
    ctx.error(loc, "E027", f"unknown {kind} '{name}': declare it under '{section}:' (declared: {known}){hint}")
    return False


def stream_fields(config_cls: type[NodeConfig]) -> frozenset[str]:
    """Config fields annotated Streamed[...]: they can consume a chunk stream as it arrives."""
    return frozenset(
        name for name, info in config_cls.model_fields.items() if any(isinstance(m, AcceptsRef) and m.stream for m in info.metadata)
    )

