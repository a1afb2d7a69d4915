"""Validate loaded YAML against the pydantic models, mapping each error back to its YAML position."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rillflow.nodes.base import NodeConfig, get_node_type, node_types
from rillflow.runtime.errors import Diagnostic, suggest
from rillflow.runtime.pydantic_errors import map_validation_error, text_booleans
from rillflow.runtime.refs import RESERVED_ROOTS, Interp, Ref, RefSyntaxError, parse_string
from rillflow.runtime.spec import ID_PATTERN, FlowSpec
from rillflow.runtime.yaml_source import Loc, SourceMap, split_lines

_ID = re.compile(ID_PATTERN)
# Literal credentials (reliability notes FY-26). The match is never echoed back.
_SECRET = re.compile(
    r"(?:\bsk-[A-Za-z0-9_-]{16,}|\bBearer\s+[A-Za-z0-9._~+/=-]{12,}|\bgh[pousr]_[A-Za-z0-9]{30,}|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAIza[0-9A-Za-z_-]{35})"
)




class Collector:
    """Gathers diagnostics for one file, capped so a broken file cannot flood the terminal."""

    def __init__(self, smap: SourceMap, raw: Any = None, cap: int = 50) -> None:
        self.smap = smap
        self.raw = raw  # the loaded data, to place columns inside block scalars
        self.items: list[Diagnostic] = []
        self.cap = cap
        self.secrets: set[str] = set()  # ${env.*} values: never echoed in a message (errors.py)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def add(self, diag: Diagnostic) -> None:
        if len(self.items) < self.cap:
            message = diag.message
            for secret in self.secrets:
                if len(secret) >= 4:  # shorter values would mangle messages and reveal little
                    message = message.replace(secret, "***")
            self.items.append(diag if message == diag.message else dataclasses.replace(diag, message=message))

    def at(self, loc: Loc, code: str, message: str, *, at_key: bool = False, offset: int | None = None,
           template_line: int | None = None, severity: str = "error") -> None:
        """Report at ``loc``; ``offset`` is a character offset inside the string value (0 is its first character)."""
        pos = self.smap.key(loc) if at_key else self.smap.value(loc)
        line, col = pos.line, pos.col
        if template_line is not None:
            line, col = (pos.line + template_line, self._indent(pos.line + template_line)) if pos.block else (pos.line + template_line - 1, col)
        elif offset is not None and not at_key:
            line, col = self._offset(pos, loc, offset)
        self.add(Diagnostic(self.smap.path, line, col, code, message, severity))  # type: ignore[arg-type]

    def _indent(self, line: int) -> int:
        lines = split_lines(self.smap.text)
        if 0 < line <= len(lines):
            text = lines[line - 1]
            return len(text) - len(text.lstrip(" ")) + 1
        return 1

    def _offset(self, pos: Any, loc: Loc, offset: int) -> tuple[int, int]:
        raw = _raw_at(self.raw, loc)
        if isinstance(raw, str) and raw.startswith("${", offset):
            # the nth '${' of the value is its nth in the source, whatever escapes or folding lie before it
            found = self.smap.find(pos, "${", raw.count("${", 0, offset))
            if found is not None:
                return found
        if not pos.block:
            return pos.line, pos.col + offset + (1 if pos.quoted else 0)
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
        if name not in env and ref.default is not None:
            return ref.default  # written in the flow file: not a secret
        if name not in env:
            out.at(loc, "E091", f"environment variable '{name}' is not set: export it before loading this flow, or give a default: ${{env.{name}:-VALUE}}", offset=ref.offset)
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
                if name in {"nodes", "outputs", "version", "name"}:
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
            map_validation_error(exc, (name,), data[name], out, root=info.annotation)
            continue
        text_booleans(_adapter(name).validate_python, data[name], (name,), out)
    return values


def validate_node(node_id: str, raw: Any, out: Collector) -> NodeConfig | None:
    loc: Loc = ("nodes", node_id)
    if not _ID.match(node_id):
        out.at(loc, "E005", f"node id '{node_id}' must match [a-z][a-z0-9_]{{0,63}} (lower-case letters, digits, underscores)", at_key=True)
    elif node_id in RESERVED_ROOTS or node_id == "outputs":
        what = "the flow's outputs" if node_id == "outputs" else f"references (${{{node_id}...}})"
        out.at(loc, "E005", f"'{node_id}' is reserved for {what}; rename the node", at_key=True)
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
        config = config_cls.model_validate(raw)
    except ValidationError as exc:
        map_validation_error(exc, loc, raw, out, root=config_cls)
        return None
    return None if text_booleans(config_cls.model_validate, raw, loc, out) else config
