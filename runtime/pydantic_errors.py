"""Report pydantic validation errors at the YAML position of the offending key or value.

pydantic's error locations include union-member and model tags that address no data; these helpers
keep the parts that do, pick the clearest message where a union failed in every member, add
did-you-mean for unknown keys at any depth, and refuse YAML 1.1 words (`yes`, `on`) in boolean
fields, which pydantic's lax mode would accept.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rillflow.runtime.errors import suggest
from rillflow.runtime.refs import Interp, Ref

if TYPE_CHECKING:
    from rillflow.runtime.validate import Collector
    from rillflow.runtime.yaml_source import Loc


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
