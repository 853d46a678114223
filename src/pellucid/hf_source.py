"""A Hugging Face folder (llama, qwen2, qwen3, olmo2, smollm3) read as the GGUF file llama.cpp's converter would make.

`pellucid quantize` reads its source through the interface of `formats.gguf.GGUFFile` (metadata with their GGUF
types, tensors under GGUF names, `raw()` and `tensor()`); `HFSource` offers the same for an HF folder, doing what
llama.cpp's convert_hf_to_gguf.py does for `LlamaForCausalLM` / `MistralForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`, `Olmo2ForCausalLM` and `SmolLM3ForCausalLM`:

- metadata: the `{arch}.*` hyperparameters from config.json (the keys, types and order the converter writes);
- the tokenizer: tokenizer.json's byte-level BPE as `tokenizer.ggml.*` (tokens, token types, merges, special ids,
  add_bos, chat template: gguf-py's SpecialVocab reads the last four as the converter does); the pre-tokenizer name
  from what it does (`_pre_name`: llama 3's regex -> llama-bpe or dbrx, Qwen 2's -> qwen2, SmolLM's digit split ->
  smollm or refact, GPT-2's -> gpt-2);
- tensors: the family's HF -> GGUF name map (model/families), biases beside their weights, 1-D tensors and norms
  in float32; for llama, q and k rows permuted within each head so that RoPE rotates adjacent pairs (the
  converter's `permute`) and llama 3 RoPE scaling stored as `rope_freqs.weight`.

The other families' converters add their own keys and tensor changes (Gemma's norm offsets, Phi-3's LongRoPE
factors, Granite's multipliers, ...), so their folders are refused, and so are SentencePiece tokenizers (Llama 2,
Mistral 7B v0.1: byte fallback), other pre-tokenizers (Mistral Nemo's tekken) and RoPE scalings other than llama3
and linear.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pellucid.errors import UnsupportedError
from pellucid.formats.gguf import DEFAULT_ALIGNMENT, TensorInfo
from pellucid.formats.safetensors import HFFolder
from pellucid.model.families import Family, TensorNames, known_family
from pellucid.quant.types import GGMLType, tensor_nbytes

STORED_TYPES = {"F32": GGMLType.F32, "F16": GGMLType.F16, "BF16": GGMLType.BF16}
TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 5, 3, 4  # gguf.TokenType

# tokenizer.json pre-tokenizers -> llama.cpp's tokenizer.ggml.pre (what convert_hf_to_gguf's hash table finds for
# the models built this way)
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one

# The families converted here: what their converter class adds to TextModel's keys. LlamaModel writes vocab_size and
# rope.dimension_count and permutes q / k (SmolLM3Model is one); Qwen2Model, Qwen3Model and Olmo2Model write the
# base keys only, rows as stored. True: a LlamaModel.
CONVERTED = {"llama": True, "smollm3": True, "qwen2": False, "qwen3": False, "olmo2": False}


@dataclass
class _Part:
    path: Path


class HFSource:
    """An open HF folder of a converted family, seen as a GGUF file (the parts of GGUFFile that quantize reads)."""

    def __init__(self, path: Path):
        self.folder = HFFolder(path)
        try:
            self._read()
        except BaseException:
            self.folder.close()
            raise

    def _read(self) -> None:
        self.path = self.folder.path
        self.parts = [_Part(f) for f in self.folder.files]
        self.alignment = DEFAULT_ALIGNMENT
        model_type = self.folder.model_type or "(none)"
        family = known_family(model_type)
        if family is None or family.name not in CONVERTED:
            raise UnsupportedError(
                f"pellucid converts Hugging Face folders of the {', '.join(CONVERTED)} families only ({model_type!r} "
                f"here). Convert it with llama.cpp's convert_hf_to_gguf.py --outtype f16, then quantize that file"
            )
        self.family: Family = family
        self.arch = family.architectures[0]
        self.is_llama = CONVERTED[family.name]
        self.config = self.folder.config
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, str] = {}
        self._hparams()
        self._tokenizer()
        self._map: dict[str, str] = {}  # GGUF name -> HF name
        self.tensors: dict[str, TensorInfo] = {}
        self._extra: dict[str, torch.Tensor] = {}
        self._map_tensors()
        self._size_label()

    # -- GGUFFile's interface ---------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    @property
    def file_size(self) -> int:
        return sum(f.stat().st_size for f in self.folder.files)

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    def tensor(self, name: str, dtype=None, device=None) -> torch.Tensor:
        """The tensor as llama.cpp's converter stores it, in float32 (exact for f16/bf16 weights)."""
        if name in self._extra:
            return self._extra[name].clone()
        hf = self._map[name]
        w = self.folder.tensor(hf, dtype=torch.float32)
        if self.is_llama and name.endswith(("attn_q.weight", "attn_q.bias")):
            w = _permute(w, self.metadata[f"{self.arch}.attention.head_count"])
        elif self.is_llama and name.endswith(("attn_k.weight", "attn_k.bias")):
            w = _permute(w, self.metadata[f"{self.arch}.attention.head_count_kv"])
        return w

    def raw(self, name: str) -> np.ndarray:
        """The bytes in the stored type (a permutation of the stored values for q and k)."""
        info = self.tensors[name]
        w = self.tensor(name)
        stored = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}
        return w.to(stored[info.ggml_type]).contiguous().view(torch.uint8).numpy().reshape(-1)

    def close(self) -> None:
        self.folder.close()

    def __enter__(self) -> HFSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _size_label(self) -> None:
        """general.size_label ("135M", "8B"): the converter's, from the parameter count of the tensors it writes."""
        from gguf.utility import size_label

        self.metadata["general.size_label"] = size_label(sum(t.n_elements for t in self.tensors.values()), 0, 0, 0)

    # -- metadata: LlamaModel.set_gguf_parameters ---------------------------------------------------------------
    def _put(self, key: str, value: Any, type_name: str) -> None:
        self.metadata[key] = value
        self.metadata_types[key] = type_name

    def _hparams(self) -> None:
        c = self.config
        n_head = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // n_head
        a = self.arch
        self._put("general.architecture", a, "string")
        self._put("general.type", "model", "string")
        self._put("general.name", self.path.name, "string")
        self._put("general.size_label", "", "string")  # counted once the tensors are known: _size_label
        self._put(f"{a}.block_count", c["num_hidden_layers"], "uint32")
        self._put(f"{a}.context_length", c["max_position_embeddings"], "uint32")
        self._put(f"{a}.embedding_length", c["hidden_size"], "uint32")
        self._put(f"{a}.feed_forward_length", c["intermediate_size"], "uint32")
        self._put(f"{a}.attention.head_count", n_head, "uint32")
        self._put(f"{a}.attention.head_count_kv", c.get("num_key_value_heads") or n_head, "uint32")
        rope = _rope_parameters(c)
        self._put(f"{a}.rope.freq_base", float(np.float32(rope.get("rope_theta", 10000.0))), "float32")
        self._put(f"{a}.attention.layer_norm_rms_epsilon", float(np.float32(c["rms_norm_eps"])), "float32")
        if c.get("head_dim"):
            self._put(f"{a}.attention.key_length", head_dim, "uint32")
            self._put(f"{a}.attention.value_length", head_dim, "uint32")
        self._put("general.file_type", 0, "uint32")  # replaced by the target's
        if self.is_llama:
            self._put(f"{a}.vocab_size", c["vocab_size"], "uint32")
            self._put(f"{a}.rope.dimension_count", head_dim, "uint32")
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind == "linear":
            self._put(f"{self.arch}.rope.scaling.type", "linear", "string")
            self._put(f"{self.arch}.rope.scaling.factor", float(np.float32(rope["factor"])), "float32")
        elif kind not in ("default", "llama3") or (kind == "llama3" and not self.is_llama):
            raise UnsupportedError(
                f"{self.path.name}: RoPE scaling {kind!r} is not converted by pellucid yet; convert the folder with "
                f"llama.cpp's convert_hf_to_gguf.py --outtype f16, then quantize that file"
            )
        self._rope = (kind, rope, head_dim)

    # -- the tokenizer: TextModel._set_vocab_gpt2 --------------------------------------------------------------
    def _tokenizer(self) -> None:
        import gguf

        path = self.folder.tokenizer_json
        if path is None:
            raise UnsupportedError(
                f"{self.path.name} has no tokenizer.json; pellucid converts byte-level BPE tokenizers"
            )
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback"):
            raise UnsupportedError(
                f"{self.path.name}'s tokenizer is SentencePiece-style (byte fallback), which pellucid does not convert "
                f"yet; convert the folder with llama.cpp's convert_hf_to_gguf.py --outtype f16, then quantize that file"
            )
        tokens, types = _vocab(tok, self.config["vocab_size"])
        self._put("tokenizer.ggml.model", "gpt2", "string")
        clean_up = bool((self.folder.tokenizer_config or {}).get("clean_up_tokenization_spaces"))
        self._put("tokenizer.ggml.pre", _pre_name(tok, clean_up, self.path.name), "string")
        self._put("tokenizer.ggml.tokens", tokens, "array[string]")
        self._put("tokenizer.ggml.token_type", np.array(types, dtype=np.int32), "array[int32]")
        # merges, special token ids, add_bos/eos, chat template: gguf-py's SpecialVocab, as the converter runs it
        recorder = gguf.GGUFWriter(None, self.arch)
        quiet = logging.getLogger("gguf")  # its notes on post-processor templates are for converter authors
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            gguf.SpecialVocab(self.path, load_merges=True, n_vocab=len(tokens)).add_to_gguf(recorder)
        finally:
            quiet.setLevel(level)
        for key, value in recorder.kv_data[0].items():
            if key == "general.architecture":
                continue
            if value.type == gguf.GGUFValueType.ARRAY:
                sub = value.sub_type or gguf.GGUFValueType.get_type(value.value[0])
                self._put(key, list(value.value), f"array[{sub.name.lower()}]")
            else:
                self._put(key, value.value, value.type.name.lower())

    # -- tensors: names, permutation, rope_freqs ---------------------------------------------------------------
    def _map_tensors(self) -> None:
        hf_names, gguf_names = self.family.hf_names, self.family.gguf_names
        n_layer = self.config["num_hidden_layers"]
        pairs = [(hf_names.embed, gguf_names.embed), (hf_names.output_norm, gguf_names.output_norm)]
        tied = self.config.get("tie_word_embeddings", False) or hf_names.output not in self.folder.tensors
        if not tied:
            pairs.append((hf_names.output, gguf_names.output))
        fields = ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down", "q_norm", "k_norm")
        fields += ("post_attn_norm", "post_ffn_norm")
        for i in range(n_layer):
            for field in fields:
                hf, gg = getattr(hf_names, field), getattr(gguf_names, field)
                if hf is None or gg is None:
                    continue
                pairs.append((hf.format(i=i), gg.format(i=i)))
                bias = hf.format(i=i).removesuffix(".weight") + ".bias"  # Qwen 2's q/k/v biases
                if bias in self.folder.tensors:
                    pairs.append((bias, gg.format(i=i).removesuffix(".weight") + ".bias"))
        missing = [hf for hf, _ in pairs if hf not in self.folder.tensors]
        ignored = _ignored(hf_names, n_layer) | ({hf_names.output} if tied else set())  # a tied lm_head is a copy
        unused = sorted(set(self.folder.tensors) - {hf for hf, _ in pairs} - ignored)
        if missing or unused:
            raise UnsupportedError(
                f"{self.path.name} is not laid out as a plain {self.family.name} checkpoint (missing: {missing[:3]}, "
                f"unexpected: {unused[:3]}); convert it with llama.cpp's convert_hf_to_gguf.py --outtype f16 instead"
            )
        kind, rope, head_dim = self._rope
        if kind == "llama3":
            self._extra[gguf_names.rope_freqs] = _llama3_rope_factors(rope, head_dim)
        for name, t in self._extra.items():
            self.tensors[name] = TensorInfo(name, tuple(t.shape), GGMLType.F32, 0, t.numel() * 4)
        for hf, gg in pairs:
            info = self.folder.tensors[hf]
            if info.dtype not in STORED_TYPES:
                raise UnsupportedError(f"{self.path.name}: tensor {hf} is {info.dtype}; pellucid converts F32/F16/BF16")
            self._map[gg] = hf
            # the converter keeps 1-D tensors and norms in float32 whatever the checkpoint's dtype (so does quantize)
            kept = GGMLType.F32 if len(info.shape) <= 1 or gg.endswith("_norm.weight") else STORED_TYPES[info.dtype]
            self.tensors[gg] = TensorInfo(gg, info.shape, kept, 0, tensor_nbytes(kept, info.n_elements))


def _rope_parameters(c: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's rope_parameters, or 4's rope_theta + rope_scaling."""
    rope = dict(c.get("rope_parameters") or {})
    if not rope:
        rope = dict(c.get("rope_scaling") or {})
        rope.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    return rope


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute: each head's rows (first half, second half) interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> torch.Tensor:
    """LlamaModel.generate_extra_tensors: the per-frequency divisors of llama 3's RoPE scaling."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _vocab(tok: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """TextModel.get_vocab_base: every id's token (`[PADi]` for holes); added tokens CONTROL when special (or when
    they look like <|...|>), USER_DEFINED otherwise."""
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        token = by_id[i]
        if i in added:
            looks_special = token.startswith(("<|", "<｜")) and token.endswith(("|>", "｜>"))
            types.append(TOKEN_CONTROL if added[i].get("special") or looks_special else TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
        tokens.append(token)
    return tokens, types


def _pre_name(tok: dict[str, Any], clean_up: bool, folder: str) -> str:
    """The tokenizer.ggml.pre llama.cpp needs, from what the pre-tokenizer does. The converter looks a hash of its
    output up in a table of known models; models with the same regex can get different names there, which matter
    to llama.cpp only through the flags its pretokenize table ties to them (tokenizer/pretokenize.py), so the
    choice goes by those flags: llama 3's regex ignoring merges is llama-bpe, without it dbrx (OLMo 2); digits one
    by one before GPT-2's regex is smollm, or refact when detokenizing cleans up spaces (Granite)."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds and kinds[0] == "Split":
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex == LLAMA3_REGEX:
            return "llama-bpe" if tok["model"].get("ignore_merges") else "dbrx"
        if regex == QWEN2_REGEX:
            return "qwen2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "refact" if clean_up else "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise UnsupportedError(
        f"{folder}'s pre-tokenizer is not one pellucid can name for llama.cpp (llama 3's, Qwen 2's, SmolLM's or "
        f"GPT-2's); convert the folder with llama.cpp's convert_hf_to_gguf.py --outtype f16, then quantize that file"
    )


def _ignored(names: TensorNames, n_layer: int) -> set[str]:
    return {pattern.format(i=i) for pattern in names.ignored for i in range(n_layer)}
