"""Chunking: headings, overlap, line ranges and titles for Markdown, text, HTML and PDF (real pypdf)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rillflow.nodes.chunking import Line, chunk_lines, html_lines, markdown_lines, split_document

CORPUS = Path(__file__).resolve().parent / "corpus"


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A real PDF whose pages draw these lines in Helvetica (how tests/corpus/lantern-protocol.pdf was made)."""
    from pypdf import PdfWriter
    from pypdf.generic import ContentStream, DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica"), NameObject("/Encoding"): NameObject("/WinAnsiEncoding")})
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"]
        ops += ["(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*" for line in lines]
        stream = StreamObject()
        stream.set_data("\n".join([*ops, "ET"]).encode("latin-1"))
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        page.replace_contents(ContentStream(stream, writer))
    if title is not None:
        writer.add_metadata({"/Title": title})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- Markdown ------------------------------------------------------------------------------------
GUIDE = """\
# Guide

Intro line.

## Install

Run the installer.

```bash
# not a heading: inside a code fence
make install
```

### On Linux

Use the package.

## Usage
"""


def test_markdown_sections_carry_their_heading_path_and_line_range() -> None:
    doc = split_document("guide.md", GUIDE.encode())
    got = [(p.heading, p.start, p.end) for p in doc.passages]
    assert got == [("Guide", 1, 3), ("Guide > Install", 5, 12), ("Guide > Install > On Linux", 14, 16)]
    assert doc.title == "Guide"
    assert doc.unit == "lines"
    assert "# not a heading: inside a code fence" in doc.passages[1].text


def test_heading_without_text_under_it_makes_no_passage() -> None:
    doc = split_document("guide.md", GUIDE.encode())
    assert not any(p.heading.endswith("Usage") for p in doc.passages)


def test_setext_headings_and_front_matter_title() -> None:
    text = "---\ntitle: 'Front Title'\n---\nMain\n====\n\nBody.\n\nPart\n----\nMore body.\n\n---\n\nAfter a rule.\n"
    lines, title = markdown_lines(text)
    assert title == "Front Title"
    assert [(ln.text, ln.level) for ln in lines if ln.level] == [("Main", 1), ("Part", 2)]
    doc = split_document("x.md", text.encode())
    assert [p.heading for p in doc.passages] == ["Main", "Main > Part"]
    assert "After a rule." in doc.passages[-1].text  # a '---' after a blank line is a rule, not a heading


def test_title_falls_back_to_the_first_h1_then_the_file_name() -> None:
    assert split_document("a.md", b"## Sub\n\ntext\n\n# Top\n\nmore\n").title == "Top"
    assert split_document("release-notes_2024.md", b"no headings here\n").title == "release notes 2024"


def test_long_section_splits_with_overlap_and_exact_line_ranges() -> None:
    body = "\n".join(f"Line {i} says something distinct about topic {i}." for i in range(1, 41))
    doc = split_document("long.md", f"# Long\n{body}\n".encode(), chunk_size=300, overlap=100)
    assert len(doc.passages) > 3
    lines = body.splitlines()
    for prev, nxt in zip(doc.passages, doc.passages[1:], strict=False):
        assert nxt.text.splitlines()[0] in prev.text  # the next passage starts with the end of the previous one
        assert nxt.start <= prev.end
    for p in doc.passages:
        assert len(p.text) <= 300
        assert p.heading == "Long"
        first_body_line = 2  # line 1 is the heading
        expected = [ln for ln in p.text.splitlines() if ln != "Long"]
        assert expected == lines[max(p.start, first_body_line) - first_body_line : p.end - first_body_line + 1]


def test_a_line_longer_than_the_chunk_splits_at_sentences() -> None:
    sentences = [f"Sentence number {i} is here." for i in range(60)]
    doc = split_document("one.txt", " ".join(sentences).encode(), chunk_size=200, overlap=40)
    assert len(doc.passages) > 5
    assert all(len(p.text) <= 200 and p.start == p.end == 1 for p in doc.passages)
    joined = " ".join(p.text for p in doc.passages)
    assert all(s in joined for s in sentences)


def test_zero_overlap_repeats_nothing() -> None:
    body = "\n".join(f"Unique line {i:03d} of the document." for i in range(50))
    doc = split_document("a.txt", body.encode(), chunk_size=200, overlap=0)
    seen = [ln for p in doc.passages for ln in p.text.splitlines()]
    assert seen == body.splitlines()


@pytest.mark.parametrize(("size", "overlap", "message"), [(50, 0, "too small"), (200, 150, "half the chunk size"), (200, -1, "overlap")])
def test_bad_sizes_are_refused(size: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_document("a.md", b"text", chunk_size=size, overlap=overlap)


def test_unsupported_suffix_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"unsupported file type .*\.md.*\.pdf"):
        split_document("a.docx", b"x")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=400), max_size=40),
       st.integers(100, 600), st.integers(0, 50))
def test_every_word_lands_in_a_passage_within_the_size(texts: list[str], size: int, overlap: int) -> None:
    lines = [Line(i, t) for i, t in enumerate(texts, start=1)]
    passages = chunk_lines(lines, chunk_size=size, overlap=overlap)
    assert all(len(p.text) <= size for p in passages)
    assert all(1 <= p.start <= p.end <= len(texts) for p in passages)
    words = " ".join(p.text for p in passages).split()
    for text in texts:
        for word in text.split():
            assert any(word in w for w in words) or len(word) > size - overlap


# -- plain text, HTML, PDF -----------------------------------------------------------------------
def test_corpus_text_file_keeps_line_numbers() -> None:
    doc = split_document("orbital-bakery.txt", (CORPUS / "orbital-bakery.txt").read_bytes())
    assert doc.format == "text" and doc.title == "orbital bakery"
    [passage] = [p for p in doc.passages if "Bubbles" in p.text]
    assert passage.start <= 4 <= passage.end


def test_html_drops_script_and_style_and_keeps_headings() -> None:
    doc = split_document("museum.html", (CORPUS / "glimmerstone-museum.html").read_bytes())
    text = "\n".join(p.text for p in doc.passages)
    assert doc.title == "Glimmerstone Museum"
    assert "do not index this script" not in text and "font-family" not in text
    assert [p.heading for p in doc.passages] == ["Glimmerstone Museum", "Glimmerstone Museum > Opening hours and tickets",
                                                 "Glimmerstone Museum > The Dark Hall"]
    dark = doc.passages[-1]
    assert "crystals\u2019 glow" in dark.text  # &rsquo; decoded
    assert "Audio guides in four languages\nStep-free access" in dark.text  # list items are lines
    assert (dark.start, dark.end) == (18, 23)  # lines of the <h2> and of the last <li> in the file


def test_html_line_numbers_point_into_the_source() -> None:
    lines, title = html_lines("<html>\n<body>\n<h1>T</h1>\n\n<p>\n  first\n  second</p>\n<pre>a\nb</pre>\n</body>\n</html>\n")
    assert title == "T"
    assert [(ln.number, ln.text, ln.level) for ln in lines] == [(3, "T", 1), (6, "first second", 0), (8, "a", 0), (9, "b", 0)]


def test_corpus_pdf_text_comes_out_by_page() -> None:
    doc = split_document("lantern-protocol.pdf", (CORPUS / "lantern-protocol.pdf").read_bytes())
    assert doc.format == "pdf" and doc.unit == "pages"
    assert doc.title == "The Lantern Protocol"
    text = "\n".join(p.text for p in doc.passages)
    assert "rings the handover bell twice" in text and "red storm lens" in text
    assert (doc.passages[0].start, doc.passages[-1].end) == (1, 2)


def test_pdf_pages_give_each_passage_its_page_range() -> None:
    pages = [[f"Page {n} line {i} about subject {n * 100 + i}." for i in range(30)] for n in (1, 2, 3)]
    doc = split_document("big.pdf", make_pdf(pages), chunk_size=400, overlap=0)
    assert doc.title == "big"  # no title metadata
    assert {(p.start, p.end) for p in doc.passages} >= {(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)}
    for p in doc.passages:
        pages_seen = {int(line.split()[1]) for line in p.text.splitlines()}
        assert (min(pages_seen), max(pages_seen)) == (p.start, p.end)


def test_broken_pdf_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot read this PDF"):
        split_document("broken.pdf", b"%PDF-1.7\nthis is not a pdf at all")
