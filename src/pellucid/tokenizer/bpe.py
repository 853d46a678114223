"""Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = gpt2`), merging as llama.cpp's llm_tokenizer_bpe does.

Text is first split into words by the pre-tokenizer. Each word's UTF-8 bytes are written as printable
characters (GPT-2's byte-to-unicode table: byte 0x20, a space, is 'Ġ'), so the vocabulary and merges are plain
strings. Then, starting from single characters, the adjacent pair with the best (lowest) merge rank is joined,
leftmost first among equals, until no adjacent pair has a merge. Each resulting piece is a token.

Words repeat a lot in real text, so results are cached per word; that cache is the whole speed trick.
"""

from __future__ import annotations

import heapq
from functools import cache

from pellucid.tokenizer.pretokenize import compile_pre_tokenizer
from pellucid.tokenizer.vocab import Vocab

WORD_CACHE_SIZE = 200_000  # words; the cache is emptied when it fills


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@cache
def unicode_to_byte() -> dict[str, int]:
    return {ch: b for b, ch in byte_to_unicode().items()}


@cache
def _latin1_to_gpt2_table() -> dict[int, str]:
    # For str.translate on a latin-1 view of the UTF-8 bytes: code point b -> GPT-2 character of byte b.
    return {b: ch for b, ch in byte_to_unicode().items()}


def byte_encode(word: str) -> str:
    """A word's UTF-8 bytes as GPT-2 byte characters ('Hello world' -> 'HelloĠworld')."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_latin1_to_gpt2_table())


class BPE:
    """Encodes plain text (no special tokens) to ids with a vocabulary's merges and pre-tokenizer."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._ranks: dict[tuple[str, str], int] | None = None  # built on first use: ~50 ms for 50k merges
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def ranks(self) -> dict[tuple[str, str], int]:
        if self._ranks is None:
            ranks: dict[tuple[str, str], int] = {}
            for rank, merge in enumerate(self.vocab.merges or ()):
                # llama.cpp splits at the first space after position 0 (a merge's left side may be a space).
                pos = merge.find(" ", 1)
                pair = (merge[:pos], merge[pos + 1 :]) if pos >= 0 else ("", "")
                ranks.setdefault(pair, rank)  # the first (best) rank wins, as with llama.cpp's emplace
            self._ranks = ranks
        return self._ranks

    def encode(self, text: str, out: list[int], *, use_cache: bool = True) -> None:
        """Append the ids of `text` to `out`."""
        words = compile_pre_tokenizer(self.vocab.pre_tokenizer.regexes).split(text)
        if not use_cache:
            for word in words:
                out += self.encode_word(word)
            return
        cache_get = self._cache.get
        for word in words:
            ids = cache_get(word)
            if ids is None:
                ids = self.encode_word(word)
                if len(self._cache) >= WORD_CACHE_SIZE:
                    self._cache.clear()
                self._cache[word] = ids
            out += ids

    def encode_word(self, word: str) -> tuple[int, ...]:
        """One pre-tokenized word to ids (no cache)."""
        token_to_id = self.vocab.token_to_id
        encoded = byte_encode(word)
        if self.vocab.ignore_merges and encoded in token_to_id:
            return (token_to_id[encoded],)
        ids: list[int] = []
        for piece in merge(encoded, self.ranks):
            token_id = token_to_id.get(piece)
            if token_id is not None:
                ids.append(token_id)
                continue
            # A piece that is not a token (a vocabulary without some byte): llama.cpp looks up each byte of the
            # piece's UTF-8 text as a one-character token and drops the ones that do not exist.
            for byte in piece.encode("utf-8"):
                if byte < 0x80 and (byte_id := token_to_id.get(chr(byte))) is not None:
                    ids.append(byte_id)
        return tuple(ids)


def merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE merges on one word's characters: best rank first, leftmost first among equal ranks."""
    n = len(word)
    if n <= 1:
        return [word] if word else []
    # Symbols are runs of characters, identified by their start index; a merged-away symbol gets length 0.
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[int, int, int, str]] = []  # (rank, left, right, merged text)

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        a, b = word[left : left + length[left]], word[right : right + length[right]]
        rank = ranks.get((a, b))
        if rank is not None:
            heapq.heappush(heap, (rank, left, right, a + b))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, text = heapq.heappop(heap)
        if length[left] == 0 or length[right] == 0 or length[left] + length[right] != len(text):
            continue  # stale: one side was merged into something else since this pair was queued
        if word[left : left + len(text)] != text:
            continue
        length[left] += length[right]
        length[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    pieces = []
    i = 0
    while i >= 0:
        pieces.append(word[i : i + length[i]])
        i = nxt[i]
    return pieces
