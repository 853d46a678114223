"""Chunking: a document's sections -> passages of at most N tokens that overlap, each with its context.

An embedding model reads a bounded number of tokens (256 for all-MiniLM-L6-v2) and represents a passage
best when it is about one thing, so documents are cut into chunks by *tokens* of the embedding model:

- Each chunk is embedded as `context + "\\n\\n" + text`, where the context is the document title and the
  section's heading path ("Debian FAQ > Chapter 7 > 7.2. What is a Debian control file?"). A paragraph that
  says "it is in /etc" means little without the heading above it.
- Cuts fall on sentence boundaries where possible (then words, then characters for a run-on token soup),
  and consecutive chunks share `overlap` tokens so that a fact straddling a cut is whole in one of them.
- The budget per chunk is min(chunk_tokens, encoder's max_tokens - special tokens - context tokens): a chunk
  never gets truncated by the encoder, so nothing indexed is invisible to dense search.

Defaults follow common practice for retrieval (about 200-400 tokens, 10-20% overlap): 300 tokens requested
(capped by MiniLM's 256 in practice) and 15% overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pellucid.rag.documents import Document

DEFAULT_CHUNK_TOKENS = 300
DEFAULT_OVERLAP = 0.15  # a fraction of the chunk budget
MAX_CONTEXT_FRACTION = 0.25  # a heading path longer than this share of the budget is shortened
SENTENCE_END = re.compile(
    r"(?<=[.!?:;])\s+|\n\s*\n+|\n(?=\s*[-*•]\s|\s*\d+[.)]\s)"
)  # sentence ends, blank lines, list items


@dataclass(frozen=True)
class ChunkSettings:
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self):
        if self.chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be at least 16, not {self.chunk_tokens}")
        if not 0 <= self.overlap < 0.5:
            raise ValueError(f"overlap must be a fraction in [0, 0.5), not {self.overlap}")

    def describe(self) -> str:
        """A stable string stored with each document: a different string means re-chunk it."""
        return f"{self.chunk_tokens}t/{self.overlap:g}"


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # position within the document
    section: str  # heading path, " > "-joined
    context: str  # what is embedded before the text: title and headings
    text: str  # the passage itself, verbatim from the document
    n_tokens: int  # tokens of context + text as the encoder sees them (specials included)

    @property
    def embed_text(self) -> str:
        return embed_text(self.context, self.text)


@dataclass(frozen=True)
class _Piece:
    start: int  # character offsets into the section text
    end: int
    n_tokens: int


def chunk_document(
    doc: Document, count_tokens: Callable[[str], int], max_tokens: int, settings: ChunkSettings = ChunkSettings()
) -> list[Chunk]:
    """Cut `doc` into chunks. `count_tokens(text)` counts the encoder's tokens *including* its special tokens
    (as Embedder.count_tokens does); `max_tokens` is the most the encoder reads."""
    n_special = count_tokens("")

    def content_tokens(text: str) -> int:
        return count_tokens(text) - n_special

    chunks: list[Chunk] = []
    for section in doc.sections:
        # HTML pages and Markdown files often repeat their title as the first heading: say it once.
        headings = section.headings[1:] if section.headings[:1] == [doc.title] else section.headings
        budget = min(settings.chunk_tokens, max_tokens - n_special)
        context = _fit_context(" > ".join([doc.title, *headings]), content_tokens, budget)
        # "\n\n" between context and text costs no tokens in WordPiece and at most a couple in BPE tokenizers.
        room = budget - (content_tokens(context) + 2 if context else 0)
        for text in split_text(section.text, content_tokens, room, int(room * settings.overlap)):
            n_tokens = count_tokens(embed_text(context, text))
            chunks.append(Chunk(len(chunks), " > ".join(headings), context, text, n_tokens))
    return chunks


def embed_text(context: str, text: str) -> str:
    """What the encoder reads for a chunk: its context, a blank line, its text."""
    return f"{context}\n\n{text}" if context else text


def _fit_context(context: str, content_tokens: Callable[[str], int], budget: int) -> str:
    """The heading path, shortened from the left (outer headings go first) to a quarter of the budget."""
    limit = int(budget * MAX_CONTEXT_FRACTION)
    while context and content_tokens(context) > limit:
        parts = context.split(" > ")
        if len(parts) > 1:
            context = " > ".join(parts[1:])
        else:
            words = context.split()
            context = " ".join(words[: max(len(words) * limit // max(content_tokens(context), 1), 0)])
    return context


def split_text(text: str, content_tokens: Callable[[str], int], size: int, overlap: int) -> list[str]:
    """Windows of whole pieces (sentences, else words) of at most `size` tokens, overlapping by <= `overlap`."""
    pieces = _pieces(text, content_tokens, size)
    windows: list[str] = []
    i = 0
    while i < len(pieces):
        j, total = i, 0
        while j < len(pieces) and total + pieces[j].n_tokens <= size:
            total += pieces[j].n_tokens
            j += 1
        j = max(j, i + 1)
        window = text[pieces[i].start : pieces[j - 1].end]
        # Token counts of pieces add up exactly for WordPiece; a BPE merge across a boundary can add one.
        while j - 1 > i and content_tokens(window) > size:
            j -= 1
            window = text[pieces[i].start : pieces[j - 1].end]
        windows.append(window)
        if j >= len(pieces):
            break
        # Step back over trailing pieces worth at most `overlap` tokens, but always move forward.
        back, shared = j, 0
        while back - 1 > i and shared + pieces[back - 1].n_tokens <= overlap:
            back -= 1
            shared += pieces[back].n_tokens
        i = back
    return windows


def _pieces(text: str, content_tokens: Callable[[str], int], size: int) -> list[_Piece]:
    """Sentences with their token counts; a sentence longer than `size` is split into words, a word longer
    than `size` into characters."""
    pieces: list[_Piece] = []
    for start, end in _spans(text, SENTENCE_END):
        n = content_tokens(text[start:end])
        if n <= size:
            pieces.append(_Piece(start, end, n))
            continue
        for w_start, w_end in _spans(text[start:end], re.compile(r"\s+")):
            w_start, w_end = start + w_start, start + w_end
            n = content_tokens(text[w_start:w_end])
            if n <= size:
                pieces.append(_Piece(w_start, w_end, n))
            else:  # a token soup (base64, a long URL): cut by characters; 4 tokens per char at most (bytes)
                step = max(size // 4, 1)
                for c in range(w_start, w_end, step):
                    pieces.append(_Piece(c, min(c + step, w_end), content_tokens(text[c : min(c + step, w_end)])))
    return pieces


def _spans(text: str, separator: re.Pattern) -> list[tuple[int, int]]:
    """(start, end) of the non-blank stretches between separator matches."""
    spans, start = [], 0
    for match in separator.finditer(text):
        if text[start : match.start()].strip():
            spans.append(_strip_span(text, start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append(_strip_span(text, start, len(text)))
    return spans


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
