"""Split text around special tokens before tokenizing the pieces, as llama.cpp's tokenizer_st_partition does.

llama.cpp takes its special tokens (control, user-defined and unknown) from longest to shortest and, for each,
cuts every occurrence out of every piece of text not yet claimed. User-defined tokens (Gemma's runs of
spaces and newlines, its HTML tags) are always cut out; control and unknown tokens (`<|im_start|>`, `<bos>`)
only when the caller asks to parse special tokens, otherwise their text is tokenized like any other.

The cut order is "longest token first", not "leftmost match first", and the two differ when special tokens
overlap. So we do it llama.cpp's way, but only for the few special tokens that occur in the text: one regex
pass (a trie of all special token texts) finds those candidates, then the longest-first cutting runs on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_C_ISSPACE = frozenset(" \t\n\v\f\r")  # what C's isspace() strips next to LSTRIP/RSTRIP tokens

Fragment = str | int  # text still to tokenize, or a token id already decided


@dataclass(frozen=True)
class SpecialToken:
    text: str
    id: int
    lstrip: bool = False  # swallow whitespace to the left when cut out
    rstrip: bool = False


class SpecialTokenSplitter:
    """Cuts a fixed set of special tokens out of text (build one per parse_special setting)."""

    def __init__(self, tokens: list[SpecialToken]):
        # llama.cpp sorts by byte length, longest first; ties keep id order (its std::sort leaves them unspecified).
        self.tokens = sorted(tokens, key=lambda t: (-len(t.text.encode("utf-8")), t.id))
        self._by_text = {t.text: t for t in self.tokens}
        self._finder: re.Pattern | None = None  # compiled on first use

    def split(self, text: str) -> list[Fragment]:
        """`text` as a list of plain-text pieces and special token ids, in order."""
        if not text:
            return []
        if not self.tokens:
            return [text]
        present = self._present(text)
        if not present:
            return [text]
        pieces: list[tuple[int, int] | int] = [(0, len(text))]
        for token in present:
            pieces = _cut(text, pieces, token)
        return [text[p[0] : p[1]] if isinstance(p, tuple) else p for p in pieces]

    def _present(self, text: str) -> list[SpecialToken]:
        """The special tokens that occur in `text` (longest first); a superset is fine, a subset is not."""
        if self._finder is None:
            self._finder = re.compile(_trie_regex([t.text for t in self.tokens]))
        finder = self._finder
        found = set()
        for m in finder.finditer(text):
            found.add(m.group())
            # A token may start inside this match (and run past it); the scan above resumed after the match.
            for pos in range(m.start() + 1, m.end()):
                inner = finder.match(text, pos)
                if inner:
                    found.add(inner.group())
        # The regex reports the longest token at each start; shorter ones there are substrings of it.
        texts = set()
        for f in found:
            for i in range(len(f)):
                for j in range(i + 1, len(f) + 1):
                    if f[i:j] in self._by_text:
                        texts.add(f[i:j])
        return [t for t in self.tokens if t.text in texts]


def _cut(text: str, pieces: list[tuple[int, int] | int], token: SpecialToken) -> list[tuple[int, int] | int]:
    """Cut every occurrence of one special token out of the unclaimed (start, end) pieces."""
    out: list[tuple[int, int] | int] = []
    needle, n = token.text, len(token.text)
    for piece in pieces:
        if isinstance(piece, int):
            out.append(piece)
            continue
        base, end = piece
        while (match := text.find(needle, base, end)) >= 0:
            left_end = match
            if token.lstrip:
                while left_end > base and text[left_end - 1] in _C_ISSPACE:
                    left_end -= 1
            if left_end > base:
                out.append((base, left_end))
            out.append(token.id)
            base = match + n
            if token.rstrip:
                while base < end and text[base] in _C_ISSPACE:
                    base += 1
        if base < end:
            out.append((base, end))
    return out


def _trie_regex(words: list[str]) -> str:
    """A regex matching any of `words`, the longest one at each position (alternatives share prefixes)."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _trie_node_regex(trie)


def _trie_node_regex(node: dict) -> str:
    branches = [re.escape(ch) + _trie_node_regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # Greedy: try the longer continuation first, fall back to ending here when a word ends here.
    return f"(?:{body})?" if "" in node else body
