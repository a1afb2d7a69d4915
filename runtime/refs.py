"""References: the only way edges enter a flow (DESIGN.md section 1).

Grammar, inside any YAML string::

    ${ path ( ?? path )* }          first non-skipped of several paths (a merge)
    path := inputs.NAME(.SEG)* | env.NAME | item(.SEG)* | NODE.FIELD(.SEG)*
    ${env.NAME:-default}             the default when NAME is unset (as in the shell)
    SEG  := identifier | integer    (mapping key or list index)

A string that is exactly one reference takes the referenced value with its type; a reference inside
longer text is interpolated as text. ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

RESERVED_ROOTS = frozenset({"inputs", "env", "item"})
_REF = re.compile(r"\$\{([^{}]*)\}")
_SEG = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REF_PATTERN = r"\$\{[^{}]+\}"


class RefSyntaxError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class RefPath:
    """One dotted path: ``root`` is 'inputs', 'env', 'item' or a node id; ``parts`` follow it."""

    root: str
    parts: tuple[str | int, ...]

    @property
    def field(self) -> str | None:
        """The node output field (or input name) this path reads, if any."""
        return str(self.parts[0]) if self.parts else None

    def __str__(self) -> str:
        return ".".join([self.root, *map(str, self.parts)])


@dataclass(frozen=True, slots=True)
class Ref:
    """``${a.b ?? c.d}``: the value of the first alternative that was not skipped."""

    alternatives: tuple[RefPath, ...]
    offset: int = 0  # character offset of '${' in the YAML string, for error columns
    default: str | None = None  # ${env.NAME:-default}: used when NAME is unset

    def __str__(self) -> str:
        body = " ?? ".join(map(str, self.alternatives))
        return "${" + body + ("" if self.default is None else ":-" + self.default) + "}"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return REF_JSON_SCHEMA


@dataclass(frozen=True, slots=True)
class Interp:
    """Text with references inside it; renders to a string."""

    parts: tuple[str | Ref, ...]

    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def __str__(self) -> str:
        return "".join(str(p) for p in self.parts)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string"}


REF_JSON_SCHEMA: JsonSchemaValue = {
    "type": "string",
    "pattern": "^" + REF_PATTERN + "$",
    "description": "A reference such as ${inputs.question} or ${retrieve.documents}.",
}


def parse_path(text: str, offset: int) -> RefPath:
    segs = [s.strip() for s in text.strip().split(".")]
    if not segs or not segs[0]:
        raise RefSyntaxError("empty reference: write ${node.field} or ${inputs.name}", offset)
    for seg in segs:
        if not _SEG.match(seg):
            raise RefSyntaxError(f"invalid reference '{text.strip()}': each part must be a name or a list index", offset)
    root = segs[0]
    parts: tuple[str | int, ...] = tuple(int(s) if s.isdigit() else s for s in segs[1:])
    if root == "env":
        if len(parts) != 1 or not _ENV_NAME.match(str(parts[0])):
            raise RefSyntaxError(f"invalid reference '{text.strip()}': write ${{env.NAME}}", offset)
    elif root != "item" and not parts:
        what = "inputs.NAME" if root == "inputs" else f"{root}.FIELD"
        raise RefSyntaxError(f"reference '${{{root}}}' names no field: write ${{{what}}}", offset)
    return RefPath(root, parts)


def parse_ref_body(body: str, offset: int) -> Ref:
    if body.strip().startswith("env.") and ":-" in body:
        # Shell-style default, so a flow can name an optional endpoint (a remote fallback model)
        # and still load on a machine where nobody has configured it.
        name, default = body.split(":-", 1)
        return Ref((parse_path(name, offset),), offset, default)
    alts = tuple(parse_path(p, offset) for p in body.split("??"))
    if any(a.root == "env" for a in alts) and len(alts) > 1:
        raise RefSyntaxError("${env.NAME} cannot be merged with '??'", offset)
    return Ref(alts, offset)


def parse_string(text: str) -> str | Ref | Interp:
    """Turn a YAML string into plain text, a whole-value reference, or interpolated text."""
    if "${" not in text:
        return text
    parts: list[str | Ref] = []
    pos = 0
    literal = ""
    while pos < len(text):
        start = text.find("${", pos)
        if start < 0:
            literal += text[pos:]
            break
        if start > 0 and text[start - 1] == "$":  # '$${' escapes
            literal += text[pos : start - 1] + "${"
            pos = start + 2
            continue
        m = _REF.match(text, start)
        if m is None:
            raise RefSyntaxError("unclosed reference: '${' needs a matching '}' (write '$${' for a literal '${')", start)
        literal += text[pos:start]
        if literal:
            parts.append(literal)
            literal = ""
        parts.append(parse_ref_body(m.group(1), start))
        pos = m.end()
    if literal:
        parts.append(literal)
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return parts[0]
    if all(isinstance(p, str) for p in parts):
        return "".join(p for p in parts if isinstance(p, str))
    return Interp(tuple(parts))


def iter_refs(value: Any, loc: tuple[str | int, ...] = ()) -> Any:
    """Yield (loc, Ref, whole) for every reference inside a parsed config value."""
    if isinstance(value, Ref):
        yield loc, value, True
    elif isinstance(value, Interp):
        for ref in value.refs():
            yield loc, ref, False
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_refs(v, (*loc, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from iter_refs(v, (*loc, i))
    elif hasattr(value, "__pydantic_fields__"):
        for name in type(value).model_fields:
            yield from iter_refs(getattr(value, name), (*loc, name))
