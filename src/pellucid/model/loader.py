"""From a model file to a ready `Transformer`: read the config, pick the family, build each layer from its weights.

`load_model` is the entry point, for GGUF files and Hugging Face folders alike: each format gives a
`ModelConfig` (model/config.py), a family (its tensor names: model/families/) and a `Weights` (the file's
tensors by name), and `build_transformer` wires the same blocks from them. Layers are built directly from
named tensors, never created empty and filled later, and every projection goes through `make_linear`.

Quantized (and float16/bfloat16) matrices stay packed: `make_linear` wraps the file's bytes, memory-mapped
and mostly not even copied, in a `QuantizedLinear` whose kernels read them directly (quant/kernels.py), and
the token embedding becomes a `QuantizedEmbedding` that unpacks only the rows it is asked for. So loading
reads little more than the headers, and memory holds the file's 4-16 bits per weight rather than float32.
`quantize="q8_0" | "q4_0" | "q4_k"` packs float matrices into that block format at load instead (a bfloat16
HF folder then runs through the same kernels as a quantized GGUF file). Float32 matrices, norms and other
vectors are copied as dense tensors in the requested dtype (activations: float32 by default).

Every tensor's shape is checked against the config before it is used, and any tensor in the file that the
model did not use is an error: it means the file needs a feature we do not implement (a different layout,
an extra bias), and running without it would produce wrong text silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from pellucid.device import pick_device
from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.model.config import ModelConfig, config_from_gguf, config_from_hf
from pellucid.model.families import Family, TensorNames, family_for, family_for_hf
from pellucid.model.layers import (
    Attention,
    Block,
    Embedding,
    Experts,
    GatedMLP,
    Linear,
    MoE,
    RMSNorm,
    RotaryEmbedding,
    frozen,
)
from pellucid.model.layers.latent_attention import LatentAttention
from pellucid.model.layers.rope import llama3_freq_factors, yarn_freq_factors
from pellucid.model.transformer import Transformer
from pellucid.quant.linear import QuantizedEmbedding, QuantizedLinear
from pellucid.quant.packed import PackedWeight, pack
from pellucid.quant.types import GGMLType

# --quantize names -> the block format float matrices are packed into at load
QUANTIZE_TYPES = {"q8_0": GGMLType.Q8_0, "q4_0": GGMLType.Q4_0, "q4_k": GGMLType.Q4_K}
_FLOAT_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16}
_SAFETENSORS_TYPES = {"F32": GGMLType.F32, "F16": GGMLType.F16, "BF16": GGMLType.BF16}


class Weights:
    """A model file's tensors by name, dense (dequantized to `dtype` on `device`) or packed, with a record of use.

    `packed(name)` gives a matrix as the kernels read it (the file's block format, or `quantize`'s), or None
    where it stays a dense float32 matrix; asking twice returns the same object, which is how a tied output
    head shares the embedding. `shape(name)` is the stored shape, (out_features, in_features) for a matrix.
    """

    def __init__(
        self,
        load: Callable[[str], torch.Tensor],
        shapes: dict[str, tuple[int, ...]],
        *,
        device,
        dtype,
        pack: Callable[[str], PackedWeight | None] | None = None,
        source: str = "the model file",
        quantize: GGMLType | None = None,
    ):
        self._load = load
        self._pack = pack
        self.quantize = quantize
        self.shapes = shapes
        self.names = set(shapes)
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source  # named in errors
        self.used: set[str] = set()
        self._loaded: dict[str, nn.Parameter] = {}
        self._packed: dict[str, PackedWeight | None] = {}
        self._derived: dict[str, tuple[Callable, Callable | None, tuple[str, ...]]] = {}

    def derive(
        self,
        name: str,
        shape: tuple[int, ...],
        sources: tuple[str, ...],
        load: Callable[[], torch.Tensor],
        pack: Callable[[], PackedWeight | None] | None = None,
    ) -> None:
        """Offer a tensor the file does not hold as such, computed from `sources` when it is asked for (a family
        whose checkpoint lays a tensor out otherwise: GPT-OSS's gate and up experts interleaved in one
        transposed stack). Using it counts its sources as used. `pack`, if given, gives it packed (MXFP4 blocks
        rearranged); otherwise a matrix or stack is packed as a stored one would be: float16/bfloat16 as it is,
        any float into `quantize`'s format if the load asked for one, float32 left dense."""
        self.shapes[name] = tuple(shape)
        self.names.add(name)
        self._derived[name] = (load, pack, tuple(sources))

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, *, device, dtype, quantize: GGMLType | None = None) -> Weights:
        def pack_matrix(name: str) -> PackedWeight | None:
            info = gguf.tensors[name]
            if len(info.shape) not in (2, 3):
                return None
            # an expert stack (experts, out, in) packs as one (experts * out, in) matrix: rows stay whole
            shape = (math.prod(info.shape[:-1]), info.shape[-1])
            if quantize is not None and info.ggml_type in _FLOAT_TYPES:
                return _quantized(gguf.tensor(name).reshape(shape), quantize, info.ggml_type, gguf.raw(name))
            if info.ggml_type == GGMLType.F32:
                return None
            return pack(gguf.raw(name), info.ggml_type, shape)

        shapes = {name: info.shape for name, info in gguf.tensors.items()}
        return cls(gguf.tensor, shapes, device=device, dtype=dtype, pack=pack_matrix, source=gguf.path.name)

    @classmethod
    def from_hf(cls, folder, *, device, dtype, quantize: GGMLType | None = None) -> Weights:
        """The tensors of an open `formats.safetensors.HFFolder`; float16/bfloat16 matrices stay packed as stored
        (memory-mapped), float32 ones become dense, and `quantize` packs all of them into its block format."""

        def pack_matrix(name: str) -> PackedWeight | None:
            info = folder.tensors[name]
            stored = _SAFETENSORS_TYPES.get(info.dtype)
            if len(info.shape) != 2 or stored is None:
                return None
            if quantize is not None:
                return _quantized(folder.tensor(name, torch.float32), quantize, stored, folder.raw(name))
            if stored == GGMLType.F32:
                return None
            return pack(folder.raw(name), stored, info.shape)

        shapes = {name: info.shape for name, info in folder.tensors.items()}
        return cls(
            folder.tensor,
            shapes,
            device=device,
            dtype=dtype,
            pack=pack_matrix,
            source=folder.path.name,
            quantize=quantize,
        )

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor], *, device="cpu", dtype=torch.float32) -> Weights:
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        return cls(tensors.__getitem__, shapes, device=device, dtype=dtype, source="the weights")

    def has(self, name: str) -> bool:
        return name in self.names

    def stored(self, name: str) -> torch.Tensor:
        """The named tensor as the file stores it (its dtype, on the CPU), for `derive`'s loaders; not marked used."""
        self.shape(name)
        return self._load(name)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise ModelFileError(
                f"{self.source} has no tensor {name!r}, which this model needs; the file is incomplete or "
                f"was converted for another architecture"
            )
        return tuple(self.shapes[name])

    def expect(self, name: str, shape: tuple[int, ...], why: str) -> None:
        """Check a tensor's shape against what the config implies, before anything is built from it."""
        if self.shape(name) != tuple(shape):
            raise ModelFileError(
                f"{self.source}: tensor {name!r} has shape {self.shape(name)}, but the model's configuration "
                f"({why}) needs {tuple(shape)}. The metadata and the weights disagree: the file is damaged or "
                f"was edited; re-download or re-convert it."
            )

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> nn.Parameter:
        """The named tensor on the target device, in `dtype` (default: the model's).

        Asking twice returns the same Parameter object, which is how a tied output head shares the embedding.
        """
        dtype = dtype or self.dtype
        key = f"{name}:{dtype}"
        if key not in self._loaded:
            self.shape(name)  # a clear error for a missing tensor
            derived = self._derived.get(name)
            tensor = derived[0]() if derived else self._load(name)
            self._loaded[key] = frozen(tensor.to(device=self.device, dtype=dtype))
            self._mark_used(name)
        return self._loaded[key]

    def packed(self, name: str) -> PackedWeight | None:
        derived = self._derived.get(name)
        if self._pack is None and derived is None:
            return None
        if name not in self._packed:
            self.shape(name)
            if derived is not None:
                self._packed[name] = derived[1]() if derived[1] is not None else self._pack_derived(name)
            else:
                self._packed[name] = self._pack(name)
            self._mark_used(name)
        return self._packed[name]

    def _pack_derived(self, name: str) -> PackedWeight | None:
        shape = self.shapes[name]
        if len(shape) not in (2, 3):
            return None
        tensor = self._derived[name][0]()
        matrix = tensor.reshape(math.prod(shape[:-1]), shape[-1])  # a stack as one matrix, as GGUF stacks pack
        stored = {torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}.get(tensor.dtype, GGMLType.F32)
        if self.quantize is not None:
            return _quantized(matrix, self.quantize, stored, matrix.contiguous().view(torch.uint8))
        if stored == GGMLType.F32:
            return None
        return pack(matrix.contiguous().view(torch.uint8), stored, tuple(matrix.shape))

    def _mark_used(self, name: str) -> None:
        self.used.add(name)
        if name in self._derived:
            self.used.update(self._derived[name][2])

    def unused(self) -> list[str]:
        return sorted(self.names - self.used)


def _quantized(matrix: torch.Tensor, target: GGMLType, stored: GGMLType, raw) -> PackedWeight | None:
    """`matrix` packed into `target`. Rows that do not split into its blocks get llama-quantize's fallback
    (Q4_K -> Q5_0), or, when those do not fit either, stay as stored (packed float16/bfloat16, dense float32)."""
    from pellucid.quant.quantize import quantize_to_packed, type_for_rows

    chosen = type_for_rows(target, matrix.shape[1])
    if chosen is not None:
        return quantize_to_packed(matrix.float(), chosen)
    return None if stored == GGMLType.F32 else pack(raw, stored, tuple(matrix.shape))


def make_linear(weights: Weights, name: str, rows: tuple[int, int] | None = None) -> nn.Module:
    """The projection stored as `name` (out_features, in_features), or rows start..end of it (one part of a
    fused matrix), with the bias stored beside it if there is one. Every linear layer is built here."""
    packed = weights.packed(name)
    bias_name = name.removesuffix(".weight") + ".bias"
    bias = weights.tensor(bias_name, torch.float32) if weights.has(bias_name) else None
    if rows is not None:
        start, end = rows
        bias = frozen(bias[start:end]) if bias is not None else None
        if packed is not None:
            return QuantizedLinear(packed.row_slice(start, end), bias)
        return Linear(weights.tensor(name)[start:end], bias)
    if packed is not None:
        return QuantizedLinear(packed, bias)
    return Linear(weights.tensor(name), bias.to(weights.dtype) if bias is not None else None)


def make_experts(weights: Weights, template: str, n_experts: int, shape: tuple[int, int], why: str) -> list[nn.Module]:
    """One projection per expert, each (out, in) = `shape`: views of the rows of one 3-D stack (GGUF: the packed
    bytes stay the file's, memory-mapped), or one matrix per expert where `template` has an `{e}` (HF)."""
    if "{e}" in template:
        names = [template.format(e=e) for e in range(n_experts)]
        for name in names:
            weights.expect(name, shape, why)
        return [make_linear(weights, name) for name in names]
    weights.expect(template, (n_experts, *shape), why)
    packed = weights.packed(template)
    out = shape[0]
    if packed is not None:
        return [QuantizedLinear(packed.row_slice(e * out, (e + 1) * out)) for e in range(n_experts)]
    stack = weights.tensor(template)
    return [Linear(stack[e]) for e in range(n_experts)]


def make_embedding(weights: Weights, name: str) -> nn.Module:
    """The token embedding table stored as `name` (vocab, hidden)."""
    packed = weights.packed(name)
    return QuantizedEmbedding(packed, weights.dtype) if packed is not None else Embedding(weights.tensor(name))


# -- loading a file ---------------------------------------------------------------------------------------


def load_model(
    model,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
) -> Transformer:
    """Load a model ready for `forward`: a GGUF file or a Hugging Face folder (a ResolvedModel, a path, or an
    open GGUFFile). `quantize` ("q8_0", "q4_0", "q4_k") packs the file's float matrices at load."""
    started = time.perf_counter()
    target_type = _quantize_type(quantize)
    path = getattr(model, "path", model)  # a store.ResolvedModel carries .path
    if not isinstance(model, GGUFFile) and (getattr(model, "kind", None) == "hf" or os.path.isdir(path)):
        transformer = _load_hf(path, pick_device(device), dtype, target_type)
    else:
        transformer = _load_gguf(model, pick_device(device), dtype, target_type)
    transformer.eval()
    transformer.load_seconds = time.perf_counter() - started
    return transformer


def _quantize_type(quantize: str | None) -> GGMLType | None:
    if quantize is None:
        return None
    if quantize.lower() not in QUANTIZE_TYPES:
        raise UnsupportedError(f"--quantize takes {', '.join(QUANTIZE_TYPES)}, not {quantize!r}")
    return QUANTIZE_TYPES[quantize.lower()]


def _load_gguf(model, device, dtype, quantize) -> Transformer:
    gguf, opened_here = (
        (model, False) if isinstance(model, GGUFFile) else (GGUFFile(getattr(model, "path", model)), True)
    )
    try:
        family = family_for(gguf.architecture or "(none: general.architecture is missing)")
        _check_dtype(family, dtype)
        config = config_from_gguf(gguf.metadata, set(gguf.tensors))
        weights = Weights.from_gguf(gguf, device=device, dtype=dtype, quantize=quantize)
        transformer = build_transformer(config, weights, family.gguf_names)
        _refuse_unused(weights, family, gguf.path.name)
    finally:
        if opened_here:
            gguf.close()
    return transformer


def _load_hf(path, device, dtype, quantize) -> Transformer:
    from pellucid.formats.safetensors import HFFolder

    with HFFolder(path) as folder:
        text = folder.config.get("text_config") or folder.config
        family = family_for_hf(text.get("model_type") or folder.model_type or "(none: config.json has no model_type)")
        _check_dtype(family, dtype)
        config = config_from_hf(folder.config, set(folder.tensors))
        weights = Weights.from_hf(folder, device=device, dtype=dtype, quantize=quantize)
        if family.hf_weights is not None:
            family.hf_weights(weights, config, folder.config)
        names = _decoder_names(family.hf_names, weights)
        if config.tie_embeddings and weights.has(names.output):
            weights.used.add(names.output)  # transformers ignores lm_head when the config ties it, and so do we
        transformer = build_transformer(config, weights, names)
        _refuse_unused(weights, family, folder.path.name)
    return transformer


# Where multimodal checkpoints (Gemma 3 4B+, Mistral Small 3.1+) keep their text decoder, and their image parts
_DECODER_PREFIXES = ("model.", "language_model.model.", "model.language_model.")
_VISION_PREFIXES = (
    "vision_tower.",
    "vision_model.",  # Llama 4
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def _decoder_names(names: TensorNames, weights: Weights) -> TensorNames:
    """The family's HF names, moved under the prefix where this folder keeps the decoder.

    A multimodal checkpoint (Gemma3ForConditionalGeneration, Mistral3ForConditionalGeneration) holds the same
    decoder as the text-only model, under `language_model.model.` (or `model.language_model.`), next to an image
    encoder. pellucid runs the decoder on text, so the image encoder's tensors are left unread: without them the
    text path is complete (they only turn images into token embeddings).
    """
    prefix = next((p for p in _DECODER_PREFIXES if weights.has(p + "embed_tokens.weight")), "model.")
    if prefix == "model.":
        return names
    moved = {
        f.name: prefix + value.removeprefix("model.")
        for f in dataclasses.fields(names)
        if isinstance(value := getattr(names, f.name), str) and value.startswith("model.")
    }
    moved["ignored"] = tuple(prefix + n.removeprefix("model.") for n in names.ignored)
    if weights.has("language_model.lm_head.weight"):
        moved["output"] = "language_model.lm_head.weight"
    weights.used.update(n for n in weights.names if n.startswith(_VISION_PREFIXES))
    return dataclasses.replace(names, **moved)


def _check_dtype(family: Family, dtype: torch.dtype) -> None:
    if dtype == torch.float16 and not family.float16_ok:
        raise UnsupportedError(
            f"{family.name} models overflow float16 (activations exceed 65504); use bfloat16 or float32"
        )


# -- wiring the model -------------------------------------------------------------------------------------


def build_transformer(config: ModelConfig, weights: Weights, names: TensorNames) -> Transformer:
    """Wire a Transformer from `weights`, following `config` for every architectural switch."""
    _check_supported(config)
    if not config.vocab_size:  # a file with no vocabulary in its metadata: the embedding's rows say it
        config.vocab_size = weights.shape(names.embed)[0]
    vocab, hidden = config.vocab_size, config.hidden_size
    weights.expect(names.embed, (vocab, hidden), f"vocab_size {vocab:,} x hidden size {hidden:,}")
    blocks = [_build_block(config, weights, names, i) for i in range(config.n_layers)]
    embedding = make_embedding(weights, names.embed)
    output_name = names.embed if config.tie_embeddings else names.output
    weights.expect(output_name, (vocab, hidden), f"vocab_size {vocab:,} x hidden size {hidden:,}")
    for name in names.ignored:
        weights.used.update(name.format(i=i) for i in range(config.n_layers) if weights.has(name.format(i=i)))
    rope, rope_local = _build_ropes(config, weights, names)
    return Transformer(
        config,
        embedding=embedding,
        blocks=blocks,
        final_norm=_norm(weights, names.output_norm, config, hidden),
        output=make_linear(weights, output_name),
        rope=rope,
        rope_local=rope_local,
        dtype=weights.dtype,
    ).to(weights.device)


def _build_ropes(config: ModelConfig, weights: Weights, names: TensorNames):
    """The global layers' RoPE and, where local (sliding-window) layers use another base, theirs."""
    scaling = config.rope_scaling
    pairs = config.rope_dim // 2
    factors = long_factors = None
    if names.rope_freqs and weights.has(names.rope_freqs):  # GGUF: llama 3's divisors, computed by the converter
        weights.expect(names.rope_freqs, (pairs,), f"rope_dim {config.rope_dim} / 2")
        factors = weights.tensor(names.rope_freqs, torch.float32)
    elif scaling is not None and scaling.kind == "llama3":
        factors = llama3_freq_factors(
            config.rope_dim,
            config.rope_theta,
            scaling.factor,
            scaling.extra["low_freq_factor"],
            scaling.extra["high_freq_factor"],
            scaling.original_context_length,
        )
    elif scaling is not None and scaling.kind == "yarn":
        factors = yarn_freq_factors(
            config.rope_dim,
            config.rope_theta,
            scaling.factor,
            scaling.original_context_length,
            scaling.extra["beta_fast"],
            scaling.extra["beta_slow"],
            scaling.truncate,
        )
    elif scaling is not None and scaling.kind == "longrope":
        if scaling.short_factors is not None:  # config.json lists them
            factors, long_factors = torch.tensor(scaling.short_factors), torch.tensor(scaling.long_factors)
        else:  # GGUF stores them as two tensors
            for name in (names.rope_factors_short, names.rope_factors_long):
                weights.expect(name, (pairs,), f"rope_dim {config.rope_dim} / 2")
            factors = weights.tensor(names.rope_factors_short, torch.float32)
            long_factors = weights.tensor(names.rope_factors_long, torch.float32)
        if len(factors) != pairs or len(long_factors) != pairs:
            raise ModelFileError(f"LongRoPE needs {pairs} short and long factors (rope_dim {config.rope_dim} / 2)")
    linear_scale = scaling.factor if scaling is not None and scaling.kind == "linear" else 1.0
    rope = RotaryEmbedding(
        config.rope_dim,
        config.rope_theta,
        config.rope_style,
        linear_scale=linear_scale,
        freq_factors=factors,
        long_freq_factors=long_factors,
        original_context=scaling.original_context_length if scaling is not None else None,
        attention_factor=config.rope_attention_factor,
    )
    rope_local = None
    if config.rope_theta_local is not None and config.rope_theta_local != config.rope_theta:
        # Local (sliding-window) layers: their own base, and no long-context scaling (as in llama.cpp).
        rope_local = RotaryEmbedding(config.rope_dim, config.rope_theta_local, config.rope_style)
    return rope, rope_local


def _build_block(config: ModelConfig, weights: Weights, names: TensorNames, i: int) -> Block:
    def name(template: str | None) -> str:
        if template is None:
            raise UnsupportedError(f"{config.architecture} needs a tensor pellucid has no name for")
        return template.format(i=i, e="{e}")  # an expert's index is filled in later (make_experts)

    if config.kv_lora_rank:
        attention = _build_latent_attention(config, weights, names, name)
    else:
        attention = _build_attention(config, weights, names, name, i)
    sliding = bool(config.sliding_layers) and config.sliding_layers[i]
    hidden = config.hidden_size
    return Block(
        _norm(weights, name(names.attn_norm), config, hidden) if config.pre_norms else None,
        attention,
        _norm(weights, name(names.ffn_norm), config, hidden) if config.pre_norms else None,
        _build_moe(config, weights, names, name)
        if config.is_moe_layer(i)
        else _build_mlp(config, weights, names, name),
        sliding=sliding,
        post_attn_norm=_norm(weights, name(names.post_attn_norm), config, hidden) if config.post_norms else None,
        post_ffn_norm=_norm(weights, name(names.post_ffn_norm), config, hidden) if config.post_norms else None,
        residual_multiplier=config.residual_multiplier,
    )


def _build_attention(config: ModelConfig, weights: Weights, names: TensorNames, name, i: int) -> Attention:
    hidden, q_out = config.hidden_size, config.n_heads * config.head_dim
    kv_out, v_out = config.n_kv_heads * config.head_dim, config.n_kv_heads * config.value_head_dim
    heads = f"{config.n_heads} heads, {config.n_kv_heads} KV heads of {config.head_dim}"
    if names.qkv and weights.has(name(names.qkv)):  # fused (Phi-3): rows of q, then k, then v
        weights.expect(name(names.qkv), (q_out + kv_out + v_out, hidden), heads)
        q, k, v = (
            make_linear(weights, name(names.qkv), rows)
            for rows in ((0, q_out), (q_out, q_out + kv_out), (q_out + kv_out, q_out + kv_out + v_out))
        )
    else:
        weights.expect(name(names.q), (q_out, hidden), heads)
        weights.expect(name(names.k), (kv_out, hidden), heads)
        weights.expect(name(names.v), (v_out, hidden), heads)
        q, k, v = (make_linear(weights, name(n)) for n in (names.q, names.k, names.v))
    weights.expect(name(names.o), (hidden, config.n_heads * config.value_head_dim), heads)
    sliding = bool(config.sliding_layers) and config.sliding_layers[i]
    over_heads = config.qk_norm == "projection"
    sinks = None
    if config.attention_sinks:
        weights.expect(name(names.attn_sinks), (config.n_heads,), f"one attention sink per head ({config.n_heads})")
        sinks = weights.tensor(name(names.attn_sinks), torch.float32)
    weighted_qk_norm = config.qk_norm in ("head", "projection")
    use_rope = not config.rope_layers or config.rope_layers[i]
    chunked = bool(config.chunked_layers) and config.chunked_layers[i]
    return Attention(
        q,
        k,
        v,
        make_linear(weights, name(names.o)),
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        value_head_dim=config.value_head_dim,
        query_scale=config.query_scale,
        window=config.sliding_window if sliding else None,
        q_norm=_norm(weights, name(names.q_norm), config, q_out if over_heads else config.head_dim)
        if weighted_qk_norm
        else None,
        k_norm=_norm(weights, name(names.k_norm), config, kv_out if over_heads else config.head_dim)
        if weighted_qk_norm
        else None,
        qk_norm_over_heads=over_heads,
        softcap=config.attn_logit_softcap,
        use_rope=use_rope,
        sinks=sinks,
        chunk=config.attention_chunk_size if chunked else None,
        temperature=config.attn_temperature if not use_rope else None,
        norm_after_rope_eps=config.norm_eps if config.qk_norm == "post_rope" else None,
    )


def _build_latent_attention(config: ModelConfig, weights: Weights, names: TensorNames, name) -> LatentAttention:
    """MLA (DeepSeek): the query path, the shared latent + RoPE key, and the per-head decompression matrices."""
    hidden, heads, rank, rope_dim = config.hidden_size, config.n_heads, config.kv_lora_rank, config.rope_dim
    nope, v_dim = config.head_dim - rope_dim, config.value_head_dim
    why = (
        f"{heads} heads of {nope} + {rope_dim} (values {v_dim}), kv_lora_rank {rank}, q_lora_rank {config.q_lora_rank}"
    )
    q_out = heads * config.head_dim
    q = q_a = q_a_norm = q_b = None
    if config.q_lora_rank:
        weights.expect(name(names.q_a), (config.q_lora_rank, hidden), why)
        weights.expect(name(names.q_b), (q_out, config.q_lora_rank), why)
        q_a, q_b = make_linear(weights, name(names.q_a)), make_linear(weights, name(names.q_b))
        q_a_norm = _norm(weights, name(names.q_a_norm), config, config.q_lora_rank)
    else:
        weights.expect(name(names.q), (q_out, hidden), why)
        q = make_linear(weights, name(names.q))
    weights.expect(name(names.kv_a), (rank + rope_dim, hidden), why)
    if names.k_b and weights.has(name(names.k_b)):  # llama.cpp's split: k_b stored transposed (heads, rank, nope)
        weights.expect(name(names.k_b), (heads, rank, nope), why)
        weights.expect(name(names.v_b), (heads, v_dim, rank), why)
        k_b = weights.tensor(name(names.k_b), torch.float32).transpose(1, 2).contiguous()
        v_b = weights.tensor(name(names.v_b), torch.float32)
    else:  # one kv_b: per head, nope_dim rows of k then v_dim rows of v
        weights.expect(name(names.kv_b), (heads * (nope + v_dim), rank), why)
        k_b, v_b = (
            weights.tensor(name(names.kv_b), torch.float32).view(heads, nope + v_dim, rank).split([nope, v_dim], 1)
        )
        k_b, v_b = k_b.contiguous(), v_b.contiguous()
    weights.expect(name(names.o), (hidden, heads * v_dim), why)
    return LatentAttention(
        q,
        q_a,
        q_a_norm,
        q_b,
        make_linear(weights, name(names.kv_a)),
        _norm(weights, name(names.kv_a_norm), config, rank),
        k_b.to(weights.dtype),
        v_b.to(weights.dtype),
        make_linear(weights, name(names.o)),
        rope_dim=rope_dim,
        query_scale=config.query_scale,
    )


def _build_moe(config: ModelConfig, weights: Weights, names: TensorNames, name) -> MoE:
    hidden, n = config.hidden_size, config.n_experts
    router = name(names.router)
    weights.expect(router, (n, hidden), f"{n} experts, hidden size {hidden:,}")
    width = config.expert_ffn_size or weights.shape(name(names.gate_exps).replace("{e}", "0"))[-2]
    why = f"{n} experts, hidden size {hidden:,}, expert FFN size {width:,}"

    def experts(template: str | None, shape: tuple[int, int]) -> list[nn.Module]:
        return make_experts(weights, name(template), n, shape, why)

    def stack_bias(template: str | None, out: int) -> torch.Tensor | None:
        """A stack's biases (experts, out), stored beside it (GPT-OSS); per-expert matrices carry their own."""
        bias_name = name(template).removesuffix(".weight") + ".bias"
        if "{e}" in bias_name or not weights.has(bias_name):
            return None
        weights.expect(bias_name, (n, out), why)
        return weights.tensor(bias_name, torch.float32)

    if names.gate_up_exps and weights.has(name(names.gate_up_exps)):  # Llama 4's HF stacks, transposed
        routed = _transposed_experts(config, weights, name(names.gate_up_exps), name(names.down_exps), width, why)
    else:
        routed = Experts(
            experts(names.gate_exps, (width, hidden)),
            experts(names.up_exps, (width, hidden)),
            experts(names.down_exps, (hidden, width)),
            config.activation,
            biases=(
                stack_bias(names.gate_exps, width),
                stack_bias(names.up_exps, width),
                stack_bias(names.down_exps, hidden),
            ),
            swiglu_alpha=config.swiglu_alpha,
            swiglu_limit=config.swiglu_limit,
        )

    bias = None
    if names.router_bias and weights.has(name(names.router_bias)):
        weights.expect(name(names.router_bias), (n,), f"{n} experts")
        bias = weights.tensor(name(names.router_bias), torch.float32)
    shared = shared_gate = None
    if config.n_shared_experts:
        shared_ffn = config.shared_expert_ffn_size
        shared = _build_mlp(
            config,
            weights,
            dataclasses.replace(names, gate=names.gate_shexp, up=names.up_shexp, down=names.down_shexp, gate_up=None),
            name,
            shared_ffn,
        )
        if config.shared_expert_gate:
            gate_name = name(names.shexp_gate)
            if weights.shape(gate_name) not in ((hidden,), (1, hidden)):
                weights.expect(gate_name, (1, hidden), f"a shared-expert gate over hidden size {hidden:,}")
            shared_gate = Linear(weights.tensor(gate_name).reshape(1, hidden))  # GGUF stores a vector
    return MoE(
        make_linear(weights, router),
        routed,
        config.n_experts_used,
        gating=config.expert_gating,
        normalize=config.expert_weights_norm,
        scale=config.expert_weights_scale,
        selection_bias=bias,
        n_groups=config.n_expert_groups,
        n_groups_used=config.n_expert_groups_used,
        shared=shared,
        shared_gate=shared_gate,
        weights_on_input=config.expert_weights_on_input,
    )


def _transposed_experts(config: ModelConfig, weights: Weights, gate_up: str, down: str, width: int, why: str):
    """Experts stored as Llama 4's checkpoints do: gate_up (experts, hidden, 2 x width) holding every expert's
    gate then up columns, down (experts, width, hidden), both the transpose of a linear layer's (out, in). They are
    read as dense matrices in the model's dtype (transposed once at load); `--quantize` does not pack them."""
    hidden, n = config.hidden_size, config.n_experts
    weights.expect(gate_up, (n, hidden, 2 * width), why)
    weights.expect(down, (n, width, hidden), why)
    gate_up_t = weights.tensor(gate_up).transpose(1, 2)  # (experts, 2 x width, hidden)
    down_t = weights.tensor(down).transpose(1, 2)  # (experts, hidden, width)
    return Experts(
        [Linear(m[:width].contiguous()) for m in gate_up_t],
        [Linear(m[width:].contiguous()) for m in gate_up_t],
        [Linear(m.contiguous()) for m in down_t],
        config.activation,
    )


def _build_mlp(config: ModelConfig, weights: Weights, names: TensorNames, name, ffn: int | None = None) -> GatedMLP:
    hidden, ffn = config.hidden_size, ffn or config.ffn_size
    why = f"hidden size {hidden:,}, FFN size {ffn:,}"
    if names.gate_up and weights.has(name(names.gate_up)):  # fused (Phi-3): rows of gate, then up
        weights.expect(name(names.gate_up), (2 * ffn, hidden), why)
        gate, up = (
            make_linear(weights, name(names.gate_up), (0, ffn)),
            make_linear(weights, name(names.gate_up), (ffn, 2 * ffn)),
        )
    else:
        weights.expect(name(names.gate), (ffn, hidden), why)
        weights.expect(name(names.up), (ffn, hidden), why)
        gate, up = make_linear(weights, name(names.gate)), make_linear(weights, name(names.up))
    weights.expect(name(names.down), (hidden, ffn), why)
    return GatedMLP(gate, up, make_linear(weights, name(names.down)), config.activation)


def _norm(weights: Weights, name: str, config: ModelConfig, size: int) -> RMSNorm:
    weights.expect(name, (size,), f"a norm over {size:,} values")
    return RMSNorm(weights.tensor(name, torch.float32), config.norm_eps, offset=config.norm_weight_offset)


def _check_supported(config: ModelConfig) -> None:
    """Refuse features the generic decoder does not implement, rather than run them wrongly."""
    problems = []
    if config.n_experts and not 0 < config.n_experts_used <= config.n_experts:
        problems.append(f"routing to {config.n_experts_used} of {config.n_experts} experts")
    if config.n_expert_groups > 1 and config.n_experts % config.n_expert_groups:
        problems.append(f"{config.n_experts} experts that do not split into {config.n_expert_groups} groups")
    if config.rope_scaling is not None and config.rope_scaling.kind not in ("linear", "llama3", "longrope", "yarn"):
        problems.append(f"{config.rope_scaling.kind!r} RoPE scaling")
    if config.activation not in ("silu", "gelu_tanh", "swiglu_oai"):
        problems.append(f"the {config.activation!r} activation")
    if config.n_heads % config.n_kv_heads:
        problems.append(f"{config.n_heads} query heads that do not split into {config.n_kv_heads} KV groups")
    if problems:
        raise UnsupportedError(
            f"this {config.architecture} model uses {', '.join(problems)}, which pellucid does not run yet"
        )


def _refuse_unused(weights: Weights, family: Family, filename: str) -> None:
    unused = weights.unused()
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise UnsupportedError(
            f"{filename} holds tensors the {family.name} decoder does not use ({shown}); the model needs a "
            f"feature pellucid does not implement, and running without them would give wrong output"
        )
