"""Reading documents: a file on disk -> its title and its text, section by section.

Chunks keep the headings above them as context (a paragraph under "Installing > Networking" means more
with that path attached), so readers return sections rather than one flat string:

- Markdown (.md, .markdown): `#` headings open sections; the first level-1 heading is the title.
- HTML (.html, .htm): h1-h6 open sections; <title> (else the first h1) is the title. Scripts, styles and
  navigation (<nav>, and elements whose class names a nav bar, table of contents or menu) are skipped:
  they repeat on every page and would match every query.
- PDF (.pdf, via pypdf): one section per page ("page 3"); the document's metadata title, else the file name.
- Plain text (.txt and anything else we accept): one section; the title is the file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from pellucid.errors import PellucidError

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
            ".htm": "html", ".pdf": "pdf"}  # fmt: skip


class DocumentError(PellucidError):
    """A document that cannot be read (corrupt PDF, not UTF-8 text, ...)."""


@dataclass
class Section:
    headings: list[str]  # the heading path above this text, outermost first; [] before the first heading
    text: str

    @property
    def name(self) -> str:
        return " > ".join(self.headings)


@dataclass
class Document:
    path: Path
    title: str
    sections: list[Section] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


def read_document(path: Path) -> Document:
    """Parse `path` by its suffix (see SUFFIXES); unknown suffixes are read as plain text."""
    kind = SUFFIXES.get(path.suffix.lower(), "text")
    if kind == "pdf":
        return read_pdf(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it first") from None
    if kind == "markdown":
        return parse_markdown(text, path)
    if kind == "html":
        return parse_html(text, path)
    return Document(path, path.stem, [Section([], text.strip())] if text.strip() else [])


# -- Markdown -----------------------------------------------------------------------------------------------

ATX_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def parse_markdown(text: str, path: Path) -> Document:
    title = None
    stack: list[tuple[int, str]] = []  # (level, heading) of the open sections
    sections: list[Section] = []
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section([h for _, h in stack], body))
        lines.clear()

    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence  # a '#' inside a code block is a comment, not a heading
        match = None if in_fence else ATX_HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        level, heading = len(match.group(1)), match.group(2)
        if level == 1 and title is None:
            title = heading
            continue  # the title heads the whole document, not a section
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
    flush()
    return Document(path, title or path.stem, sections)


# -- HTML ---------------------------------------------------------------------------------------------------

SKIP_TAGS = {"script", "style", "nav", "noscript", "template", "svg", "head"}
SKIP_CLASS = re.compile(r"\b(nav\w*|toc|menu|sidebar|breadcrumbs?)\b", re.IGNORECASE)
BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre", "blockquote",
              "section", "article", "hr", "h1", "h2", "h3", "h4", "h5", "h6"}  # fmt: skip
VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}


class _HTMLSections(HTMLParser):
    """Collects <title>, headings and text; text between headings becomes a section."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.first_h1: str | None = None
        self.sections: list[Section] = []
        self._stack: list[tuple[int, str]] = []  # open headings
        self._text: list[str] = []
        self._heading: list[str] | None = None  # text of the heading being read
        self._heading_level = 0
        self._skip_depth = 0  # > 0 inside a skipped element
        self._open: list[tuple[str, bool]] = []  # (tag, skipped) of open elements, to match end tags
        self._in_title = False
        self._title_text: list[str] = []
        self._pre = 0

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        if tag in VOID_TAGS:
            if tag in BLOCK_TAGS:
                self._text.append("\n")
            return
        attrs = dict(attrs)
        skipped = tag in SKIP_TAGS or bool(SKIP_CLASS.search(f"{attrs.get('class') or ''} {attrs.get('role') or ''}"))
        self._open.append((tag, skipped))
        if skipped:
            self._skip_depth += 1
        if self._skip_depth:
            return
        if tag == "pre":
            self._pre += 1
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._flush()
            self._heading, self._heading_level = [], int(tag[1])
        elif tag in BLOCK_TAGS:
            self._text.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
            self.title = _squash("".join(self._title_text)) or None
        if tag in VOID_TAGS or all(open_tag != tag for open_tag, _ in self._open):
            return  # <br/> (HTMLParser reports an end for it), or a stray end tag
        # Close up to the matching open tag (HTML in the wild leaves <p> and <li> unclosed).
        while self._open:
            open_tag, skipped = self._open.pop()
            if skipped:
                self._skip_depth -= 1
            if open_tag == tag:
                break
        if self._skip_depth:
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if self._heading is not None and tag == f"h{self._heading_level}":
            self._close_heading()
        elif tag in BLOCK_TAGS:
            self._text.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self._title_text.append(data)
            return
        if self._skip_depth:
            return
        if self._heading is not None:
            self._heading.append(data)
        else:
            self._text.append(data if self._pre else re.sub(r"\s+", " ", data))

    def _close_heading(self) -> None:
        heading, level = _squash("".join(self._heading or [])), self._heading_level
        self._heading = None
        if not heading:
            return
        if level == 1 and self.first_h1 is None:
            self.first_h1 = heading
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, heading))

    def _flush(self) -> None:
        text = _tidy("".join(self._text))
        if text:
            self.sections.append(Section([h for _, h in self._stack], text))
        self._text = []

    def close(self):
        super().close()
        self._flush()


def parse_html(text: str, path: Path) -> Document:
    parser = _HTMLSections()
    parser.feed(text)
    parser.close()
    return Document(path, parser.title or parser.first_h1 or path.stem, parser.sections)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _tidy(text: str) -> str:
    """Trim each line and keep at most one blank line between paragraphs (indentation, even in <pre>, goes:
    retrieval and the prompt do not need it)."""
    text = "\n".join(line.strip() for line in text.replace("\xa0", " ").splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# -- PDF ----------------------------------------------------------------------------------------------------


def read_pdf(path: Path) -> Document:
    import pypdf  # imported here: only PDFs need it

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            raise DocumentError(f"{path} is an encrypted PDF; decrypt it first (e.g. `qpdf --decrypt`)")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except DocumentError:
        raise
    except Exception as e:  # pypdf raises many types for damaged files
        raise DocumentError(f"cannot read the PDF {path}: {e}") from None
    sections = [Section([f"page {i}"], text.strip()) for i, text in enumerate(pages, 1) if text.strip()]
    return Document(path, str(title).strip() or path.stem, sections)
