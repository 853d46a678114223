"""Model families: which architectures pellucid runs, where each one keeps its tensors, and its quirks.

A family is data, not a model class: every family runs on the one generic `Transformer`. A family file
(`llama.py`, `qwen3.py`, ...) names its tensors in both formats (GGUF as llama.cpp's converter writes them,
and the Hugging Face checkpoint's names), explains its quirks in its docstring, and sets the architectural
switches its files leave implicit (`defaults`: activation, norm placement, QK-norm, sliding-window pattern,
...). The switches themselves are `ModelConfig` fields read by the shared blocks in `model/layers/`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pellucid.errors import UnsupportedError


@dataclass(frozen=True)
class TensorNames:
    """Where a family keeps each tensor; `{i}` is the layer index. None = the family has no such tensor.

    The defaults are llama.cpp's GGUF names. A projection's bias, when a file has one, sits under the
    weight's name with `.bias` for `.weight` (Qwen 2's q/k/v); fused projections (`qkv`, `gate_up`) replace
    their parts.
    """

    embed: str = "token_embd.weight"
    output: str = "output.weight"  # absent when the output projection is tied to the embedding
    output_norm: str = "output_norm.weight"
    rope_freqs: str | None = "rope_freqs.weight"  # per-pair RoPE frequency divisors (llama 3 long context)
    rope_factors_short: str | None = "rope_factors_short.weight"  # LongRoPE (Phi-3), up to the original context
    rope_factors_long: str | None = "rope_factors_long.weight"  # ... and beyond it
    attn_norm: str | None = "blk.{i}.attn_norm.weight"
    q: str | None = "blk.{i}.attn_q.weight"
    k: str | None = "blk.{i}.attn_k.weight"
    v: str | None = "blk.{i}.attn_v.weight"
    qkv: str | None = None  # q, k and v stacked in one matrix (rows: all of q, then k, then v)
    o: str = "blk.{i}.attn_output.weight"
    ffn_norm: str | None = "blk.{i}.ffn_norm.weight"
    gate: str | None = "blk.{i}.ffn_gate.weight"
    up: str | None = "blk.{i}.ffn_up.weight"
    gate_up: str | None = None  # gate and up stacked in one matrix (rows: gate, then up)
    down: str = "blk.{i}.ffn_down.weight"
    q_norm: str | None = None
    k_norm: str | None = None
    post_attn_norm: str | None = None
    post_ffn_norm: str | None = None
    attn_sinks: str | None = "blk.{i}.attn_sinks.weight"  # one logit per head (GPT-OSS)
    # Latent attention (MLA): the low-rank query, the shared latent and RoPE key, and the per-head decompression,
    # either as one matrix (HF's kv_b_proj: per head, nope rows then v rows) or split (llama.cpp's attn_k_b,
    # stored transposed as (heads, rank, nope), and attn_v_b (heads, v, rank))
    q_a: str | None = None
    q_a_norm: str | None = None
    q_b: str | None = None
    kv_a: str | None = None
    kv_a_norm: str | None = None
    kv_b: str | None = None
    k_b: str | None = None
    v_b: str | None = None
    # Mixture-of-experts layers (model/layers/moe.py). An expert template with `{e}` names one matrix per expert
    # (Hugging Face folders); without it, one 3-D stack (experts x out x in) holds them all (GGUF).
    router: str | None = "blk.{i}.ffn_gate_inp.weight"
    router_bias: str | None = "blk.{i}.exp_probs_b.bias"  # added to the scores for choosing only (DeepSeek V3)
    gate_exps: str | None = "blk.{i}.ffn_gate_exps.weight"
    up_exps: str | None = "blk.{i}.ffn_up_exps.weight"
    down_exps: str | None = "blk.{i}.ffn_down_exps.weight"
    # every expert's gate and up in one stack stored transposed, (experts, in, 2 x out), with down_exps then
    # (experts, ffn, hidden) transposed too (Llama 4's Hugging Face checkpoints)
    gate_up_exps: str | None = None
    gate_shexp: str | None = "blk.{i}.ffn_gate_shexp.weight"  # the shared experts, as one gated FFN
    up_shexp: str | None = "blk.{i}.ffn_up_shexp.weight"
    down_shexp: str | None = "blk.{i}.ffn_down_shexp.weight"
    shexp_gate: str | None = "blk.{i}.ffn_gate_inp_shexp.weight"  # Qwen 2 MoE: sigmoid gate on the shared expert
    # Tensors a checkpoint may carry that the model recomputes (old llama checkpoints' rotary inv_freq)
    ignored: tuple[str, ...] = ()


# The Hugging Face names of the llama-style decoders (LlamaForCausalLM and the families built like it).
HF_NAMES = TensorNames(
    embed="model.embed_tokens.weight",
    output="lm_head.weight",
    output_norm="model.norm.weight",
    rope_freqs=None,
    rope_factors_short=None,
    rope_factors_long=None,
    attn_norm="model.layers.{i}.input_layernorm.weight",
    q="model.layers.{i}.self_attn.q_proj.weight",
    k="model.layers.{i}.self_attn.k_proj.weight",
    v="model.layers.{i}.self_attn.v_proj.weight",
    o="model.layers.{i}.self_attn.o_proj.weight",
    ffn_norm="model.layers.{i}.post_attention_layernorm.weight",
    gate="model.layers.{i}.mlp.gate_proj.weight",
    up="model.layers.{i}.mlp.up_proj.weight",
    down="model.layers.{i}.mlp.down_proj.weight",
    router="model.layers.{i}.mlp.gate.weight",
    router_bias="model.layers.{i}.mlp.gate.e_score_correction_bias",
    gate_exps="model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
    up_exps="model.layers.{i}.mlp.experts.{e}.up_proj.weight",
    down_exps="model.layers.{i}.mlp.experts.{e}.down_proj.weight",
    gate_shexp="model.layers.{i}.mlp.shared_experts.gate_proj.weight",  # DeepSeek; Qwen 2 MoE: shared_expert
    up_shexp="model.layers.{i}.mlp.shared_experts.up_proj.weight",
    down_shexp="model.layers.{i}.mlp.shared_experts.down_proj.weight",
    shexp_gate=None,
    attn_sinks="model.layers.{i}.self_attn.sinks",
    ignored=("model.layers.{i}.self_attn.rotary_emb.inv_freq",),
)


def hf_names(**changes: Any) -> TensorNames:
    """HF_NAMES with a family's differences."""
    return replace(HF_NAMES, **changes)


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # GGUF general.architecture values (what llama.cpp's converter writes)
    gguf_names: TensorNames
    hf_model_types: tuple[str, ...] = ()  # config.json model_type values; empty = not loadable from HF folders
    hf_names: TensorNames = HF_NAMES
    # ModelConfig switches the files leave implicit, for both formats (plus a few hints config.py reads:
    # sliding_window_every, no_rope_every, query_scale_from_key_length, hf_norm_weight_offset)
    defaults: dict[str, Any] = field(default_factory=dict)
    gguf_defaults: dict[str, Any] = field(default_factory=dict)  # GGUF only (e.g. llama's permuted RoPE)
    # Family-specific config.json keys -> ModelConfig fields: hook(config.json's decoder dict, fields so far)
    hf_config: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    # The same for GGUF metadata: hook(get, fields so far), where get(suffix) reads `{arch}.{suffix}`
    gguf_config: Callable[[Callable[..., Any], dict[str, Any]], dict[str, Any]] | None = None
    # Tensors a family's HF checkpoint lays out otherwise, offered under its hf_names: hook(Weights, ModelConfig,
    # config.json) calling `Weights.derive` (GPT-OSS's interleaved, transposed expert stacks)
    hf_weights: Callable[[Any, Any, dict[str, Any]], None] | None = None
    float16_ok: bool = True  # False where activations outgrow float16's range (65504) and turn into inf


def _families() -> list[Family]:
    from pellucid.model.families import (
        deepseek2,
        gemma2,
        gemma3,
        gpt_oss,
        granite,
        llama,
        llama4,
        olmo2,
        phi3,
        qwen2,
        qwen2moe,
        qwen3,
        qwen3moe,
        smollm3,
    )

    families = (
        llama, qwen2, qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3, olmo2, smollm3, granite, deepseek2, gpt_oss,
        llama4,
    )  # fmt: skip
    return [m.FAMILY for m in families]


def _registry() -> dict[str, Family]:
    return {arch: family for family in _families() for arch in family.architectures}


def _hf_registry() -> dict[str, Family]:
    return {model_type: family for family in _families() for model_type in family.hf_model_types}


def supported_architectures() -> list[str]:
    return sorted(_registry())


def supported_hf_model_types() -> list[str]:
    return sorted(_hf_registry())


def known_family(name: str) -> Family | None:
    """The family of a GGUF architecture or config.json model_type, or None."""
    return _registry().get(name) or _hf_registry().get(name)


def family_for(architecture: str) -> Family:
    """The family that runs the GGUF `architecture`, or an UnsupportedError that says what pellucid runs."""
    family = _registry().get(architecture)
    if family is None:
        raise UnsupportedError(_unsupported_message(architecture, supported_architectures(), "architecture"))
    return family


def family_for_hf(model_type: str) -> Family:
    """The family that runs config.json's `model_type`, or an UnsupportedError that says what pellucid runs."""
    family = _hf_registry().get(model_type)
    if family is None:
        raise UnsupportedError(_unsupported_message(model_type, supported_hf_model_types(), "model_type"))
    return family


# Architectures pellucid does not run, and the supported family closest to each (what a user could try, or
# what the model is built like). Keys are llama.cpp architecture names and config.json model_types.
RELATIVES = {
    "qwen": "qwen2 / qwen3 (Qwen 1 is not supported)",
    "mixtral": "llama (Mistral 7B is llama-shaped); mixture-of-experts is not supported yet",
    "gemma": "gemma2 / gemma3 (Gemma 1 is not supported)",
    "gemma3n": "gemma3 (Gemma 3n's per-layer embeddings and AltUp are not supported)",
    "olmo": "olmo2",
    "olmo3": "olmo2 (OLMo 3 adds sliding-window layers)",
    "olmoe": "olmo2 (OLMoE is a mixture-of-experts model, not supported yet)",
    "phi2": "phi3",
    "granitemoe": "granite (the dense Granite 3 models); mixture-of-experts is not supported yet",
    "internlm2": "llama (InternLM 2 is llama-shaped with a fused qkv; not supported yet)",
    "starcoder2": "none (StarCoder 2 uses LayerNorm and a plain GELU MLP)",
    "bert": "run it with `pellucid embed`: BERT is an encoder, not a text generator",
}


def _unsupported_message(name: str, supported: list[str], what: str) -> str:
    message = f"pellucid cannot run the {name!r} {what} yet; supported: {', '.join(supported)}."
    relative = RELATIVES.get(name) or RELATIVES.get(name.lower())
    if relative is None:
        close = difflib.get_close_matches(name.lower(), supported, n=1, cutoff=0.8)
        relative = close[0] if close else None
    if relative:
        message += f" Closest supported family: {relative}."
    return message
