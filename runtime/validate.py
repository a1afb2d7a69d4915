"""Validate loaded YAML against the pydantic models, mapping each error back to its YAML position."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rillflow.nodes.base import NodeConfig, get_node_type, node_types
from rillflow.runtime.errors import Diagnostic
from rillflow.runtime.refs import Interp, Ref, RefSyntaxError, parse_string
from rillflow.runtime.spec import ID_PATTERN, FlowSpec
from rillflow.runtime.yaml_source import Loc, SourceMap

_ID = re.compile(ID_PATTERN)
# Literal credentials (reliability notes FY-26). The match is never echoed back.
_SECRET = re.compile(
    r"(?:\bsk-[A-Za-z0-9_-]{16,}|\bBearer\s+[A-Za-z0-9._~+/=-]{12,}|\bgh[pousr]_[A-Za-z0-9]{30,}|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAIza[0-9A-Za-z_-]{35})"
)


def suggest(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class Collector:
    """Gathers diagnostics for one file, capped so a broken file cannot flood the terminal."""

    def __init__(self, smap: SourceMap, raw: Any = None, cap: int = 50) -> None:
        self.smap = smap
        self.raw = raw  # the loaded data, to place columns inside block scalars
        self.items: list[Diagnostic] = []
        self.cap = cap

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def add(self, diag: Diagnostic) -> None:
        if len(self.items) < self.cap:
            self.items.append(diag)

    def at(self, loc: Loc, code: str, message: str, *, at_key: bool = False, offset: int = 0,
           template_line: int | None = None, severity: str = "error") -> None:
        pos = self.smap.key(loc) if at_key else self.smap.value(loc)
        line, col = pos.line, pos.col
        if template_line is not None:
            line, col = (pos.line + template_line, self._indent(pos.line + template_line)) if pos.block else (pos.line + template_line - 1, col)
        elif offset:
            line, col = self._offset(pos, loc, offset)
        self.add(Diagnostic(self.smap.path, line, col, code, message, severity))  # type: ignore[arg-type]

    def _indent(self, line: int) -> int:
        lines = self.smap.text.splitlines()
        if 0 < line <= len(lines):
            text = lines[line - 1]
            return len(text) - len(text.lstrip(" ")) + 1
        return 1

    def _offset(self, pos: Any, loc: Loc, offset: int) -> tuple[int, int]:
        if not pos.block:
            return pos.line, pos.col + offset + (1 if pos.quoted else 0)
        raw = _raw_at(self.raw, loc)
        before = raw[:offset] if isinstance(raw, str) else ""
        line = pos.line + 1 + before.count("\n")
        return line, self._indent(line) + len(before) - (before.rfind("\n") + 1)


def _raw_at(value: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def scan_secrets(value: Any, loc: Loc, out: Collector) -> None:
    if isinstance(value, str):
        if _SECRET.search(value):
            out.at(loc, "E090", "this looks like a literal secret: put it in an environment variable and write ${env.NAME}")
    elif isinstance(value, dict):
        for k, v in value.items():
            scan_secrets(v, (*loc, k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            scan_secrets(v, (*loc, i), out)


def parse_refs(value: Any, loc: Loc, out: Collector, env: Mapping[str, str], secrets: set[str]) -> Any:
    """Replace strings holding ${...} with Ref/Interp objects; substitute ${env.NAME} now."""
    if isinstance(value, str):
        try:
            parsed = parse_string(value)
        except RefSyntaxError as exc:
            out.at(loc, "E024", str(exc), offset=exc.offset)
            return value
        return _substitute_env(parsed, loc, out, env, secrets)
    if isinstance(value, dict):
        return {k: parse_refs(v, (*loc, k), out, env, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_refs(v, (*loc, i), out, env, secrets) for i, v in enumerate(value)]
    return value


def _substitute_env(parsed: Any, loc: Loc, out: Collector, env: Mapping[str, str], secrets: set[str]) -> Any:
    def lookup(ref: Ref) -> str | None:
        name = str(ref.alternatives[0].parts[0])
        if name not in env:
            out.at(loc, "E091", f"environment variable '{name}' is not set: export it before loading this flow", offset=ref.offset)
            return None
        if env[name]:
            secrets.add(env[name])
        return env[name]

    if isinstance(parsed, Ref) and parsed.alternatives[0].root == "env":
        value = lookup(parsed)
        return "" if value is None else value
    if isinstance(parsed, Interp) and any(r.alternatives[0].root == "env" for r in parsed.refs()):
        parts: list[str | Ref] = []
        for p in parsed.parts:
            if isinstance(p, Ref) and p.alternatives[0].root == "env":
                parts.append(lookup(p) or "")
            else:
                parts.append(p)
        if all(isinstance(p, str) for p in parts):
            return "".join(p for p in parts if isinstance(p, str))
        return Interp(tuple(parts))
    return parsed


def map_validation_error(exc: ValidationError, prefix: Loc, raw: Any, out: Collector, *, fields: list[str]) -> None:
    """Report pydantic errors at YAML positions; union members add loc parts we skip."""
    seen: set[Loc] = set()
    for err in exc.errors():
        loc, value = _data_loc(err["loc"], raw)
        full = (*prefix, *loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(err["loc"][-1])
            parent_fields = fields if len(loc) == 1 else []
            hint = suggest(name, parent_fields) or (f"; valid fields: {', '.join(parent_fields)}" if parent_fields else "")
            out.at(full, "E011", f"unknown field '{name}'{hint}", at_key=True)
            continue
        if full in seen:
            continue  # one message per place: the first union member's is the clearest
        seen.add(full)
        if kind == "missing":
            name = str(err["loc"][-1])
            out.at(full, "E012", f"missing required field '{name}'", at_key=True)
            continue
        where = ".".join(str(p) for p in loc) or "value"
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(value, (Ref, Interp)):
            msg = "this field does not take references (${...}); write a literal value"
        out.at(full, "E060", f"'{where}': {msg}")


def _data_loc(loc: tuple[Any, ...], raw: Any) -> tuple[Loc, Any]:
    """Keep the loc parts that address real data; drop union/type tags pydantic inserts."""
    kept: list[str | int] = []
    value = raw
    for part in loc:
        if isinstance(value, dict) and part in value:
            kept.append(part)
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            kept.append(part)
            value = value[part]
        elif isinstance(value, dict) and isinstance(part, str) and part not in value and not _is_tag(part):
            kept.append(part)  # a missing or unknown key: point at its parent mapping
            break
    return tuple(kept), value


def _is_tag(part: str) -> bool:
    return any(ch in part for ch in "[(") or part in {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-wrap", "function-before"} or part.startswith(("literal", "is-instance", "tagged-union", "Literal"))


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _adapter(name: str) -> TypeAdapter[Any]:
    if name not in _ADAPTERS:
        _ADAPTERS[name] = TypeAdapter(FlowSpec.model_fields[name].rebuild_annotation())
    return _ADAPTERS[name]


def validate_top(data: dict[str, Any], out: Collector) -> dict[str, Any]:
    """Validate each top-level section on its own, so one bad section does not hide the others."""
    fields = list(FlowSpec.model_fields)
    values: dict[str, Any] = {}
    for key in data:
        if key not in FlowSpec.model_fields:
            out.at((key,), "E011", f"unknown top-level field '{key}'{suggest(key, fields) or '; valid fields: ' + ', '.join(fields)}", at_key=True)
    for name, info in FlowSpec.model_fields.items():
        if name not in data:
            if info.is_required():
                if name == "nodes" or name == "outputs" or name == "version" or name == "name":
                    out.at((), "E012", f"missing required top-level field '{name}'")
                continue
            values[name] = info.get_default(call_default_factory=True)
            continue
        if name == "nodes":
            values[name] = data[name]
            continue
        try:
            values[name] = _adapter(name).validate_python(data[name])
        except ValidationError as exc:
            map_validation_error(exc, (name,), data[name], out, fields=[])
    return values


def validate_node(node_id: str, raw: Any, out: Collector) -> NodeConfig | None:
    loc: Loc = ("nodes", node_id)
    if not _ID.match(node_id):
        out.at(loc, "E005", f"node id '{node_id}' must match [a-z][a-z0-9_]{{0,63}} (lower-case letters, digits, underscores)", at_key=True)
    elif node_id in ("inputs", "env", "item"):
        out.at(loc, "E005", f"'{node_id}' is reserved for references (${{{node_id}...}}); rename the node", at_key=True)
    if not isinstance(raw, dict):
        out.at(loc, "E006", f"node '{node_id}' must be a mapping with a 'type' field")
        return None
    type_name = raw.get("type")
    if type_name is None:
        out.at(loc, "E012", f"node '{node_id}' has no 'type': add one of {', '.join(sorted(node_types()))}", at_key=True)
        return None
    node_cls = get_node_type(type_name) if isinstance(type_name, str) else None
    if node_cls is None:
        types = node_types()
        out.at((*loc, "type"), "E010", f"unknown node type '{type_name}'{suggest(type_name, types)} (known types: {', '.join(sorted(types))})")
        return None
    config_cls = node_cls.Config
    try:
        return config_cls.model_validate(raw)
    except ValidationError as exc:
        map_validation_error(exc, loc, raw, out, fields=list(config_cls.model_fields))
        return None


def default_env() -> Mapping[str, str]:
    return os.environ
