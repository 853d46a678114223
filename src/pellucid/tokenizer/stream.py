"""Incremental detokenization: turn generated token ids into text as they arrive.

A token can end in the middle of a UTF-8 character (byte-fallback tokens, or byte-level BPE splitting an
emoji), so text is released only once its characters are complete. Two strategies:

- ByteStreamDecoder: when each token's bytes are known (GGUF vocabularies), feed them to an incremental UTF-8
  decoder, which holds back an incomplete character until its last byte arrives.
- DiffStreamDecoder: when only whole sequences can be decoded (Hugging Face tokenizers, whose decoders add
  spaces or strip prefixes depending on context), decode a short window of recent ids and release what
  grew, but never text that ends in U+FFFD (a character still being completed).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class ByteStreamDecoder:
    """Streams text from per-token bytes; `push(id)` returns newly completed text, `flush()` the rest."""

    def __init__(self, piece: Callable[[int], bytes]):
        self._piece = piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._piece(int(token_id)))

    def flush(self) -> str:
        """Whatever is left (an unfinished character becomes U+FFFD); the decoder can be reused after."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


class DiffStreamDecoder:
    """Streams text from a whole-sequence `decode(ids)`, releasing only the part that is settled."""

    WINDOW = 6  # ids of left context kept so decoders see the previous token (for spaces, "##" joins)

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window in _ids
        self._read = 0  # ids before this index have been released as text

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        return self._release(final=False)

    def flush(self) -> str:
        text = self._release(final=True)
        self._ids, self._prefix, self._read = [], 0, 0
        return text

    def _release(self, final: bool) -> str:
        released = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        if len(current) <= len(released) or (current.endswith("\ufffd") and not final):
            return ""  # nothing new yet, or the last character is still incomplete
        new_text = current[len(released) :]
        self._read = len(self._ids)
        self._prefix = max(0, self._read - self.WINDOW)
        return new_text
