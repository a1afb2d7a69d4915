"""Read a YAML file into plain Python data plus the position of every key and value.

Why our own tree builder on top of ruamel's event stream (reliability notes, section 1.4): the event
stream is produced without recursion, so depth, anchors, aliases, tags and extra documents are
rejected *before* anything is built (no billion-laughs traversal, no RecursionError), duplicate
keys can say where the first one was, and plain scalars resolve by YAML 1.2 core rules only
(`on`, `NO`, `12:30` stay strings). The result holds only dict, list, str, int, float, bool, None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rillflow.runtime.errors import Diagnostic, FlowError

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64

Loc = tuple[str | int, ...]

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")


@dataclass(frozen=True, slots=True)
class Pos:
    """1-based position of a token; ``quoted`` tells whether a scalar's text starts one column later."""

    line: int
    col: int
    quoted: bool = False
    block: bool = False


@dataclass
class SourceMap:
    """Positions of every key and value of one loaded file, addressed by pydantic-style locations."""

    path: str
    text: str
    keys: dict[Loc, Pos] = field(default_factory=dict)
    values: dict[Loc, Pos] = field(default_factory=dict)

    def value(self, loc: Loc) -> Pos:
        """Position of the value at ``loc``, or of its nearest enclosing value that exists."""
        return _nearest(self.values, loc)

    def key(self, loc: Loc) -> Pos:
        """Position of the key that names ``loc`` (falls back to the value for list items)."""
        if loc in self.keys:
            return self.keys[loc]
        return _nearest(self.values, loc)

    def diag(self, loc: Loc, code: str, message: str, *, at_key: bool = False, severity: str = "error") -> Diagnostic:
        pos = self.key(loc) if at_key else self.value(loc)
        return Diagnostic(self.path, pos.line, pos.col, code, message, severity)  # type: ignore[arg-type]


def _nearest(table: dict[Loc, Pos], loc: Loc) -> Pos:
    while loc not in table and loc:
        loc = loc[:-1]
    return table.get(loc, Pos(1, 1))


def load_yaml_file(path: str | Path, *, display_path: str | None = None) -> tuple[Any, SourceMap]:
    """Load one YAML file; raise FlowError with positions for anything we refuse."""
    shown = display_path or str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise FlowError([_too_big(shown, size)])
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FlowError([Diagnostic(shown, 1, 1, "E000", f"cannot read file: {exc.strerror}")]) from exc
    return load_yaml_bytes(raw, shown)


def _too_big(path: str, size: int) -> Diagnostic:
    return Diagnostic(path, 1, 1, "E080", f"file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB): split the flow")


def load_yaml_bytes(raw: bytes, path: str) -> tuple[Any, SourceMap]:
    if len(raw) > MAX_FILE_BYTES:
        raise FlowError([_too_big(path, len(raw))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FlowError([Diagnostic(path, line, col, "E085", "file is not valid UTF-8: save it as UTF-8")]) from exc
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM is harmless; editors on Windows add it
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise FlowError([Diagnostic(path, line, nul - (text.rfind("\n", 0, nul) + 1) + 1, "E085", "file contains a NUL byte")])
    return _Builder(text, path).build()


class _Builder:
    """Consumes ruamel parser events and builds (data, SourceMap) with a stack, never recursion."""

    def __init__(self, text: str, path: str) -> None:
        self.smap = SourceMap(path, text)
        self.path = path

    def _fail(self, mark: Any, code: str, message: str) -> FlowError:
        return FlowError([Diagnostic(self.path, mark.line + 1, mark.column + 1, code, message)])

    def build(self) -> tuple[Any, SourceMap]:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError

        events = YAML(typ="rt").parse(self.smap.text)
        try:
            return self._consume(events)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = (exc.problem or exc.context or "invalid YAML").strip()
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            hint = _syntax_hint(problem, self.smap.text.splitlines()[line - 1] if mark is not None and line <= self.smap.text.count("\n") + 1 else "")
            raise FlowError([Diagnostic(self.path, line, col, "E001", f"YAML syntax: {problem}{hint}")]) from None
        except YAMLError as exc:
            raise FlowError([Diagnostic(self.path, 1, 1, "E001", f"YAML syntax: {exc}")]) from None

    def _consume(self, events: Any) -> tuple[Any, SourceMap]:
        from ruamel.yaml import events as ev

        # Each frame: [container, loc, pending_key, pending_key_pos, seen_keys]
        stack: list[list[Any]] = []
        root: Any = None
        root_seen = False
        documents = 0
        for event in events:
            if isinstance(event, ev.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self._fail(event.start_mark, "E003", "a flow file holds exactly one YAML document: remove the second '---'")
                continue
            if isinstance(event, ev.AliasEvent):
                raise self._fail(event.start_mark, "E082", "aliases ('*name') are not allowed: repeat the value, or move shared settings to 'defaults'")
            if isinstance(event, (ev.ScalarEvent, ev.MappingStartEvent, ev.SequenceStartEvent)):
                if event.anchor is not None:
                    raise self._fail(event.start_mark, "E082", "anchors ('&name') are not allowed: repeat the value, or move shared settings to 'defaults'")
                if event.tag is not None:
                    raise self._fail(event.start_mark, "E083", f"tags ('{event.tag}') are not allowed: flow files hold plain data only")
            if isinstance(event, ev.ScalarEvent):
                value: Any = _resolve_scalar(event)
                pos = Pos(event.start_mark.line + 1, event.start_mark.column + 1,
                          quoted=event.style in ("'", '"'), block=event.style in ("|", ">"))
            elif isinstance(event, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                if len(stack) >= MAX_DEPTH:
                    raise self._fail(event.start_mark, "E081", f"nesting is deeper than {MAX_DEPTH} levels: flatten the structure")
                value = {} if isinstance(event, ev.MappingStartEvent) else []
                pos = Pos(event.start_mark.line + 1, event.start_mark.column + 1)
            elif isinstance(event, (ev.MappingEndEvent, ev.SequenceEndEvent)):
                stack.pop()
                continue
            else:
                continue

            if not stack:
                if root_seen:
                    raise self._fail(event.start_mark, "E003", "a flow file holds exactly one YAML document")
                root, root_seen = value, True
                self.smap.values[()] = pos
                if isinstance(value, (dict, list)):
                    stack.append([value, (), None, None, {}])
                continue
            frame = stack[-1]
            container, loc = frame[0], frame[1]
            if isinstance(container, list):
                child_loc = (*loc, len(container))
                container.append(value)
                self.smap.values[child_loc] = pos
            elif frame[3] is None:
                # this event is a key
                if not isinstance(value, str) or isinstance(event, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                    raise self._fail(event.start_mark, "E004", f"mapping keys must be text, got {_kind(value)}: quote the key")
                seen: dict[str, Pos] = frame[4]
                if value in seen:
                    first = seen[value]
                    raise self._fail(event.start_mark, "E030",
                                     f"duplicate key '{value}' (first defined at {first.line}:{first.col}): rename or remove one")
                seen[value] = pos
                frame[2], frame[3] = value, pos
                continue
            else:
                key = frame[2]
                child_loc = (*loc, key)
                container[key] = value
                self.smap.keys[child_loc] = frame[3]
                self.smap.values[child_loc] = pos
                frame[2], frame[3] = None, None
            if isinstance(value, (dict, list)):
                stack.append([value, child_loc, None, None, {}])
        return root, self.smap


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}.get(type(value), "text")


def _resolve_scalar(event: Any) -> Any:
    """YAML 1.2 core schema for plain scalars; quoted and block scalars are always text."""
    text: str = event.value
    if event.style is not None:
        return text
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT10.match(text):
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


def _syntax_hint(problem: str, line_text: str) -> str:
    if "${" in line_text and ("{" in line_text.replace("${", "") or "[" in line_text):
        return ' (inside {...} or [...], quote references: "${inputs.question}")'
    if "tab" in problem.lower():
        return " (indent with spaces, not tabs)"
    if "mapping values are not allowed" in problem:
        return " (a value containing ': ' must be quoted)"
    if "could not find expected ':'" in problem:
        return " (check the indentation of this line)"
    if "found character '@'" in problem or "found character '`'" in problem:
        return " (quote values that start with @ or `)"
    return ""
