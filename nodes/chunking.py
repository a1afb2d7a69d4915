"""Split documents into passages for retrieval: pure functions over the bytes of one file.

Every format first becomes a list of ``Line`` (text, its line number in the file, and a heading level
for heading lines): Markdown (ATX and setext headings, not inside code fences; front matter skipped),
plain text, HTML (the standard library's ``html.parser``; script and style dropped, ``h1``-``h6``
kept as headings) and PDF (pypdf's text per page; the "line" of a PDF line is its page number).

Lines are cut into sections at headings, so a passage never mixes two sections and always knows its
heading path ("Install > Linux"). A section longer than ``chunk_size`` characters is packed into
several passages, each starting with up to ``overlap`` characters from the end of the one before
(whole lines where they fit), so a sentence cut at a boundary is still found whole in one of them.
Sizes are in characters, not tokens: all-MiniLM-L6-v2 reads 256 word pieces, about 1,000 characters
of English, so the default of 800 stays inside what the embedder sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import NamedTuple

#: File suffix -> format. Files with other suffixes are not ingested.
FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}

DEFAULT_CHUNK_SIZE = 800
DEFAULT_OVERLAP = 120


class Line(NamedTuple):
    number: int  # 1-based line in the file (page number for PDFs)
    text: str
    level: int = 0  # 1-6 for a heading line, 0 for body text


@dataclass(frozen=True, slots=True)
class Passage:
    """One chunk of a document: its text, the heading path above it and the lines it covers."""

    text: str
    heading: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Document:
    title: str
    format: str
    unit: str  # what Passage.start/end count: "lines", or "pages" for PDFs
    passages: list[Passage]


class _Unit(NamedTuple):
    text: str
    number: int
    joiner: str  # put before this unit when it follows another: "\n", or " " inside a split line


def split_document(name: str, data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP) -> Document:
    """Passages of one file, chosen by its suffix (see ``FORMATS``). Raises ValueError for an unknown
    suffix or a PDF pypdf cannot read."""
    check_sizes(chunk_size, overlap)
    fmt = FORMATS.get(PurePath(name).suffix.lower())
    if fmt is None:
        raise ValueError(f"{name}: unsupported file type (supported: {', '.join(sorted(FORMATS))})")
    title: str | None = None
    if fmt == "pdf":
        lines, title = pdf_lines(data)
    else:
        text = data.decode("utf-8-sig", errors="replace")
        if fmt == "markdown":
            lines, title = markdown_lines(text)
        elif fmt == "html":
            lines, title = html_lines(text)
        else:
            lines = text_lines(text)
    title = title or _stem_title(name)
    unit = "pages" if fmt == "pdf" else "lines"
    return Document(title, fmt, unit, chunk_lines(lines, chunk_size=chunk_size, overlap=overlap))


def check_sizes(chunk_size: int, overlap: int) -> None:
    if chunk_size < 100:
        raise ValueError(f"chunk size {chunk_size} is too small: use at least 100 characters")
    if not 0 <= overlap <= chunk_size // 2:
        raise ValueError(f"overlap {overlap} must be between 0 and half the chunk size ({chunk_size // 2})")


def _stem_title(name: str) -> str:
    return re.sub(r"[-_]+", " ", PurePath(name).stem).strip() or PurePath(name).name


# -- formats -----------------------------------------------------------------------------------
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def markdown_lines(text: str) -> tuple[list[Line], str | None]:
    """Lines with ATX (``## x``) and setext (``x`` over ``===``) headings marked; the title is the
    front matter's ``title:``, else the first level-1 heading, else the first heading."""
    raw = text.splitlines()
    first, title = _front_matter(raw)
    lines: list[Line] = []
    fence = ""
    for number, line in enumerate(raw[first:], start=first + 1):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append(Line(number, line))
            continue
        if opened:
            fence = opened.group(1)
            lines.append(Line(number, line))
            continue
        atx = _ATX.match(line)
        if atx:
            lines.append(Line(number, (atx.group(2) or "").strip(), len(atx.group(1))))
        elif _SETEXT.match(line) and lines and _setext_target(lines, number):
            prev = lines[-1]
            lines[-1] = Line(prev.number, prev.text.strip(), 1 if line.strip()[0] == "=" else 2)
        else:
            lines.append(Line(number, line))
    headings = [ln for ln in lines if ln.level and ln.text]
    if title is None and headings:
        title = next((h.text for h in headings if h.level == 1), headings[0].text)
    return lines, title


def _setext_target(lines: list[Line], number: int) -> bool:
    """The line just above is a one-line paragraph (so ``---`` under text is a heading, not a rule)."""
    prev = lines[-1]
    if prev.number != number - 1 or prev.level or not prev.text.strip():
        return False
    return len(lines) == 1 or lines[-2].level > 0 or not lines[-2].text.strip()


def _front_matter(raw: list[str]) -> tuple[int, str | None]:
    """(index of the first line after YAML front matter, its ``title:``)."""
    if not raw or raw[0].strip() != "---":
        return 0, None
    for i, line in enumerate(raw[1:50], start=1):
        if line.strip() in ("---", "..."):
            titles = [m.group(1) for m in (re.match(r"^title:\s*(.+?)\s*$", r) for r in raw[1:i]) if m]
            return i + 1, titles[0].strip("'\"") if titles else None
    return 0, None


def text_lines(text: str) -> list[Line]:
    return [Line(n, line) for n, line in enumerate(text.splitlines(), start=1)]


def pdf_lines(data: bytes) -> tuple[list[Line], str | None]:
    """Text lines of every page (numbered by page) and the document's title metadata."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        lines = [Line(page_no, line) for page_no, page in enumerate(reader.pages, start=1) for line in page.extract_text().splitlines()]
        title = reader.metadata.title if reader.metadata is not None else None
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError) as exc:  # pypdf raises plain errors on broken files
        raise ValueError(f"cannot read this PDF: {exc}") from exc
    return lines, (title.strip() or None) if isinstance(title, str) else None


_DROP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "form", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "th", "thead", "tr", "ul",
})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HTMLText(HTMLParser):
    """Text lines of an HTML page, each numbered by the source line where its text starts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[Line] = []
        self.title: str | None = None
        self._parts: list[str] = []
        self._number = 0
        self._level = 0
        self._dropping: list[str] = []
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP:
            self._dropping.append(tag)
        elif tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            self._flush()
            self._level = _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._flush()
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if self._dropping and tag == self._dropping[-1]:
            self._dropping.pop()
        elif tag == "title":
            self._in_title = False
        elif tag in _HEADINGS or tag in _BLOCKS:
            self._flush()
            self._level = 0
            self._pre -= tag == "pre" and self._pre > 0

    def handle_data(self, data: str) -> None:
        if self._dropping:
            return
        if self._in_title:
            self.title = " ".join(((self.title or "") + " " + data).split()) or None
            return
        if not self._pre:
            self._add(" ".join(data.split()), data)
            return
        line_no = self.getpos()[0]
        for i, piece in enumerate(data.split("\n")):  # preformatted: keep its line breaks
            if i:
                self._flush()
            self._number = self._number or line_no + i
            self._parts.append(piece)

    def _add(self, text: str, raw: str) -> None:
        if not text:
            if self._parts and raw:
                self._parts.append(" ")
            return
        if not self._parts:  # the text starts after any leading newlines of this data
            self._number = self.getpos()[0] + raw[: len(raw) - len(raw.lstrip())].count("\n")
        elif raw[:1].isspace() and not self._parts[-1].endswith(" "):
            self._parts.append(" ")
        self._parts.append(text + (" " if raw[-1:].isspace() else ""))

    def _flush(self) -> None:
        text = "".join(self._parts).rstrip() if self._pre else "".join(self._parts).strip()
        if text:
            self.lines.append(Line(self._number, text, self._level))
        self._parts = []
        self._number = 0


def html_lines(text: str) -> tuple[list[Line], str | None]:
    """Visible text as lines (headings marked); the title is ``<title>``, else the first ``h1``."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    title = parser.title or next((ln.text for ln in parser.lines if ln.level == 1), None)
    return parser.lines, title


# -- sections and packing ------------------------------------------------------------------------
def chunk_lines(lines: Iterable[Line], *, chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Passage]:
    """Passages of at most ``chunk_size`` characters, never crossing a heading."""
    check_sizes(chunk_size, overlap)
    passages: list[Passage] = []
    for heading, section in _sections(lines):
        if not any(ln.text.strip() and not ln.level for ln in section):
            continue  # a heading with no text under it says nothing on its own
        units = [u for ln in section for u in _units(ln, chunk_size - overlap)]
        passages.extend(_pack(units, heading, chunk_size, overlap))
    return passages


def _sections(lines: Iterable[Line]) -> list[tuple[str, list[Line]]]:
    sections: list[tuple[str, list[Line]]] = []
    stack: list[tuple[int, str]] = []
    current: list[Line] = []
    heading = ""
    for line in lines:
        if line.level:
            if current:
                sections.append((heading, current))
            while stack and stack[-1][0] >= line.level:
                stack.pop()
            if line.text:
                stack.append((line.level, line.text))
            heading = " > ".join(text for _, text in stack)
            current = []
        current.append(line)
    if current:
        sections.append((heading, current))
    return sections


def _units(line: Line, limit: int) -> list[_Unit]:
    text = line.text.rstrip()
    if len(text) <= limit:
        return [_Unit(text, line.number, "\n")]
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    pieces = _greedy((p for s in sentences for p in ([s] if len(s) <= limit else _words(s, limit))), limit)
    return [_Unit(p, line.number, "\n" if i == 0 else " ") for i, p in enumerate(pieces)]


def _words(text: str, limit: int) -> list[str]:
    words = [w[i : i + limit] for w in text.split() for i in range(0, len(w), limit)]
    return _greedy(words, limit)


def _greedy(pieces: Iterable[str], limit: int) -> list[str]:
    """Join pieces with spaces into runs of at most ``limit`` characters."""
    runs: list[str] = []
    for piece in pieces:
        if runs and len(runs[-1]) + 1 + len(piece) <= limit:
            runs[-1] += " " + piece
        else:
            runs.append(piece)
    return runs


def _pack(units: list[_Unit], heading: str, chunk_size: int, overlap: int) -> list[Passage]:
    passages: list[Passage] = []
    current: list[_Unit] = []
    fresh = False  # current holds something not yet emitted (beyond the overlap it started with)
    for unit in units:
        if not current and not unit.text.strip():
            continue
        if current and fresh and _length([*current, unit]) > chunk_size:
            passages.append(_passage(current, heading))
            current = _tail(current, overlap)
        while current and _length([*current, unit]) > chunk_size:
            current.pop(0)  # the overlap must give way to new text
        current.append(unit)
        fresh = fresh or bool(unit.text.strip())
    if current and fresh:
        passages.append(_passage(current, heading))
    return [p for p in passages if p.text]


def _length(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units) + sum(len(u.joiner) for u in units[1:])


def _tail(units: list[_Unit], overlap: int) -> list[_Unit]:
    """The end of a passage to repeat at the start of the next: whole lines while they fit, else the
    last line's final words."""
    tail: list[_Unit] = []
    for unit in reversed(units):
        if _length([unit, *tail]) > overlap:
            break
        tail.insert(0, unit)
    while tail and not tail[0].text.strip():
        tail.pop(0)
    if tail or overlap == 0:
        return tail
    last = units[-1]
    words = last.text[-overlap:].split(" ", 1)
    piece = words[-1].strip() if len(last.text) > overlap else last.text.strip()
    return [_Unit(piece, last.number, last.joiner)] if piece else []


def _passage(units: list[_Unit], heading: str) -> Passage:
    while units and not units[-1].text.strip():
        units = units[:-1]
    text = "".join((u.joiner if i else "") + u.text for i, u in enumerate(units)).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    numbers = [u.number for u in units if u.text.strip()]
    return Passage(text, heading, min(numbers, default=0), max(numbers, default=0))
