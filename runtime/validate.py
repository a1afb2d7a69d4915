"""Validate loaded YAML against the pydantic models, mapping each error back to its YAML position."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from rillflow.nodes.base import NodeConfig, get_node_type, node_types
from rillflow.runtime.errors import Diagnostic
from rillflow.runtime.refs import RESERVED_ROOTS, Interp, Ref, RefSyntaxError, parse_string
from rillflow.runtime.spec import ID_PATTERN, FlowSpec
from rillflow.runtime.yaml_source import Loc, SourceMap, split_lines

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


def map_validation_error(exc: ValidationError, prefix: Loc, raw: Any, out: Collector, *, root: Any = None) -> None:
    """Report pydantic errors at YAML positions; union members add loc parts we skip.

    ``root`` is the type that was validated (a model class or an annotation); it lets an unknown
    field at any depth suggest the field names of the mapping it sits in.
    """
    errors = _clearest_branch(exc.errors(), raw)
    suggested = _report_unknown_fields(errors, prefix, raw, out, root)
    seen: set[Loc] = set()
    for err in errors:
        loc, value = _data_loc(err["loc"], raw)
        full = (*prefix, *loc)
        if err["type"] == "extra_forbidden" or full in seen:
            continue  # one message per place: the first union member's is the clearest
        seen.add(full)
        if err["type"] == "missing":
            name = str(err["loc"][-1])
            if (loc[:-1], name) in suggested:
                continue  # 'unknown field ...; did you mean <name>?' already says it
            owner = ".".join(str(p) for p in full[:-1] if p != "nodes")
            # point at the key of the mapping that lacks the field (the node id, for a node)
            out.at(full[:-1], "E012", f"'{owner}' is missing required field '{name}'" if owner else f"missing required field '{name}'", at_key=True)
            continue
        where = ".".join(str(p) for p in loc) or (str(prefix[-1]) if prefix else "value")
        # a check of a whole mapping (e.g. 'give exactly one of ...') points at the key naming it
        out.at(full, "E060", f"'{where}': {_value_message(err, prefix, loc, value)}", at_key=isinstance(value, dict) and bool(full))


def _report_unknown_fields(errors: list[Any], prefix: Loc, raw: Any, out: Collector, root: Any) -> set[tuple[Loc, str]]:
    """E011 once per unknown key, with a did-you-mean where one is close; returns the (parent, field) suggested."""
    unknown: dict[Loc, str] = {}  # a union of models reports the same key once per member
    suggested: set[tuple[Loc, str]] = set()
    for err in errors:
        if err["type"] != "extra_forbidden":
            continue
        loc, _ = _data_loc(err["loc"], raw)
        name, siblings = str(err["loc"][-1]), _fields_at(root, err["loc"][:-1])
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        if close:
            suggested.add((loc[:-1], close[0]))
        if loc not in unknown or (close and "did you mean" not in unknown[loc]):
            unknown[loc] = f"unknown field '{name}'" + (suggest(name, siblings) or (f"; valid fields: {', '.join(siblings)}" if siblings else ""))
    for loc, message in unknown.items():
        out.at((*prefix, *loc), "E011", message, at_key=True)
    return suggested


def _value_message(err: Any, prefix: Loc, loc: Loc, value: Any) -> str:
    if isinstance(value, (Ref, Interp)):
        return "this field does not take references (${...}); write a literal value"
    if prefix == ("version",) and not loc:
        return f"flow format version {str(value)[:20]!r} is not supported: write version: 1"
    if prefix == ("name",) and not loc and err["type"] == "string_pattern_mismatch":
        return f"flow name {str(value)[:70]!r} must start with a lower-case letter and hold only a-z, 0-9, '-' and '_' (64 at most)"
    return str(err["msg"]).removeprefix("Value error, ")


def _data_loc(loc: tuple[Any, ...], raw: Any) -> tuple[Loc, Any]:
    """Keep the loc parts that address real data; drop union/type tags pydantic inserts."""
    kept: list[str | int] = []
    value = raw
    for i, part in enumerate(loc):
        if (isinstance(value, dict) and part in value) or (isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)):
            kept.append(part)
            value = value[part]
        elif isinstance(value, dict) and isinstance(part, str) and i == len(loc) - 1 and not _is_tag(part):
            kept.append(part)  # a missing or unknown key (always the last part): point at its parent mapping
            break
    return tuple(kept), value


def _is_tag(part: str) -> bool:
    return any(ch in part for ch in "[(") or part in {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-wrap", "function-before"} or part.startswith(("literal", "is-instance", "tagged-union", "Literal"))


def _union_point(loc: tuple[Any, ...], raw: Any) -> tuple[tuple[Any, ...], str, Any] | None:
    """(data prefix, member tag, value there) of the first union member tag in an error's loc."""
    value = raw
    for i, part in enumerate(loc[:-1] if loc else loc):
        if (isinstance(value, dict) and part in value) or (isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)):
            value = value[part]
        elif isinstance(part, str):
            return loc[:i], part, value
        else:
            return None
    if loc and ((isinstance(loc[-1], str) and _is_tag(loc[-1])) or (_is_model_tag(loc[-1]) and not isinstance(value, dict))):
        return loc[:-1], str(loc[-1]), value
    return None


def _is_model_tag(part: Any) -> bool:
    return isinstance(part, str) and part[:1].isupper() and part.isidentifier()


def _clearest_branch(errors: list[Any], raw: Any) -> list[Any]:
    """At a union (``5s`` or ``{total: 5s}``), keep the errors of the members shaped like the value:
    a mapping is explained by the model member's errors, anything else by the other members'."""
    points = {id(err): _union_point(err["loc"], raw) for err in errors}
    by_prefix: dict[tuple[Any, ...], set[bool]] = {}
    for point in points.values():
        if point is not None:
            by_prefix.setdefault(point[0], set()).add(_is_model_tag(point[1]))
    kept = []
    for err in errors:
        point = points[id(err)]
        if point is not None and by_prefix[point[0]] == {True, False}:
            wants_model = isinstance(point[2], dict)
            if _is_model_tag(point[1]) != wants_model:
                continue
        kept.append(err)
    return kept


def _members(tp: Any) -> list[Any]:
    """The alternatives of a type: Annotated and Optional unwrapped, unions flattened."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _literal_values(model: Any) -> set[Any]:
    """Values of a model's Literal fields: a discriminated union's member is tagged with one."""
    return {v for f in model.model_fields.values() if typing.get_origin(f.annotation) is typing.Literal for v in typing.get_args(f.annotation)}


def _fields_at(root: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model a pydantic error loc leads to, for did-you-mean; [] if unknown."""
    tp = root
    for part in loc:
        members = _members(tp)
        models = [m for m in members if _is_model(m)]
        named = [m for m in models if m.__name__ == part or (len(models) > 1 and part in _literal_values(m))]
        containers = [m for m in members if typing.get_origin(m) in (dict, list, tuple)]
        if named:
            tp = named[0]
        elif len(models) == 1 and part in models[0].model_fields:
            tp = models[0].model_fields[part].annotation
        elif containers:
            tp = typing.get_args(containers[0])[-1 if typing.get_origin(containers[0]) is dict else 0]
        elif not (isinstance(part, str) and _is_tag(part)):
            return []
    models = [m for m in _members(tp) if _is_model(m)]
    return list(models[0].model_fields) if len(models) == 1 else []


def text_booleans(validate: Any, raw: Any, prefix: Loc, out: Collector) -> bool:
    """Report booleans written as text or numbers (``stream: yes``); True if there were any.

    The loader keeps YAML 1.1 words such as yes/no/on/off as text (YAML 1.2), but pydantic's lax mode
    would turn them back into booleans, so a value that validated is checked once more, strictly,
    for boolean fields only.
    """
    try:
        validate(raw, strict=True)
    except ValidationError as exc:
        bad = [e for e in exc.errors() if e["type"] == "bool_type"]
        for err in bad:
            loc, value = _data_loc(err["loc"], raw)
            where = ".".join(str(p) for p in loc) or "value"
            out.at((*prefix, *loc), "E060", f"'{where}': {str(value)[:40]!r} is not a boolean: write true or false "
                                            "(yes, no, on and off are text in YAML 1.2)")
        return bool(bad)
    return False


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


def default_env() -> Mapping[str, str]:
    return os.environ
