"""Check a run's inputs against the flow's declared inputs before anything runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from rillflow.runtime.errors import RillError, suggest
from rillflow.runtime.plan import Plan
from rillflow.runtime.spec import InputSpec

_PY: dict[str, type | tuple[type, ...]] = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "list": list, "object": dict, "chat_history": list}


class InputError(RillError):
    """The caller's inputs do not match the flow's ``inputs``; ``problems`` says each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid inputs: " + "; ".join(problems))


def check_inputs(plan: Plan, given: Mapping[str, Any]) -> dict[str, Any]:
    """Return the inputs with defaults filled in, or raise InputError listing every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in given:
        if name not in plan.inputs:
            known = ", ".join(plan.inputs) or "none"
            problems.append(f"unknown input '{name}'{suggest(name, plan.inputs)} (this flow takes: {known})")
    for name, spec in plan.inputs.items():
        if name in given:
            problem = check_value(name, spec, given[name])
            if problem:
                problems.append(problem)
            values[name] = given[name]
        elif spec.is_required:
            problems.append(f"missing required input '{name}'")
        else:
            values[name] = spec.default
    if problems:
        raise InputError(problems)
    return values


def check_value(name: str, spec: InputSpec, value: Any) -> str | None:
    """What is wrong with one input value, or None."""
    if not isinstance(value, _PY[spec.type]) or (spec.type in ("integer", "number") and isinstance(value, bool)):
        return f"input '{name}' must be {spec.type}, got {type(value).__name__}"
    if spec.type == "chat_history":
        messages = cast(list[Any], value)  # the isinstance check above proved it a list
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant") or not isinstance(msg.get("content"), str):
                return f"input '{name}' item {i} must be {{role: system|user|assistant, content: text}}"
    if spec.enum is not None and value not in spec.enum:
        return f"input '{name}' must be one of {', '.join(map(str, spec.enum))}"
    return _check_size(name, spec, value)


def _check_size(name: str, spec: InputSpec, value: Any) -> str | None:
    if isinstance(value, (str, list, dict)):
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"input '{name}' is {len(value)} long; the limit is {spec.max_length}"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"input '{name}' is {len(value)} long; the minimum is {spec.min_length}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            return f"input '{name}' is below the minimum {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"input '{name}' is above the maximum {spec.maximum}"
    return None


def coerce_cli_value(spec: InputSpec | None, text: str) -> Any:
    """`--input key=value` gives text; turn it into the declared type (JSON for lists and objects)."""
    kind = spec.type if spec is not None else "string"
    if kind == "string":
        return text
    if kind == "boolean" and text.lower() in ("true", "false", "yes", "no", "1", "0"):
        return text.lower() in ("true", "yes", "1")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # check_inputs reports the type problem with the input's name
