"""The tokenizer stored in a GGUF file, behaving as llama.cpp's llama_tokenize / llama_detokenize.

encode: cut special tokens out of the text (special.py), then run byte-level BPE (bpe.py) or SentencePiece
(spm.py) on each remaining piece, adding BOS/EOS as the metadata says. decode: concatenate each token's
bytes (its "piece"), optionally showing special tokens, then apply llama.cpp's space clean-up if the
pre-tokenizer asks for it.
"""

from __future__ import annotations

from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer.bpe import BPE, unicode_to_byte
from pellucid.tokenizer.special import SpecialToken, SpecialTokenSplitter
from pellucid.tokenizer.spm import SPACE, SentencePiece
from pellucid.tokenizer.stream import ByteStreamDecoder
from pellucid.tokenizer.vocab import Attr, Vocab, vocab_from_gguf

# Tokens that contribute text: everything else (control, unknown, unused, undefined) is "special".
_TEXT_ATTRS = int(Attr.NORMAL | Attr.USER_DEFINED | Attr.BYTE)
# What llama.cpp hides unless asked to render special tokens.
_HIDDEN_ATTRS = int(Attr.CONTROL | Attr.UNKNOWN)


class GGUFTokenizer:
    """A GGUF vocabulary as a tokenizer: `kind` is "bpe" (tokenizer.ggml.model gpt2) or "spm" (llama)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.kind = "bpe" if vocab.model == "gpt2" else "spm"
        self.vocab_size = vocab.n_tokens
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.pad_id, self.unk_id = vocab.pad_id, vocab.unk_id
        self.eot_ids = vocab.eog_ids
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self._engine = BPE(vocab) if self.kind == "bpe" else SentencePiece(vocab)
        self._splitters: dict[bool, SpecialTokenSplitter] = {}
        self._pieces: list[bytes | None] = [None] * vocab.n_tokens  # token_bytes cache, filled lazily

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> GGUFTokenizer:
        return cls(vocab_from_gguf(gguf))

    def __repr__(self) -> str:
        pre = f", pre={self.vocab.pre!r}" if self.kind == "bpe" else ""
        return f"GGUFTokenizer(kind={self.kind!r}{pre}, vocab_size={self.vocab_size})"

    # -- encoding ---------------------------------------------------------------------------------------
    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS where the model's metadata says to; parse_special turns the text of control
        tokens ("<|im_start|>", "<bos>") into those tokens (user-defined tokens are always recognized).
        """
        return self._encode(text, add_special, parse_special, use_cache=True)

    def encode_reference(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """`encode` without the word cache and (for SentencePiece) without cutting text into words: slower,
        closer to llama.cpp's code, and the yardstick the fast path is tested against."""
        return self._encode(text, add_special, parse_special, use_cache=False)

    def _encode(self, text: str, add_special: bool, parse_special: bool, use_cache: bool) -> list[int]:
        vocab = self.vocab
        out: list[int] = []
        if add_special and vocab.add_bos:
            out.append(vocab.bos_id)
        prev_was_special = True  # SentencePiece: a text fragment at the start or after a special token
        for fragment in self._splitter(parse_special).split(text):
            if isinstance(fragment, int):
                out.append(fragment)
                prev_was_special = True
                continue
            if self.kind == "spm" and vocab.add_space_prefix and prev_was_special:
                fragment = " " + fragment
            self._engine.encode(fragment, out, use_cache=use_cache)
            prev_was_special = False
        if add_special and vocab.add_eos:
            out.append(vocab.eos_id)
        return out

    def _splitter(self, parse_special: bool) -> SpecialTokenSplitter:
        splitter = self._splitters.get(parse_special)
        if splitter is None:
            vocab = self.vocab
            wanted = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)
            skipped = 0 if parse_special else int(Attr.CONTROL | Attr.UNKNOWN)
            tokens = [
                SpecialToken(vocab.tokens[i], i, bool(a & Attr.LSTRIP), bool(a & Attr.RSTRIP))
                for i, a in enumerate(vocab.attrs.tolist())
                if a & wanted and not a & skipped
            ]
            splitter = self._splitters[parse_special] = SpecialTokenSplitter(tokens)
        return splitter

    # -- vocabulary -------------------------------------------------------------------------------------
    def piece(self, id: int) -> str:
        """The vocabulary string as stored ('Ġworld', '▁the', '<0x0A>', '<|im_end|>')."""
        return self.vocab.tokens[self._checked(id)]

    def token_to_id(self, text: str) -> int | None:
        return self.vocab.token_to_id.get(text)

    def is_special(self, id: int) -> bool:
        """True for tokens that are not text: control (BOS, <|im_end|>), unknown, unused, undefined. A token the
        file types as text but llama.cpp forces to control (an end-of-turn token typed NORMAL by a conversion
        bug) is special: like any control token it is hidden from decoded text."""
        attrs = int(self.vocab.attrs[self._checked(id)])
        return bool(attrs & _HIDDEN_ATTRS) or not (attrs & _TEXT_ATTRS)

    def token_bytes(self, id: int) -> bytes:
        """The bytes this token adds to decoded text when special tokens are shown (llama.cpp's piece)."""
        piece = self._pieces[self._checked(id)]
        if piece is None:
            piece = self._pieces[id] = self._render(id)
        return piece

    def _checked(self, id: int) -> int:
        if not 0 <= id < self.vocab_size:  # a negative id would silently index from the end
            raise IndexError(f"token id {id} is outside the vocabulary of {self.vocab_size:,} tokens")
        return id

    def _render(self, id: int) -> bytes:
        """llama.cpp's token_to_piece(special=True)."""
        attr = int(self.vocab.attrs[id])
        text = self.vocab.tokens[id]
        if attr & (_HIDDEN_ATTRS | Attr.USER_DEFINED):
            return text.encode("utf-8")
        if attr & Attr.NORMAL:
            if self.kind == "spm":
                return text.replace(SPACE, " ").encode("utf-8")
            return _gpt2_bytes(text)
        if attr & Attr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined tokens render as nothing

    # -- decoding ---------------------------------------------------------------------------------------
    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Text of `ids`, as llama.cpp's llama_detokenize(remove_special=skip_special, unparse_special=not
        skip_special): special tokens are shown unless skipped. Invalid UTF-8 becomes U+FFFD."""
        ids = [self._checked(int(i)) for i in ids]
        vocab = self.vocab
        strip_space = vocab.add_space_prefix  # undo the space SentencePiece put in front of the text
        if skip_special and vocab.add_bos and ids and ids[0] == vocab.bos_id:
            strip_space = False
            ids = ids[1:]
        if skip_special and vocab.add_eos and ids and ids[-1] == vocab.eos_id:
            ids = ids[:-1]
        parts = []
        for i in ids:
            piece = b"" if skip_special and int(vocab.attrs[i]) & _HIDDEN_ATTRS else self.token_bytes(i)
            if strip_space and piece.startswith(b" "):
                piece = piece[1:]
            strip_space = False
            parts.append(piece)
        data = b"".join(parts)
        if vocab.clean_spaces:
            data = clean_up_spaces(data)
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, *, skip_special: bool = True) -> ByteStreamDecoder:
        """Incremental decoding for generation: push ids, get text that never ends in half a character.

        The text is each token's piece, as llama.cpp's generation loop prints it: generated text continues a
        prompt, so unlike decode() no leading space is removed and no space clean-up is applied.
        """
        hidden = _HIDDEN_ATTRS if skip_special else 0
        attrs = self.vocab.attrs

        def piece(token_id: int) -> bytes:
            return b"" if int(attrs[self._checked(token_id)]) & hidden else self.token_bytes(token_id)

        return ByteStreamDecoder(piece)


def _gpt2_bytes(text: str) -> bytes:
    """A byte-level BPE token's bytes ('Ġworld' -> b' world'); characters outside the map are kept as UTF-8."""
    to_byte = unicode_to_byte()
    out = bytearray()
    for ch in text:
        b = to_byte.get(ch)
        if b is not None:
            out.append(b)
        else:  # llama.cpp writes "[UNK_BYTE_0x..]" here; keeping the character is more useful
            out += ch.encode("utf-8")
    return bytes(out)


def clean_up_spaces(data: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, pass for pass and in place as llama_detokenize does it:
    drop the space in " ?", " !", " .", " ,"; around a lone apostrophe " ' "; and before 's 'm 're 've."""
    text = bytearray(data)
    space, quote = 0x20, 0x27
    # pass 1: " ?" " !" " ." " ,"
    total1, total = len(text), min(len(text), 1)
    for i in range(1, total1):
        x = text[i]
        if text[i - 1] == space and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    # pass 2: " ' " -> "'" (the NUL written over the skipped space is seen by the next comparison, as in C)
    total2, total = total, min(total, 1)
    i = 1
    while i < total2:
        x = text[i]
        if x == quote and i + 1 < total2 and text[i - 1] == space and text[i + 1] == space:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    # pass 3: " 's" " 'm" " 're" " 've" lose the space; " 't" " 'd" " 'll" keep it
    total3, total = total, min(total, 1)
    for i in range(1, total3):
        x = text[i]
        if text[i - 1] == space and x == quote and i + 1 < total3:
            x1 = text[i + 1]
            if x1 in b"sm" or (i + 2 < total3 and bytes(text[i + 1 : i + 3]) in (b"re", b"ve")):
                total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])
