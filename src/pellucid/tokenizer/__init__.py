"""Tokenizers: text <-> token ids, exactly as the model's runtime of reference does it.

    tok = load_tokenizer(pellucid.store.resolve("smollm2-135m"))
    ids = tok.encode("Hello, world!")            # llama_tokenize(text, add_special=True, parse_special=False)
    tok.decode(ids)                               # 'Hello, world!'

GGUF files carry their vocabulary in metadata; pellucid rebuilds llama.cpp's tokenizers from it
(gguf_tokenizer.py: byte-level BPE in bpe.py, SentencePiece in spm.py, special tokens in special.py,
pre-tokenizer regexes in pretokenize.py). Hugging Face folders are tokenized by the `tokenizers` library
(hf.py). Both implement the `Tokenizer` protocol below; streaming text out of generated ids is stream.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from pellucid.errors import ModelFileError
from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer.gguf_tokenizer import GGUFTokenizer
from pellucid.tokenizer.hf import HFTokenizer
from pellucid.tokenizer.stream import ByteStreamDecoder, DiffStreamDecoder


@runtime_checkable
class StreamDecoder(Protocol):
    def push(self, token_id: int) -> str:
        """Text that is now complete (never half a UTF-8 character)."""
        ...

    def flush(self) -> str:
        """Whatever is left at the end."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    kind: str  # "bpe" / "spm" for GGUF files; the tokenizer.json model type for HF folders
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    eot_ids: frozenset[int]  # ids that end generation or a turn (EOS, <|im_end|>, <end_of_turn>, ...)
    add_bos: bool
    add_eos: bool

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]: ...
    def decode(self, ids, *, skip_special: bool = False) -> str: ...
    def piece(self, id: int) -> str: ...
    def token_bytes(self, id: int) -> bytes: ...
    def is_special(self, id: int) -> bool: ...
    def token_to_id(self, text: str) -> int | None: ...
    def stream_decoder(self, *, skip_special: bool = True) -> StreamDecoder: ...


def load_tokenizer(model) -> Tokenizer:
    """The tokenizer of `model`: a pellucid.store.ResolvedModel, a path to a .gguf file or an HF model
    folder, or an open GGUFFile (which is left open)."""
    if isinstance(model, GGUFFile):
        return GGUFTokenizer.from_gguf(model)
    path = getattr(model, "path", model)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_tokenizer takes a ResolvedModel, a path or a GGUFFile, not {type(model).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        return HFTokenizer(path)
    if not path.exists():
        raise ModelFileError(f"no such file or folder: {path}")
    with GGUFFile(path) as gguf:
        return GGUFTokenizer.from_gguf(gguf)


__all__ = [
    "ByteStreamDecoder",
    "DiffStreamDecoder",
    "GGUFTokenizer",
    "HFTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "load_tokenizer",
]
