"""The tokenizer of a Hugging Face model folder (tokenizer.json), run by the `tokenizers` library.

`tokenizers` is the reference implementation for these files, so we only adapt it to pellucid's Tokenizer
interface: special-token facts come from tokenizer_config.json / special_tokens_map.json and the
post-processor template, and padding/truncation stored in tokenizer.json are switched off (callers decide
how long a sequence may be).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pellucid.errors import ModelFileError
from pellucid.tokenizer.bpe import unicode_to_byte
from pellucid.tokenizer.stream import DiffStreamDecoder
from pellucid.tokenizer.vocab import EOG_TEXTS, false_eog

TOKENIZER_JSON = "tokenizer.json"


class HFTokenizer:
    """A tokenizer.json tokenizer; `kind` is its model type: "bpe", "unigram", "wordpiece" or "wordlevel"."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer  # imported here: only HF folders need it

        self.folder = Path(folder)
        path = self.folder / TOKENIZER_JSON
        if not path.is_file():
            raise ModelFileError(
                f"{self.folder} has no {TOKENIZER_JSON}; pellucid reads Hugging Face tokenizers only in that "
                f"format. Save one with `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`."
            )
        try:
            self._tok = Tokenizer.from_file(str(path))
            spec = json.loads(path.read_text(encoding="utf-8"))
        except Exception as e:
            raise ModelFileError(f"cannot read {path}: {e}") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self._lock = threading.Lock()
        self.kind = str(spec.get("model", {}).get("type", "unknown")).lower()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._decoder_types = _decoder_types(spec.get("decoder"))
        self._byte_fallback = bool(spec.get("model", {}).get("byte_fallback"))
        self._special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        config = _read_config(self.folder)
        self.unk_id = self._id_of(config.get("unk_token"))
        self.pad_id = self._id_of(config.get("pad_token"))
        # Encoders (BERT) have no BOS/EOS; their [CLS]/[SEP] play those parts, as in llama.cpp.
        self.bos_id = _first(self._id_of(config.get("bos_token")), self._id_of(config.get("cls_token")))
        self.eos_id = _first(self._id_of(config.get("eos_token")), self._id_of(config.get("sep_token")))
        self.add_bos, self.add_eos = self._template_adds(spec.get("post_processor"), config)
        self.eot_ids = frozenset(self._eot_ids())

    def __repr__(self) -> str:
        return f"HFTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, folder={str(self.folder)!r})"

    def _id_of(self, token) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        return self._tok.token_to_id(token) if isinstance(token, str) else None

    def _template_adds(self, post, config: dict) -> tuple[bool, bool]:
        """Whether encoding with special tokens puts a token before / after the text."""
        single = _template_single(post)
        add_bos = bool(single) and "SpecialToken" in single[0]
        add_eos = bool(single) and "SpecialToken" in single[-1]
        add_bos = bool(config.get("add_bos_token", add_bos))
        add_eos = bool(config.get("add_eos_token", add_eos))
        return add_bos, add_eos

    def _eot_ids(self) -> set[int]:
        """What ends generation: what transformers and vLLM stop on (the tokenizer's EOS and the generation
        config's `eos_token_id`, an int or a list: Llama 3.1 lists <|end_of_text|>, <|eom_id|>, <|eot_id|>), plus
        the special tokens llama.cpp stops on by their text (<|im_end|>, <end_of_turn>, <|end|>...), so a folder
        without a generation config still stops at the end of a turn. Only *special* tokens count by text: a
        normal token spelled "</s>" (an HTML tag in Gemma's vocabulary) is text. llama.cpp's exceptions apply
        (gpt-oss's <|end|> ends a message, not the reply)."""
        declared = {self.eos_id} if self.eos_id is not None else set()
        declared.update(i for i in _generation_eos_ids(self.folder) if 0 <= i < self.vocab_size)
        special_texts = {self._tok.id_to_token(i): i for i in self._special_ids}
        by_text = {t: special_texts[t] for t in EOG_TEXTS if t in special_texts}
        for text in false_eog(by_text | {self.piece(i): i for i in declared}):
            by_text.pop(text, None)
        return declared | set(by_text.values())

    # -- the Tokenizer interface ------------------------------------------------------------------------
    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; add_special applies the post-processor template ([CLS] ... [SEP]),
        parse_special turns special-token text such as "[SEP]" into that token."""
        with self._lock:  # encode_special_tokens is state on the shared library object
            self._tok.encode_special_tokens = not parse_special
            return self._tok.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def piece(self, id: int) -> str:
        piece = self._tok.id_to_token(int(id))
        if piece is None:
            raise IndexError(f"token id {id} is outside the vocabulary of {self.vocab_size} tokens")
        return piece

    def token_to_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def is_special(self, id: int) -> bool:
        return int(id) in self._special_ids

    def token_bytes(self, id: int) -> bytes:
        """The token's bytes. Exact for byte-level BPE and byte-fallback tokens; for other decoders
        (WordPiece, Metaspace) this is the token's text with word-joining marks resolved as if mid-text."""
        piece = self.piece(id)
        if int(id) in self._special_ids:
            return piece.encode("utf-8")
        if self._byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if "ByteLevel" in self._decoder_types:
            to_byte = unicode_to_byte()
            return bytes(to_byte[ch] for ch in piece if ch in to_byte)
        if "WordPiece" in self._decoder_types:
            return (piece[2:] if piece.startswith("##") else " " + piece).encode("utf-8")
        return piece.replace("\u2581", " ").encode("utf-8")

    def stream_decoder(self, *, skip_special: bool = True) -> DiffStreamDecoder:
        return DiffStreamDecoder(lambda ids: self._tok.decode(list(ids), skip_special_tokens=skip_special))


def _first(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


def _decoder_types(decoder) -> set[str]:
    if not isinstance(decoder, dict):
        return set()
    types = {decoder.get("type")}
    for inner in decoder.get("decoders", []) or []:
        types |= _decoder_types(inner)
    return types


def _template_single(post) -> list:
    if not isinstance(post, dict):
        return []
    if post.get("type") == "TemplateProcessing":
        return post.get("single", [])
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):
        return [{"SpecialToken": post.get("cls")}, {"Sequence": {}}, {"SpecialToken": post.get("sep")}]
    for inner in post.get("processors", []) or []:
        if single := _template_single(inner):
            return single
    return []


def _generation_eos_ids(folder: Path) -> list[int]:
    """`eos_token_id` of generation_config.json, or of config.json when there is none (as transformers does)."""
    generation = folder / "generation_config.json"
    value = _read_json(generation if generation.is_file() else folder / "config.json").get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [i for i in values if isinstance(i, int) and not isinstance(i, bool)]


def _read_config(folder: Path) -> dict:
    """tokenizer_config.json, with special_tokens_map.json filling in tokens it does not name."""
    config = _read_json(folder / "tokenizer_config.json")
    for key, value in _read_json(folder / "special_tokens_map.json").items():
        config.setdefault(key, value)
    return config


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ModelFileError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}
