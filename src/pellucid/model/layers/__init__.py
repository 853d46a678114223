"""The building blocks of a decoder-only transformer: projections, RMSNorm, RoPE, attention, gated MLP, block.

Each layer is handed its weights when it is built (see `loader.py`) and knows nothing about file formats or
tensor names. Shapes are written where they change; B = batch, T = new tokens, S = keys attended to
(cached + new), H = query heads, Hkv = key/value heads, D = head_dim.

Everything here is torch.compile-friendly: the Python branches in `forward` depend only on shapes and on
how the module was built, never on tensor values.

One idea per module: `linear` (dense projections, embedding), `norms`, `rope` (pairings and scalings),
`attention`, `mlp` (gated feed-forwards), `moe` (router, experts, shared experts) and `block` (how a family's switches wire them together).
"""

from pellucid.model.layers.attention import Attention, attention_mask
from pellucid.model.layers.block import Block
from pellucid.model.layers.linear import Embedding, Linear, frozen, project
from pellucid.model.layers.mlp import ACTIVATIONS, GatedMLP
from pellucid.model.layers.moe import Experts, MoE, route
from pellucid.model.layers.norms import RMSNorm
from pellucid.model.layers.rope import RotaryEmbedding

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "Block",
    "Embedding",
    "Experts",
    "GatedMLP",
    "Linear",
    "MoE",
    "RMSNorm",
    "RotaryEmbedding",
    "attention_mask",
    "frozen",
    "project",
    "route",
]
