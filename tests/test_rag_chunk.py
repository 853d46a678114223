"""Reading documents (Markdown, HTML, PDF, text) and cutting them into token-bounded, overlapping chunks.

Token counts come from a whitespace "tokenizer" (one token per word, plus 2 specials) so that every bound
can be checked exactly; the real encoder's bound is checked in test_rag_index.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pellucid.rag.chunk import ChunkSettings, chunk_document, split_text
from pellucid.rag.documents import Document, DocumentError, Section, read_document


def count_words(text: str) -> int:
    return len(text.split()) + 2  # [CLS] ... [SEP]


def content_words(text: str) -> int:
    return len(text.split())


# -- documents ----------------------------------------------------------------------------------------------


def test_markdown_sections_and_title(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(
        "# My Notes\n\nIntro text.\n\n## Install\n\nRun the installer.\n\n### Network\n\nPlug the cable.\n\n"
        "```sh\n# not a heading\necho hi\n```\n\n## Use\n\nStart it.\n"
    )
    doc = read_document(path)
    assert doc.title == "My Notes"
    assert [(s.headings, s.text.splitlines()[0]) for s in doc.sections] == [
        ([], "Intro text."),
        (["Install"], "Run the installer."),
        (["Install", "Network"], "Plug the cable."),
        (["Use"], "Start it."),
    ]
    assert "# not a heading" in doc.sections[2].text


def test_html_skips_scripts_and_navigation(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>The Page</title><style>p {color: red}</style></head><body>"
        "<nav>Home | About</nav><div class='navheader'>Prev Next</div>"
        "<h1>The Page</h1><p>First&nbsp;paragraph &amp; more.<br/>Second line.</p>"
        "<script>alert('x')</script><h2>Details</h2><p>Some <b>bold</b> text.<p>Unclosed paragraph."
        "<div class='toc'><a href='#x'>1. Details</a></div><h3>Deeper</h3><ul><li>one<li>two</ul>"
        "<div class='navfooter'><hr/>Chapter 2</div></body></html>"
    )
    doc = read_document(path)
    assert doc.title == "The Page"
    text = doc.text
    for boilerplate in ("Home", "Prev", "alert", "color", "1. Details", "Chapter 2"):
        assert boilerplate not in text
    assert [s.headings for s in doc.sections] == [
        ["The Page"],
        ["The Page", "Details"],
        ["The Page", "Details", "Deeper"],
    ]
    assert doc.sections[0].text == "First paragraph & more.\nSecond line."
    assert [line for line in doc.sections[1].text.splitlines() if line] == ["Some bold text.", "Unclosed paragraph."]
    assert doc.sections[2].text.split() == ["one", "two"]


def test_text_and_unreadable_files(tmp_path):
    (tmp_path / "plain.txt").write_text("Just some text.\n")
    doc = read_document(tmp_path / "plain.txt")
    assert (doc.title, doc.text) == ("plain", "Just some text.")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DocumentError, match="not UTF-8"):
        read_document(tmp_path / "latin1.txt")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(DocumentError, match="cannot read the PDF"):
        read_document(tmp_path / "broken.pdf")


def _minimal_pdf(pages: list[str], title: str) -> bytes:
    """A valid PDF with one line of Helvetica text per page, written by hand (offsets in the xref)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        content = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
                       "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")  # fmt: skip
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    objects.append(f"<< /Title ({title}) >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_pages_become_sections(tmp_path):
    path = tmp_path / "paper.pdf"
    path.write_bytes(_minimal_pdf(["Hello from page one.", "Page two says goodbye."], "A Paper"))
    doc = read_document(path)
    assert doc.title == "A Paper"
    assert [(s.headings, s.text) for s in doc.sections] == [
        (["page 1"], "Hello from page one."),
        (["page 2"], "Page two says goodbye."),
    ]


# -- chunking -----------------------------------------------------------------------------------------------


def _long_section(n_sentences: int) -> str:
    return " ".join(f"Sentence number {i} has exactly seven words." for i in range(n_sentences))


def test_chunks_respect_the_budget_and_overlap():
    doc = Document(Path("a.md"), "Title", [Section(["Part", "Sub"], _long_section(60))])  # 420 words
    chunks = chunk_document(doc, count_words, max_tokens=64, settings=ChunkSettings(300, 0.15))
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.context == "Title > Part > Sub" and chunk.section == "Part > Sub"
        assert chunk.n_tokens == count_words(chunk.embed_text) <= 64  # the encoder's limit, not the 300 asked
    # Consecutive chunks share whole sentences (15% of ~56 tokens = 8 tokens = one 7-word sentence).
    for a, b in zip(chunks, chunks[1:]):
        assert b.text.split(".")[0] in a.text
    # Every sentence of the section is in some chunk.
    sentences = re.findall(r"Sentence number \d+ ", doc.sections[0].text)
    assert all(any(s in c.text for c in chunks) for s in sentences)


def test_chunk_tokens_setting_caps_below_the_encoder_limit():
    doc = Document(Path("a.txt"), "t", [Section([], _long_section(100))])
    chunks = chunk_document(doc, count_words, max_tokens=512, settings=ChunkSettings(40, 0.1))
    assert max(content_words(c.text) for c in chunks) <= 40 - content_words("t") - 2


def test_overlong_sentences_and_words_are_split():
    text = "word " * 100 + "x" * 500  # one 100-word "sentence", then a 500-character token soup
    windows = split_text(text, lambda t: len(t.split()) + t.count("x") // 10, 30, 5)
    assert all(len(w.split()) + w.count("x") // 10 <= 30 for w in windows)
    assert "".join(windows).count("x") >= 500  # nothing lost (overlap may repeat some)


def test_title_repeated_as_first_heading_is_said_once():
    doc = Document(Path("p.html"), "Guide", [Section(["Guide", "Intro"], "Hello there.")])
    (chunk,) = chunk_document(doc, count_words, max_tokens=64)
    assert (chunk.context, chunk.section) == ("Guide > Intro", "Intro")


def test_long_heading_paths_are_shortened_from_the_left():
    headings = [f"heading {i} " + "word " * 10 for i in range(6)]
    doc = Document(Path("p.md"), "T", [Section(headings, "Body text here.")])
    (chunk,) = chunk_document(doc, count_words, max_tokens=64)
    assert content_words(chunk.context) <= 64 // 4
    assert chunk.context.startswith("heading") and "heading 5" in chunk.context


def test_settings_are_validated():
    with pytest.raises(ValueError):
        ChunkSettings(8)
    with pytest.raises(ValueError):
        ChunkSettings(300, 0.7)
    assert ChunkSettings().describe() == "300t/0.15"
