"""A GGUF file's vocabulary: token strings, scores, per-token attributes and the special-token facts.

This mirrors what llama.cpp's `llama_vocab::impl::load` (src/llama-vocab.cpp) derives from the metadata
keys `tokenizer.ggml.*`, including the defaults it assumes when a key is missing and the fix-ups it applies
by token text (e.g. `<|im_end|>` and `<end_of_turn>` always end generation and are forced to be control
tokens), because those decide how text is split before any merge runs.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from functools import cached_property

import numpy as np

from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer.pretokenize import PRE_TOKENIZERS, PreTokenizer


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (gguf-py's TokenType)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Attr(IntFlag):
    """llama.cpp's per-token attributes (llama_token_attr); a token type maps to one, fix-ups add more."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7  # strip whitespace to the left of this special token when splitting it out
    RSTRIP = 1 << 8


_ATTR_OF_TYPE = np.array(
    [Attr.UNDEFINED, Attr.NORMAL, Attr.UNKNOWN, Attr.CONTROL, Attr.USER_DEFINED, Attr.UNUSED, Attr.BYTE],
    dtype=np.int32,
)

# The tables below follow llama.cpp as vendored by llama-cpp-python 0.3.36, which made our reference outputs.
# Tokens that end generation by their text (llama-vocab.cpp, "special_eog_ids").
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
)  # fmt: skip
# When the metadata does not name these ids, llama.cpp takes the first token with one of these texts.
DETECTED_TEXTS = {
    "eot": (
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
        "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ),
    "eom": ("<|eom_id|>",),
    "fim_pre": (
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
        "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
        "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
        "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
# gpt-oss renders these as text (llama.cpp forces them to USER_DEFINED).
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# `tokenizer.ggml.*_token_id` metadata key -> Vocab field.
SPECIAL_ID_KEYS = {
    "bos": "bos_id", "eos": "eos_id", "eot": "eot_id", "eom": "eom_id", "unknown": "unk_id", "seperator": "sep_id",
    "padding": "pad_id", "mask": "mask_id", "fim_pre": "fim_pre_id", "fim_suf": "fim_suf_id",
    "fim_mid": "fim_mid_id", "fim_pad": "fim_pad_id", "fim_rep": "fim_rep_id", "fim_sep": "fim_sep_id",
    "prefix": "fim_pre_id", "suffix": "fim_suf_id", "middle": "fim_mid_id",
}  # fmt: skip


@dataclass
class Vocab:
    """Everything llama.cpp's tokenizer reads from `tokenizer.ggml.*`, with its defaults applied."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre (BPE only)
    tokens: list[str]
    scores: list[float] | None
    attrs: np.ndarray  # (n_vocab,) int32 Attr bits
    merges: list[str] | None  # "left right" strings, rank = position (BPE only)
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    fim_pre_id: int | None = None
    fim_suf_id: int | None = None
    fim_mid_id: int | None = None
    fim_pad_id: int | None = None
    fim_rep_id: int | None = None
    fim_sep_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False  # SentencePiece: prepend " " to text that starts a fragment
    clean_spaces: bool = False  # detokenize: clean_up_tokenization_spaces
    ignore_merges: bool = False  # BPE: a pre-token word that is a token is taken whole
    pre_tokenizer: PreTokenizer | None = None
    eog_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @cached_property
    def token_to_id(self) -> dict[str, int]:
        """Token string -> id, built on first use (~60 ms for Gemma's 262,144 tokens, so not at load).
        If a string appears twice the last id wins, as in the llama.cpp that made our references."""
        token_to_id = dict(zip(self.tokens, range(len(self.tokens))))
        if len(token_to_id) != len(self.tokens):
            warnings.warn(f"the vocabulary repeats {len(self.tokens) - len(token_to_id)} token strings", stacklevel=2)
        return token_to_id

    def find_ids(self, texts) -> dict[str, int]:
        """Ids of the given token strings that exist (last id wins), without building token_to_id."""
        if "token_to_id" in self.__dict__:
            return {t: self.token_to_id[t] for t in texts if t in self.token_to_id}
        hits = itertools.compress(range(len(self.tokens)), map(set(texts).__contains__, self.tokens))
        return {self.tokens[i]: i for i in hits}

    def has(self, attr: Attr, token_id: int) -> bool:
        return bool(self.attrs[token_id] & attr)


def vocab_from_gguf(gguf: GGUFFile) -> Vocab:
    """Read and check the vocabulary of an open GGUF file (raises ModelFileError/UnsupportedError)."""
    meta = gguf.metadata
    name = gguf.path.name
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ModelFileError(f"{name} has no tokenizer (metadata key tokenizer.ggml.model is missing)")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelFileError(f"{name} has no vocabulary (tokenizer.ggml.tokens is missing or empty)")
    n = len(tokens)
    tokens = _fix_empty_tokens(tokens)
    scores = _array(meta, "tokenizer.ggml.scores", n, name)
    types = _array(meta, "tokenizer.ggml.token_type", n, name)
    if types is not None:  # unknown type numbers are UNDEFINED, as in llama.cpp
        types = np.asarray(types, dtype=np.int64)
        attrs = _ATTR_OF_TYPE[np.where((types >= 0) & (types < len(_ATTR_OF_TYPE)), types, 0)]
    else:
        attrs = np.full(n, int(Attr.NORMAL), dtype=np.int32)
    vocab = Vocab(
        model=model,
        pre=meta.get("tokenizer.ggml.pre", ""),
        tokens=tokens,
        scores=np.asarray(scores, dtype=np.float32).tolist() if scores is not None else None,
        attrs=attrs.astype(np.int32, copy=True),
        merges=meta.get("tokenizer.ggml.merges"),
    )
    _apply_model_defaults(vocab, name)
    _apply_special_ids(vocab, meta, name)
    _apply_text_fixups(vocab)
    _apply_strip_rules(vocab, meta)
    return vocab


def _fix_empty_tokens(tokens: list[str]) -> list[str]:
    # llama.cpp renames empty token strings so that they cannot match (and warns).
    if all(tokens):
        return tokens
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]


def _array(meta: dict, key: str, n: int, name: str):
    values = meta.get(key)
    if values is None:
        return None
    if len(values) < n:
        raise ModelFileError(f"{name} is corrupt: {key} has {len(values):,} entries for {n:,} tokens")
    return values[:n]


def _apply_model_defaults(vocab: Vocab, name: str) -> None:
    """The per-tokenizer-model defaults of llama.cpp (special ids, add_bos, space prefix)."""
    if vocab.model == "llama":  # SentencePiece
        vocab.bos_id, vocab.eos_id, vocab.unk_id = 1, 2, 0
        vocab.add_space_prefix, vocab.add_bos = True, True
    elif vocab.model == "gpt2":  # byte-level BPE
        if vocab.merges is None:
            raise ModelFileError(f"{name} is a BPE model without merges (tokenizer.ggml.merges is missing)")
        vocab.bos_id, vocab.eos_id = 11, 11
        pre = _pre_tokenizer(vocab.pre, name)
        vocab.pre_tokenizer = pre
        vocab.clean_spaces = pre.clean_spaces and bool(vocab.pre)  # llama.cpp: no cleanup when the name is missing
        vocab.ignore_merges = pre.ignore_merges
        if pre.add_bos is not None:
            vocab.add_bos = pre.add_bos
        if pre.no_bos:
            vocab.bos_id = None
    else:
        raise UnsupportedError(
            f"{name} uses the tokenizer model {vocab.model!r}; pellucid reads 'gpt2' (byte-level BPE) and "
            f"'llama' (SentencePiece) tokenizers from GGUF files"
        )
    for attr in ("bos_id", "eos_id", "unk_id"):  # defaults that do not exist in this vocabulary are dropped
        if getattr(vocab, attr) is not None and getattr(vocab, attr) >= vocab.n_tokens:
            setattr(vocab, attr, None)


def _pre_tokenizer(pre: str, name: str) -> PreTokenizer:
    if not pre:
        warnings.warn(
            f"{name} does not name its pre-tokenizer (tokenizer.ggml.pre); using 'default' as llama.cpp does. "
            f"Tokenization may not match the model's training, which degrades output; re-convert the model "
            f"with a current llama.cpp.",
            stacklevel=4,
        )
        return PRE_TOKENIZERS["default"]
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        # An error, not a fallback: a wrong pre-tokenizer silently feeds the model token sequences it never saw
        # in training. llama.cpp refuses such files too.
        raise UnsupportedError(
            f"{name} uses the pre-tokenizer {pre!r}, which pellucid does not implement. Supported: "
            f"{', '.join(sorted(PRE_TOKENIZERS))}."
        ) from None


def _apply_special_ids(vocab: Vocab, meta: dict, name: str) -> None:
    for key, attr in SPECIAL_ID_KEYS.items():
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is None:
            continue
        if not (0 <= int(value) < vocab.n_tokens):
            warnings.warn(f"{name}: tokenizer.ggml.{key}_token_id = {value} is outside the vocabulary", stacklevel=4)
            continue
        setattr(vocab, attr, int(value))
    for flag, key in (
        ("add_bos", "add_bos_token"),
        ("add_eos", "add_eos_token"),
        ("add_space_prefix", "add_space_prefix"),
    ):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:
            setattr(vocab, flag, bool(value))
    for flag, attr in (("add_bos", "bos_id"), ("add_eos", "eos_id")):
        if getattr(vocab, flag) and getattr(vocab, attr) is None:
            raise ModelFileError(f"{name} asks to add {attr[:3].upper()} tokens but does not say which token that is")


def _apply_text_fixups(vocab: Vocab) -> None:
    """llama.cpp's fix-ups by token text: detected EOT/EOM/FIM ids, the EOG set, forced token types.

    A token detected by its text, or one whose text says it ends generation, must be a control token; if the
    file types it otherwise (a conversion bug), llama.cpp overrides the type, which changes how text
    containing it is split.
    """
    known = vocab.find_ids(
        [t for texts in DETECTED_TEXTS.values() for t in texts] + list(EOG_TEXTS) + list(ALWAYS_RENDERED_TEXTS)
    )
    lookup = known.get
    attrs = vocab.attrs
    control = int(Attr.CONTROL)
    for kind, texts in DETECTED_TEXTS.items():
        if getattr(vocab, f"{kind}_id") is None:
            found = next((lookup(t) for t in texts if lookup(t) is not None), None)
            if found is not None:
                setattr(vocab, f"{kind}_id", found)
                attrs[found] |= control
    eog = {vocab.fim_pad_id, vocab.fim_rep_id, vocab.fim_sep_id}
    for text in EOG_TEXTS:
        if (token_id := lookup(text)) is not None:
            eog.add(token_id)
            attrs[token_id] |= control
    for text in ALWAYS_RENDERED_TEXTS:
        if (token_id := lookup(text)) is not None:
            attrs[token_id] = int(Attr.USER_DEFINED)
    eog.update((vocab.eos_id, vocab.eot_id, vocab.eom_id))
    eog.discard(None)
    _drop_false_eog(vocab, eog)
    vocab.eog_ids = frozenset(eog)


def _drop_false_eog(vocab: Vocab, eog: set[int]) -> None:
    """Drop the tokens false_eog names from `eog` and type them as text, as llama.cpp does."""
    by_text = {vocab.tokens[i]: i for i in eog}
    for text in false_eog(by_text):
        eog.discard(by_text[text])
        vocab.attrs[by_text[text]] = int(Attr.USER_DEFINED if text == "<|end|>" else Attr.NORMAL)


def false_eog(eog_texts) -> set[str]:
    """llama.cpp's two exceptions to ending generation by token text: of the end-of-generation token texts
    `eog_texts`, the ones that do not end generation after all.

    - gpt-oss (and Solar Open): "<|end|>" closes one message of a reply (the analysis channel), after which the
      model goes on; the reply ends at "<|return|>" or "<|call|>" ("<|flush|>"/"<|calls|>" for Solar Open).
    - Gemma 4 (and PLaMo): "</s>" is ordinary text (an HTML tag), not the end of a sequence.
    """
    calls = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
    out = set()
    if "<|end|>" in eog_texts and calls and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        out.add("<|end|>")
    if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
        out.add("</s>")
    return out


def _apply_strip_rules(vocab: Vocab, meta: dict) -> None:
    """llama.cpp's per-model whitespace stripping around special tokens, chosen by name (GGUF files do not
    store it): Phi-3 swallows whitespace after its special tokens; some encoders before their mask token."""
    model_name = str(meta.get("general.name", "")).lower()
    arch = str(meta.get("general.architecture", ""))
    if any(p in vocab.pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
        a in arch for a in ("nomic-bert-moe", "jina-bert-v3")
    ):
        _set_attr(vocab, "<mask>", Attr.LSTRIP, True)
    elif "phi-3" in model_name or "phi3" in model_name:
        special = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)
        vocab.attrs[(vocab.attrs & special) != 0] |= int(Attr.RSTRIP)
        _set_attr(vocab, "</s>", Attr.RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            _set_attr(vocab, text, Attr.RSTRIP, False)
    elif "modern-bert" in model_name:
        _set_attr(vocab, "[MASK]", Attr.LSTRIP, True)


def _set_attr(vocab: Vocab, text: str, attr: Attr, value: bool) -> None:
    for token_id in vocab.find_ids([text]).values():
        if value:
            vocab.attrs[token_id] |= int(attr)
        else:
            vocab.attrs[token_id] &= ~int(attr)
