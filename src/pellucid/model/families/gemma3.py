"""Gemma 3 (text): llama's skeleton with four changes.

- Embeddings are multiplied by sqrt(hidden_size) before the first layer.
- Each branch is normalised on both sides: attn_norm -> attention -> post_attention_norm, and
  ffn_norm -> GeGLU (tanh-approximated GELU) -> post_ffw_norm, before the residual add.
- Queries and keys get a per-head RMSNorm (attn_q_norm / attn_k_norm) before RoPE (NeoX pairing), and
  queries are scaled by 1/sqrt(query_pre_attn_scalar), which the converter stores as `key_length`.
- Five of every six layers attend within a sliding window (512 tokens) with RoPE base 10,000; every sixth
  is global with the file's base (1e6), and, in the larger models, linear RoPE scaling.

Gemma's RMSNorm multiplies by (1 + w). The GGUF converter has already added the 1 to every stored norm
weight (the fixtures confirm it), so GGUF norms use the weights as they are; an HF checkpoint stores w, so
its norms get `norm_weight_offset = 1`.

HF names: `Gemma3ForCausalLM` (model_type gemma3_text); the 4B-27B checkpoints are
`Gemma3ForConditionalGeneration`, the same decoder under `language_model.` beside an image encoder, whose text
part runs (loader.py). In Gemma's HF naming `post_attention_layernorm` is
the norm *after* attention, and `pre_feedforward_layernorm` the one before the FFN (llama's
post_attention_layernorm).

Gemma's residual stream outgrows float16 (its logits become NaN), so it runs in float32 or bfloat16 only.
"""

from typing import Any

from pellucid.model.config import hf_rope_parameters
from pellucid.model.families import Family, TensorNames, hf_names

GGUF_NAMES = TensorNames(
    q_norm="blk.{i}.attn_q_norm.weight",
    k_norm="blk.{i}.attn_k_norm.weight",
    post_attn_norm="blk.{i}.post_attention_norm.weight",
    post_ffn_norm="blk.{i}.post_ffw_norm.weight",
)
HF_NAMES = hf_names(
    q_norm="model.layers.{i}.self_attn.q_norm.weight",
    k_norm="model.layers.{i}.self_attn.k_norm.weight",
    post_attn_norm="model.layers.{i}.post_attention_layernorm.weight",
    ffn_norm="model.layers.{i}.pre_feedforward_layernorm.weight",
    post_ffn_norm="model.layers.{i}.post_feedforward_layernorm.weight",
)


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    local = hf_rope_parameters(text, "sliding_attention")
    return {
        "query_scale": float(text.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5,
        # transformers 4: rope_local_base_freq; 5: rope_parameters["sliding_attention"]["rope_theta"]
        "rope_theta_local": float(text.get("rope_local_base_freq") or local.get("rope_theta", 10_000.0)),
    }


FAMILY = Family(
    name="gemma3",
    architectures=("gemma3",),
    gguf_names=GGUF_NAMES,
    hf_model_types=("gemma3_text",),
    hf_names=HF_NAMES,
    defaults={
        "activation": "gelu_tanh",
        "embedding_scale_by_sqrt_hidden": True,
        "post_norms": True,
        "qk_norm": "head",
        "rope_theta_local": 10_000.0,  # local (sliding-window) layers use their own, shorter RoPE base
        "sliding_window_every": 6,  # every 6th layer is global; the other five use the sliding window
        "query_scale_from_key_length": True,
        "hf_norm_weight_offset": 1.0,
    },
    hf_config=hf_config,
    float16_ok=False,
)
