"""Read a YAML file into plain Python data plus the position of every key and value.

Why our own tree builder on top of ruamel's event stream (reliability notes, section 1.4): the event
stream is produced without recursion, so depth, anchors, aliases, tags and extra documents are
rejected *before* anything is built (no billion-laughs traversal, no RecursionError), duplicate
keys can say where the first one was, and plain scalars resolve by YAML 1.2 core rules only
(`on`, `NO`, `12:30` stay strings). The result holds only dict, list, str, int, float, bool, None.
"""

from __future__ import annotations

import re
from bisect import bisect_right
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
#: Line breaks as YAML 1.2 and editors count them; positions are 1-based lines and characters.
_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of a flow file as positions count them (\r\n, \r or \n ends a line, nothing else)."""
    return _BREAK.split(text)


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in _BREAK.finditer(text))]


def _line_col(starts: list[int], index: int) -> tuple[int, int]:
    line = bisect_right(starts, index) - 1
    return line + 1, index - starts[line] + 1


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
    _starts: list[int] = field(default_factory=list, repr=False, compare=False)

    def position(self, index: int) -> tuple[int, int]:
        """1-based (line, col) of a character index into ``text``."""
        if not self._starts:
            self._starts = _line_starts(self.text)
        return _line_col(self._starts, index)

    def find(self, pos: Pos, needle: str, nth: int = 0) -> tuple[int, int] | None:
        """Position of the ``nth`` (0-based) ``needle`` in the source at or after ``pos``, if any.

        Used to place a ``${`` inside a value whose source differs from the loaded text (escapes,
        folded or multi-line scalars)."""
        if not self._starts:
            self._starts = _line_starts(self.text)
        if pos.line > len(self._starts):
            return None
        index = self._starts[pos.line - 1] + pos.col - 1
        for _ in range(nth + 1):
            index = self.text.find(needle, index)
            if index < 0:
                return None
            index += len(needle)
        return self.position(index - len(needle))

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
        before = raw[: exc.start].decode("utf-8").removeprefix("\ufeff")  # valid up to the bad byte; columns count characters
        line, col = _line_col(_line_starts(before), len(before))
        raise FlowError([Diagnostic(path, line, col, "E085", "file is not valid UTF-8: save it as UTF-8")]) from exc
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM is harmless; editors on Windows add it
    nul = text.find("\x00")
    if nul >= 0:
        line, col = _line_col(_line_starts(text), nul)
        raise FlowError([Diagnostic(path, line, col, "E085", "file contains a NUL byte")])
    return _Builder(text, path).build()


class _Builder:
    """Consumes ruamel parser events and builds (data, SourceMap) with a stack, never recursion."""

    def __init__(self, text: str, path: str) -> None:
        self.smap = SourceMap(path, text)
        self.path = path
        self.starts = _line_starts(text)
        self._documents = 0

    def _at(self, mark: Any) -> tuple[int, int]:
        """(line, col) of a ruamel mark, from its character index: ruamel's own line count also breaks at
        \x85, U+2028 and U+2029, which editors and YAML 1.2 do not."""
        return _line_col(self.starts, mark.index)

    def _fail(self, mark: Any, code: str, message: str) -> FlowError:
        return FlowError([Diagnostic(self.path, *self._at(mark), code, message)])

    def build(self) -> tuple[Any, SourceMap]:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError
        from ruamel.yaml.reader import ReaderError

        events = YAML(typ="rt").parse(self.smap.text)
        try:
            return self._consume(events)
        except MarkedYAMLError as exc:
            raise FlowError([self._syntax_error(exc)]) from None
        except ReaderError as exc:
            line, col = _line_col(self.starts, exc.position)
            message = f"YAML syntax: character {chr(exc.character)!r} (U+{exc.character:04X}) is not allowed in YAML: remove it"
            raise FlowError([Diagnostic(self.path, line, col, "E001", message)]) from None
        except YAMLError as exc:
            raise FlowError([Diagnostic(self.path, 1, 1, "E001", f"YAML syntax: {exc}")]) from None

    def _syntax_error(self, exc: Any) -> Diagnostic:
        """E001 at the token that broke the file; an unclosed quote or bracket points at its opening."""
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        context = (exc.context or "").strip() if exc.problem else ""
        mark, other = exc.problem_mark or exc.context_mark, exc.context_mark if exc.problem else None
        if other is not None and "end of stream" in problem:
            mark, other = other, None  # the end of the file is no place to fix an unclosed scalar
            what = context.removeprefix("while ").removeprefix("scanning ").removeprefix("parsing ") or "a value"
            problem = f"{what} that starts here is never closed (the file ends inside it): close it"
        elif other is not None and mark is not None and self._at(other)[0] != self._at(mark)[0]:
            opened = "{}:{}".format(*self._at(other))
            closer = {"flow mapping": ("{", "}"), "flow sequence": ("[", "]")}
            kind = next((k for k in closer if k in context), None)
            problem += f" (the '{closer[kind][0]}' at {opened} is not closed: add '{closer[kind][1]}')" if kind else f" ({context} that starts at {opened})"
        lines = split_lines(self.smap.text)
        if lines[-1] == "" and len(lines) > 1:
            lines.pop()  # the empty 'line' after the final line break
        line, col = self._at(mark) if mark is not None else (1, 1)
        if line > len(lines):  # a mark past the last line: point at the end of the last one
            line, col = len(lines), len(lines[-1]) + 1
        hint = _syntax_hint(problem, lines[line - 1] if 0 < line <= len(lines) else "", lines[: line - 1])
        return Diagnostic(self.path, line, col, "E001", f"YAML syntax: {problem}{hint}")

    def _consume(self, events: Any) -> tuple[Any, SourceMap]:
        from ruamel.yaml import events as ev

        stack: list[_Frame] = []
        root: list[Any] = []  # the one top-level value, once seen
        for event in events:
            self._refuse(event, ev)
            if isinstance(event, (ev.MappingEndEvent, ev.SequenceEndEvent)):
                stack.pop()
                continue
            if not isinstance(event, (ev.ScalarEvent, ev.MappingStartEvent, ev.SequenceStartEvent)):
                continue
            value, pos = self._value(event, ev, len(stack))
            if not stack:
                if root:
                    raise self._fail(event.start_mark, "E003", "a flow file holds exactly one YAML document")
                root.append(value)
                self.smap.values[()] = pos
                child_loc: Loc | None = ()
            else:
                child_loc = self._attach(stack[-1], event, ev, value, pos)
            if child_loc is not None and isinstance(value, (dict, list)):
                stack.append(_Frame(value, child_loc))
        return (root[0] if root else None), self.smap

    def _refuse(self, event: Any, ev: Any) -> None:
        """Everything refused before a value is built: extra documents, aliases, anchors, tags."""
        if isinstance(event, ev.DocumentStartEvent):
            self._documents += 1
            if self._documents > 1:
                raise self._fail(event.start_mark, "E003", "a flow file holds exactly one YAML document: remove the second '---'")
        elif isinstance(event, ev.AliasEvent):
            raise self._fail(event.start_mark, "E082", "aliases ('*name') are not allowed: repeat the value, or move shared settings to 'defaults'")
        elif isinstance(event, (ev.ScalarEvent, ev.MappingStartEvent, ev.SequenceStartEvent)):
            if event.anchor is not None:
                raise self._fail(event.start_mark, "E082", "anchors ('&name') are not allowed: repeat the value, or move shared settings to 'defaults'")
            if event.tag is not None:
                raise self._fail(event.start_mark, "E083", f"tags ('{_short_tag(event.tag)}') are not allowed: flow files hold plain data only")

    def _value(self, event: Any, ev: Any, depth: int) -> tuple[Any, Pos]:
        if isinstance(event, ev.ScalarEvent):
            return _resolve_scalar(event), Pos(*self._at(event.start_mark), quoted=event.style in ("'", '"'), block=event.style in ("|", ">"))
        if depth >= MAX_DEPTH:
            raise self._fail(event.start_mark, "E081", f"nesting is deeper than {MAX_DEPTH} levels: flatten the structure")
        return ({} if isinstance(event, ev.MappingStartEvent) else []), Pos(*self._at(event.start_mark))

    def _attach(self, frame: _Frame, event: Any, ev: Any, value: Any, pos: Pos) -> Loc | None:
        """Put a value into its parent; return its location, or None when it was a mapping key."""
        if isinstance(frame.container, list):
            child_loc: Loc = (*frame.loc, len(frame.container))
            frame.container.append(value)
            self.smap.values[child_loc] = pos
            return child_loc
        if frame.key_pos is None:  # this value is a key
            if not isinstance(value, str) or isinstance(event, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                raise self._fail(event.start_mark, "E004", f"mapping keys must be text, got {_kind(value)}: quote the key")
            if value in frame.seen:
                first = frame.seen[value]
                raise self._fail(event.start_mark, "E030", f"duplicate key '{value}' (first defined at {first.line}:{first.col}): rename or remove one")
            frame.seen[value] = pos
            frame.key, frame.key_pos = value, pos
            return None
        child_loc = (*frame.loc, frame.key)
        frame.container[frame.key] = value
        self.smap.keys[child_loc] = frame.key_pos
        # an empty value ('key:' and nothing) has no token of its own: ruamel marks the next one
        empty = value is None and isinstance(event, ev.ScalarEvent) and event.value == "" and event.style is None
        self.smap.values[child_loc] = frame.key_pos if empty else pos
        frame.key, frame.key_pos = "", None
        return child_loc


@dataclass(slots=True)
class _Frame:
    """An open mapping or list while the event stream is read."""

    container: Any
    loc: Loc
    key: str = ""
    key_pos: Pos | None = None  # set between reading a key and reading its value
    seen: dict[str, Pos] = field(default_factory=dict)


def _short_tag(tag: Any) -> str:
    """A tag as the file spells it: 'tag:yaml.org,2002:python/...' was written '!!python/...'."""
    return str(tag).replace("tag:yaml.org,2002:", "!!", 1)


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


def _syntax_hint(problem: str, line_text: str, before: list[str] | None = None) -> str:
    if "${" in line_text and ("{" in line_text.replace("${", "") or "[" in line_text):
        return ' (inside {...} or [...], quote references: "${inputs.question}")'
    if "tab" in problem.lower() or "'\\t'" in problem:
        return " (indent with spaces, not tabs)"
    if "mapping values are not allowed" in problem:
        above = next((t for t in reversed(before or []) if t.strip() and not t.lstrip().startswith("#")), None)
        if above is not None and _indent(line_text) > _indent(above) and not above.rstrip().endswith(":"):
            return " (this line is indented deeper than the line above: align it with its siblings)"
        return " (a value containing ': ' must be quoted)"
    if "could not find expected ':'" in problem:
        return " (check the indentation of this line)"
    if "found character '@'" in problem or "found character '`'" in problem:
        return " (quote values that start with @ or `)"
    return ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))
