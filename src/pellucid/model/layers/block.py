"""One transformer layer: how a family's switches wire norms, attention and the feed-forward together."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.model.layers.attention import Attention
from pellucid.model.layers.moe import MoE
from pellucid.model.layers.rope import RotaryEmbedding


class Block(nn.Module):
    """Residual block: x + branch(x) for attention, then for the feed-forward, where each branch is

        [pre-norm] -> attention / mlp -> [post-norm] -> [x residual_multiplier]

    Most families normalise before the branch only (llama); Gemma 2/3 on both sides; OLMo 2 after it only.
    Absent norms are None. Granite scales each branch's output by `residual_multiplier` before the add.
    """

    def __init__(
        self,
        attn_norm: nn.Module | None,
        attn: Attention,
        ffn_norm: nn.Module | None,
        mlp: nn.Module,
        *,
        sliding: bool = False,
        post_attn_norm: nn.Module | None = None,
        post_ffn_norm: nn.Module | None = None,
        residual_multiplier: float | None = None,
    ):
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm, self.mlp = attn_norm, attn, ffn_norm, mlp
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm
        self.residual_multiplier = residual_multiplier
        self.sliding = sliding  # a local (sliding-window) layer: it uses the local RoPE base
        self.routed = isinstance(mlp, MoE)  # a mixture-of-experts layer (its products depend on the routing)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        h = self.attn(self.attn_norm(x) if self.attn_norm is not None else x, rope, cos, sin, cache)
        x = x + self._branch_out(h, self.post_attn_norm)
        h = self.mlp(self.ffn_norm(x) if self.ffn_norm is not None else x)
        return x + self._branch_out(h, self.post_ffn_norm)

    def _branch_out(self, h: torch.Tensor, post_norm: nn.Module | None) -> torch.Tensor:
        if post_norm is not None:
            h = post_norm(h)
        if self.residual_multiplier is not None:
            h = h * self.residual_multiplier
        return h
