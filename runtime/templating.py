"""The one Jinja2 environment flows use: sandboxed, strict, and bounded.

Builder templates are compiled once at load; user, retrieved and model text only ever enters as a
variable, never as template source (reliability notes, section 1.3: double rendering is the real bug).
The sandbox does not bound CPU or memory, so ``*`` and ``**`` are intercepted and capped, and the
rendered output is capped by the caller.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_REPEAT = 100_000  # longest string or list a template may build with '*'
MAX_POWER = 10_000


class FlowSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"template builds a value longer than {MAX_REPEAT} items")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_POWER:
                raise SecurityError(f"template exponent above {MAX_POWER}")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


@lru_cache(maxsize=1)
def environment() -> FlowSandbox:
    return FlowSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def undeclared_variables(source: str) -> set[str]:
    """Top-level names a template reads. Raises TemplateSyntaxError."""
    return set(meta.find_undeclared_variables(environment().parse(source)))


def attribute_paths(source: str) -> list[tuple[str, str | None, int]]:
    """(name, first attribute or None, template line) for each variable use, for reference checks."""
    found: list[tuple[str, str | None, int]] = []
    tree = environment().parse(source)
    attr_names: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner = getattr(node, "node", None)
        if isinstance(inner, nodes.Name):
            attr = getattr(node, "attr", None) if isinstance(node, nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
            found.append((inner.name, attr if isinstance(attr, str) else None, node.lineno))
            attr_names.add(id(inner))
    for node in tree.find_all(nodes.Name):
        if id(node) not in attr_names and node.ctx == "load":
            found.append((node.name, None, node.lineno))
    return found


def compile_template(source: str) -> Any:
    return environment().from_string(source)


def compile_condition(expression: str) -> Callable[..., Any]:
    """A `when:` condition: a Jinja2 expression, with or without surrounding {{ }}."""
    expr = expression.strip()
    if expr.startswith("{{") and expr.endswith("}}"):
        expr = expr[2:-2].strip()
    return environment().compile_expression(expr, undefined_to_none=False)


def condition_source(expression: str) -> str:
    """The condition as a template source, for static analysis of the names it reads."""
    expr = expression.strip()
    return expr if expr.startswith("{{") else "{{ " + expr + " }}"


__all__ = [
    "FlowSandbox",
    "SecurityError",
    "TemplateSyntaxError",
    "attribute_paths",
    "compile_condition",
    "compile_template",
    "condition_source",
    "environment",
    "undeclared_variables",
]
