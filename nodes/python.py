"""`python`: call an operator-allowlisted ``module:function``, sync or async, optionally streaming.

Flow files cannot carry code (DESIGN.md section 2): they can only name a function that the operator
allowed with ``RILL_PYTHON_ALLOW`` (comma-separated ``module:function`` names or ``module.*`` prefixes).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from collections.abc import AsyncIterator, Callable
from importlib import import_module
from typing import Any

from pydantic import Field

from rillflow.nodes.base import CheckContext, Emit, FlowEnv, Node, NodeConfig, Output, OutputField, RunContext, Wired, register
from rillflow.runtime.errors import NodeError

ALLOW_ENV = "RILL_PYTHON_ALLOW"
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def allowlist() -> list[str]:
    return [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]


def is_allowed(target: str, allowed: list[str]) -> bool:
    module = target.split(":", maxsplit=1)[0]
    for pattern in allowed:
        if pattern == target or (pattern.endswith(".*") and (module == pattern[:-2] or module.startswith(pattern[:-1]))):
            return True
    return False


@register("python")
class PythonNode(Node):
    """Call ``function`` with ``args``. With ``stream: true`` it must yield text chunks."""

    class Config(NodeConfig):
        function: str = Field(description="module:function, allowed by the operator in RILL_PYTHON_ALLOW.")
        args: dict[str, Wired[Any]] = Field(default_factory=dict, description="Keyword arguments: literals or references.")
        stream: bool = Field(False, description="The function is a (async) generator of text chunks.")
        stream_args: list[str] = Field(default_factory=list, description="Args that receive a chunk stream as an async iterator.")
        thread: bool = Field(True, description="Run a sync function in a worker thread (false: call it inline; only for trivial functions).")

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        if config.stream:
            return {"text": OutputField("string", stream=True)}
        return {"value": OutputField()}

    @classmethod
    def accepts_stream(cls, config: Any, loc: tuple[str | int, ...]) -> bool:
        return len(loc) == 2 and loc[0] == "args" and loc[1] in config.stream_args

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        if not _TARGET.match(config.function):
            ctx.error(("function",), "E073", f"'{config.function}' is not module:function (e.g. mypkg.tools:clean)")
        elif not is_allowed(config.function, allowlist()):
            ctx.error(("function",), "E074", f"'{config.function}' is not allowed: the operator must list it in {ALLOW_ENV}")
        for name in config.stream_args:
            if name not in config.args:
                ctx.error(("stream_args",), "E011", f"stream arg '{name}' is not one of args: {', '.join(config.args) or '(none)'}")

    config: PythonNode.Config

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        self._fn: Callable[..., Any] | None = None
        self._identity: dict[str, str] | None = None

    worth_caching = True

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        """The function's source: editing the code invalidates its cached results."""
        if self._identity is None:  # once per plan: a code edit means a new process and a new plan anyway
            fn = self._function()
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                source = getattr(getattr(fn, "__code__", None), "co_code", b"").hex()
            self._identity = {"function": self.config.function, "source": hashlib.sha256(source.encode("utf-8")).hexdigest()}
        return self._identity

    def _function(self) -> Callable[..., Any]:
        if self._fn is None:
            if not is_allowed(self.config.function, allowlist()):
                raise NodeError("config", f"'{self.config.function}' is not allowed: list it in {ALLOW_ENV}")
            module, _, name = self.config.function.partition(":")
            try:
                self._fn = getattr(import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise NodeError("config", f"cannot import '{self.config.function}': {exc}") from exc
        return self._fn

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        fn = self._function()
        args = inputs["args"]
        if self.config.stream:
            result = fn(**args)
            parts: list[str] = []
            if inspect.isasyncgen(result):  # the common case, iterated here to save a generator layer per chunk
                async for item in result:
                    text = item if type(item) is str else str(item)
                    parts.append(text)
                    yield text
            else:
                async for text in _iterate(result):
                    parts.append(text)
                    yield text
            yield Output(text="".join(parts))
            return
        if inspect.iscoroutinefunction(fn):
            value = await fn(**args)
        elif inputs["thread"]:
            value = await ctx.to_thread(fn, **args)
        else:
            value = fn(**args)
        yield Output(value=value)


async def _iterate(result: Any) -> AsyncIterator[str]:
    if inspect.isgenerator(result):
        for item in result:
            yield str(item)
    else:
        raise NodeError("config", "a python node with stream: true needs a function that yields text chunks")
