"""SentencePiece BPE (`tokenizer.ggml.model = llama`), merging as llama.cpp's llm_tokenizer_spm does.

Spaces become '▁' (U+2581). Starting from single characters, the adjacent pair whose concatenation is a
vocabulary token with the highest score is merged, leftmost first among equal scores, until no adjacent pair
forms a token. A piece left over that is not a token is spelled with byte tokens `<0xNN>` (byte fallback).

For speed the text is cut into words before merging, and results are cached per word. A cut between a
character and the '▁' after it is safe when no vocabulary token contains that character followed by '▁':
no merge can then ever join across the cut, and merges on either side never compete with each other, so the
result is exactly that of merging the whole text. `merge(text)` without cutting is the reference.
"""

from __future__ import annotations

import heapq
import re

from pellucid.tokenizer.vocab import Vocab

SPACE = "\u2581"  # '▁', SentencePiece's visible space
WORD_CACHE_SIZE = 200_000  # words; the cache is emptied when it fills


class SentencePiece:
    """Encodes plain text (no special tokens) to ids with a vocabulary's scores."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        scores = vocab.scores
        self._score = scores.__getitem__ if scores is not None else (lambda _id: 0.0)
        self._byte_ids: list[int] | None = None
        self._word_re: re.Pattern | None = None  # built on first use (scans the vocabulary once)
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int], *, use_cache: bool = True) -> None:
        """Append the ids of `text` (raw text: spaces not yet escaped) to `out`."""
        escaped = text.replace(" ", SPACE)
        if not use_cache:
            out += self.encode_word(escaped)
            return
        cache = self._cache
        for word in self._words(escaped):
            ids = cache.get(word)
            if ids is None:
                ids = self.encode_word(word)
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()
                cache[word] = ids
            out += ids

    def _words(self, escaped: str) -> list[str]:
        if self._word_re is None:
            self._word_re = re.compile(_word_regex(self.vocab.tokens))
        return self._word_re.findall(escaped)

    def encode_word(self, text: str) -> tuple[int, ...]:
        """Escaped text to ids, merging over all of it (no cutting, no cache)."""
        token_to_id = self.vocab.token_to_id
        ids: list[int] = []
        for piece in merge(text, token_to_id, self._score):
            token_id = token_to_id.get(piece)
            if token_id is not None:
                ids.append(token_id)
            else:
                ids += (self.byte_id(b) for b in piece.encode("utf-8", "surrogatepass"))
        return tuple(ids)

    def byte_id(self, byte: int) -> int:
        """The byte-fallback token for one byte: `<0xNN>`, else the byte itself as a token (llama.cpp)."""
        if self._byte_ids is None:
            self._byte_ids = [self._find_byte_token(b) for b in range(256)]
        return self._byte_ids[byte]

    def _find_byte_token(self, byte: int) -> int:
        token_to_id = self.vocab.token_to_id
        token_id = token_to_id.get(f"<0x{byte:02X}>")
        if token_id is None and byte < 0x80:
            token_id = token_to_id.get(chr(byte))
        if token_id is None:
            # llama.cpp aborts here; an unknown token is the least surprising stand-in.
            token_id = self.vocab.unk_id if self.vocab.unk_id is not None else 0
        return token_id


def merge(text: str, token_to_id: dict[str, int], score) -> list[str]:
    """SentencePiece merges: highest-scoring vocabulary token first, leftmost first among equal scores."""
    n = len(text)
    if n <= 1:
        return [text] if text else []
    length = [1] * n  # symbol at start index i covers text[i : i + length[i]]; 0 once merged away
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged length)

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        size = length[left] + length[right]
        token_id = token_to_id.get(text[left : left + size])
        if token_id is not None:
            heapq.heappush(heap, (-score(token_id), left, right, size))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
            continue  # stale: one side changed since this pair was queued (lengths only ever grow)
        length[left] = size
        length[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    pieces = []
    i = 0
    while i >= 0:
        pieces.append(text[i : i + length[i]])
        i = nxt[i]
    return pieces


def _word_regex(tokens: list[str]) -> str:
    """A regex for words that merges never cross: cuts before each '▁' that follows a non-'▁' character,
    except after characters that some token joins to a following '▁' (Gemma: only '>', from '>▁</')."""
    joined = "\x00".join(tokens)
    bridging = set(re.findall(f"([^{SPACE}\x00]){SPACE}", joined))
    if not bridging:
        return f"{SPACE}*[^{SPACE}]+|{SPACE}+"
    chars = re.escape("".join(sorted(bridging)))
    return f"{SPACE}*(?:[^{SPACE}{chars}]|[{chars}]{SPACE}*)+|{SPACE}+"
