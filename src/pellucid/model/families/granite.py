"""Granite 3.x (dense): llama with four multipliers.

- embeddings times `embedding_multiplier` (12 in the 2B/8B models) before the first layer;
- each branch's output times `residual_multiplier` (0.22) before it is added to the residual stream;
- attention scores times `attention_multiplier` (1/64 or 1/128) instead of 1/sqrt(head_dim);
- logits divided by `logits_scaling` (8 or 16).
GGUF: `granite.embedding_scale`, `granite.residual_scale`, `granite.attention.scale`, `granite.logit_scale`
(read by config.py for every family). Tensor names and the GGUF RoPE permutation are llama's.
"""

from typing import Any

from pellucid.model.families import Family, TensorNames


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "embedding_multiplier": text.get("embedding_multiplier"),
        "residual_multiplier": text.get("residual_multiplier"),
        "query_scale": text.get("attention_multiplier"),
        "logits_divisor": text.get("logits_scaling"),
    }


FAMILY = Family(
    name="granite",
    architectures=("granite",),
    gguf_names=TensorNames(),
    hf_model_types=("granite",),
    gguf_defaults={"rope_style": "interleaved"},
    hf_config=hf_config,
)
