"""OLMo 2: norms after each branch instead of before, and QK-norm over the whole projection.

- No RMSNorm before attention or the FFN: x + post_attention_norm(attention(x)), then
  x + post_ffw_norm(ffn(x)). HF calls them post_attention_layernorm and post_feedforward_layernorm.
- Queries and keys are normalised right after their projections, over all heads at once (a weight of
  n_heads x head_dim for q, n_kv_heads x head_dim for k), not per head as in Qwen 3 or Gemma.
- SwiGLU FFN, NeoX RoPE pairing in both formats, untied output head.
"""

from pellucid.model.families import Family, TensorNames, hf_names

FAMILY = Family(
    name="olmo2",
    architectures=("olmo2",),
    gguf_names=TensorNames(
        attn_norm=None,
        ffn_norm=None,
        q_norm="blk.{i}.attn_q_norm.weight",
        k_norm="blk.{i}.attn_k_norm.weight",
        post_attn_norm="blk.{i}.post_attention_norm.weight",
        post_ffn_norm="blk.{i}.post_ffw_norm.weight",
    ),
    hf_model_types=("olmo2",),
    hf_names=hf_names(
        attn_norm=None,
        ffn_norm=None,
        q_norm="model.layers.{i}.self_attn.q_norm.weight",
        k_norm="model.layers.{i}.self_attn.k_norm.weight",
        post_attn_norm="model.layers.{i}.post_attention_layernorm.weight",
        post_ffn_norm="model.layers.{i}.post_feedforward_layernorm.weight",
    ),
    defaults={"pre_norms": False, "post_norms": True, "qk_norm": "projection"},
)
