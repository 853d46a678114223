"""Qwen 3 (dense): Qwen 2 without the q/k/v biases, plus a per-head RMSNorm on queries and keys before RoPE.

Heads are `head_dim` wide (128) whatever hidden / heads is, so config.json states `head_dim` and GGUF
`attention.key_length`. NeoX RoPE pairing in both formats.
"""

from pellucid.model.families import Family, TensorNames, hf_names

FAMILY = Family(
    name="qwen3",
    architectures=("qwen3",),
    gguf_names=TensorNames(q_norm="blk.{i}.attn_q_norm.weight", k_norm="blk.{i}.attn_k_norm.weight"),
    hf_model_types=("qwen3",),
    hf_names=hf_names(
        q_norm="model.layers.{i}.self_attn.q_norm.weight", k_norm="model.layers.{i}.self_attn.k_norm.weight"
    ),
    defaults={"qk_norm": "head"},
)
