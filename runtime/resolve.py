"""Turn a node's references into values for one run (or one map item)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rillflow.runtime.errors import NodeError
from rillflow.runtime.refs import Interp, Ref, RefPath

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from rillflow.runtime.plan import PlanNode
    from rillflow.runtime.scheduler import Run

NO_ITEM: Any = object()


class Skip(Exception):
    """Every alternative of a reference was skipped, so the node reading it is skipped too."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SkippedNode:
    """How a skipped node reads in a `when:` condition: false, and every field of it is none, so
    `short.text or long.text` works whichever branch ran."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> None:
        return None

    def __getitem__(self, key: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "skipped"


SKIPPED = _SkippedNode()


class Resolver:
    def __init__(self, run: Run, inputs: dict[str, Any]) -> None:
        self.run = run
        self.inputs = inputs

    def inputs_for(self, pn: PlanNode, item: Any = NO_ITEM) -> dict[str, Any]:
        """The node's config as plain values: literals as they are, references resolved."""
        wired = pn.wired
        values = {k: v for k, v in pn.inputs.items() if k not in wired}
        for key in wired:
            values[key] = self.value(pn.inputs[key], (key,), pn, item)
        return values

    def value(self, value: Any, loc: tuple[str | int, ...], pn: PlanNode | None, item: Any = NO_ITEM) -> Any:
        kind = type(value)
        if kind is Ref:
            if pn is not None and pn.stream_inputs and loc in pn.stream_inputs:
                return self._reader(value)
            return self.ref(value, item)
        if kind is Interp:
            return "".join(p if type(p) is str else _text(self.ref(p, item)) for p in value.parts)
        if kind is dict:
            return {k: self.value(v, (*loc, k), pn, item) for k, v in value.items()}
        if kind is list:
            return [self.value(v, (*loc, i), pn, item) for i, v in enumerate(value)]
        return value

    def ref(self, ref: Ref, item: Any = NO_ITEM) -> Any:
        state = self.run.state
        for path in ref.alternatives:
            root = path.root
            if root == "inputs":
                return _walk(self.inputs, path.parts, path)
            if root == "item":
                return _walk(item, path.parts, path)
            if state.get(root) == "skipped":
                continue
            return _walk(self.run.values[root], path.parts, path)
        raise Skip(f"{ref} was skipped")

    def _reader(self, ref: Ref) -> AsyncIterator[str]:
        # A producer skipped before it started never opened its stream: read the next alternative,
        # and skip this node too when every one was skipped (as a plain reference does).
        for path in ref.alternatives:
            if self.run.state.get(path.root) == "skipped":
                continue
            return self.run.streams[path.root][str(path.parts[0])].reader()
        raise Skip(f"{ref} was skipped")

    def condition(self, pn: PlanNode) -> bool:
        """Evaluate `when:`; a skipped node reads as false, with every field none."""
        assert pn.when is not None
        variables: dict[str, Any] = {"inputs": self.inputs}
        for dep in pn.deps:
            variables[dep] = SKIPPED if self.run.state.get(dep) == "skipped" else self.run.values.get(dep)
        try:
            return bool(pn.when(**variables))
        except Exception as exc:
            raise NodeError("config", f"condition of node '{pn.id}' failed: {type(exc).__name__}: {exc}") from exc

    def output(self, value: Any) -> Any:
        try:
            return self.value(value, (), None)
        except Skip:
            return None

    def output_paths(self, name: str) -> tuple[RefPath, ...]:
        value = self.run.plan.outputs[name]
        return value.alternatives if isinstance(value, Ref) else ()


def _walk(value: Any, parts: tuple[str | int, ...], path: RefPath) -> Any:
    for part in parts:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            raise NodeError("config", f"reference '{path}' found no '{part}' in {type(value).__name__}") from None
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)
