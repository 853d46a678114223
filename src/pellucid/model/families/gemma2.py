"""Gemma 2: Gemma 3's layout without QK-norm, plus logit soft-capping.

- Embeddings times sqrt(hidden_size); GeGLU FFN (tanh GELU); RMSNorm on both sides of each branch
  (attn_norm -> attention -> post_attention_norm, ffn_norm -> FFN -> post_ffw_norm).
- Attention scores are soft-capped, cap * tanh(scores / cap) with cap 50, before the mask and softmax, and
  so are the final logits (cap 30): `attn_logit_softcapping` / `final_logit_softcapping` in both formats.
- Queries are scaled by query_pre_attn_scalar^-0.5: head_dim (256) for 2B and 9B, hidden / heads (144) for
  27B. config.json states the scalar; GGUF files do not, and llama.cpp picks the 27B's by its 46 layers, as
  `gguf_config` below does.
- Layers alternate: even layers attend within a 4,096-token sliding window, odd layers globally (llama.cpp's
  swa pattern 2; transformers' layer_types). One RoPE base for both.

Norm weights are stored as w with the norm multiplying by (1 + w) in HF checkpoints (offset added at load);
GGUF files have the 1 folded in. Float32 or bfloat16 only (float16 overflows, as in Gemma 3).
"""

from dataclasses import replace
from typing import Any

from pellucid.model.families import Family, hf_names
from pellucid.model.families.gemma3 import GGUF_NAMES


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "query_scale": float(text.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5,
        "attn_logit_softcap": text.get("attn_logit_softcapping") or None,
        "final_logit_softcap": text.get("final_logit_softcapping") or None,
    }


def gguf_config(get, fields: dict[str, Any]) -> dict[str, Any]:
    if fields["n_layers"] == 46:  # Gemma 2 27B (llama.cpp's LLM_TYPE_27B test)
        return {"query_scale": (fields["hidden_size"] / fields["n_heads"]) ** -0.5}
    return {}


FAMILY = Family(
    name="gemma2",
    architectures=("gemma2",),
    gguf_names=replace(GGUF_NAMES, q_norm=None, k_norm=None),
    hf_model_types=("gemma2",),
    hf_names=hf_names(
        post_attn_norm="model.layers.{i}.post_attention_layernorm.weight",
        ffn_norm="model.layers.{i}.pre_feedforward_layernorm.weight",
        post_ffn_norm="model.layers.{i}.post_feedforward_layernorm.weight",
    ),
    defaults={
        "activation": "gelu_tanh",
        "embedding_scale_by_sqrt_hidden": True,
        "post_norms": True,
        "sliding_window_every": 2,
        "query_scale_from_key_length": True,
        "hf_norm_weight_offset": 1.0,
    },
    hf_config=hf_config,
    gguf_config=gguf_config,
    float16_ok=False,
)
