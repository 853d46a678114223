"""Gemma 3 (text): llama's skeleton with four changes.

- Embeddings are multiplied by sqrt(hidden_size) before the first layer.
- Each branch is normalised on both sides: attn_norm -> attention -> post_attention_norm, and
  ffn_norm -> GeGLU (tanh-approximated GELU) -> post_ffw_norm, before the residual add.
- Queries and keys get a per-head RMSNorm (attn_q_norm / attn_k_norm) before RoPE (NeoX pairing), and
  queries are scaled by 1/sqrt(query_pre_attn_scalar), which the converter stores as `key_length`.
- Five of every six layers attend within a 512-token sliding window with RoPE base 10,000; every sixth is
  global with the file's base (1e6).

Gemma's RMSNorm multiplies by (1 + w). The GGUF converter has already added the 1 to every stored norm
weight (the fixtures confirm it), so the norms here use the weights as they are; an HF checkpoint would
need the 1 added at load.

Gemma's residual stream outgrows float16 (its logits become NaN), so it runs in float32 or bfloat16 only.
"""

from pellucid.model.families import Family, TensorNames

FAMILY = Family(
    name="gemma3",
    architectures=("gemma3",),
    gguf_names=TensorNames(
        q_norm="blk.{i}.attn_q_norm.weight",
        k_norm="blk.{i}.attn_k_norm.weight",
        post_attn_norm="blk.{i}.post_attention_norm.weight",
        post_ffn_norm="blk.{i}.post_ffw_norm.weight",
    ),
    float16_ok=False,
)
