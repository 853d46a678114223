"""One transformer layer: how a family's switches wire norms, attention and the feed-forward together."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.model.layers.attention import Attention
from pellucid.model.layers.rope import RotaryEmbedding


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)).

    Gemma 2/3 also normalise each branch's output before adding it back (`post_attn_norm`,
    `post_ffn_norm`); those are None elsewhere.
    """

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: Attention,
        ffn_norm: nn.Module,
        mlp: nn.Module,
        *,
        sliding: bool = False,
        post_attn_norm: nn.Module | None = None,
        post_ffn_norm: nn.Module | None = None,
    ):
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm, self.mlp = attn_norm, attn, ffn_norm, mlp
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm
        self.sliding = sliding  # a local (sliding-window) layer: it uses the local RoPE base

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        h = self.attn(self.attn_norm(x), rope, cos, sin, cache)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.ffn_norm(x))
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm(h)
        return x + h
