"""Qwen 3 MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen 3's attention (per-head QK-norm, explicit head_dim) with a
mixture-of-experts FFN in every layer: softmax router, top-k (8 of 128), no shared expert.

llama.cpp always normalises the chosen experts' weights to sum to 1 for this architecture (the converter
writes no `expert_weights_norm` key), as the released models' `norm_topk_prob: true` says; from a Hugging Face
folder `norm_topk_prob` is read, so a folder that sets it false runs as transformers runs it (and llama.cpp's
conversion of it would not). Qwen's `mlp_only_layers` / `decoder_sparse_step` (dense layers among the MoE
ones) are read from config.json; llama.cpp ignores them (every layer MoE), and the released models use none.
"""

from pellucid.model.families import Family, TensorNames, hf_names

FAMILY = Family(
    name="qwen3moe",
    architectures=("qwen3moe",),
    gguf_names=TensorNames(q_norm="blk.{i}.attn_q_norm.weight", k_norm="blk.{i}.attn_k_norm.weight"),
    hf_model_types=("qwen3_moe",),
    hf_names=hf_names(
        q_norm="model.layers.{i}.self_attn.q_norm.weight", k_norm="model.layers.{i}.self_attn.k_norm.weight"
    ),
    defaults={"qk_norm": "head", "expert_weights_norm": True},
)
