"""Rotary position embedding (RoPE): the pairings and the per-frequency scalings families use."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """RoPE: rotate pairs of query/key dims by angle position * theta^(-2i/rope_dim).

    Two pairings exist. "neox" (HF's rotate_half) pairs dim i with dim i + rope_dim/2; "interleaved"
    (llama.cpp's GGML_ROPE_TYPE_NORM, the original Meta code) pairs dims 2i and 2i+1. llama.cpp's converter
    permutes the rows of llama's attn_q/attn_k so that the interleaved form applies to GGUF weights. We keep
    those weights as stored and rotate interleaved pairs, rather than un-permuting rows at load: the weights
    stay byte-for-byte the file's blocks (packed-quantized layers can use them as they are), and the
    arithmetic is the one llama.cpp does. Only the first `rope_dim` dims of a head rotate (partial rotary).

    `freq_factors` (llama 3's long-context scaling, stored in GGUF as `rope_freqs.weight`) divide each
    pair's frequency, as ggml_rope_ext does.
    """

    def __init__(
        self,
        rope_dim: int,
        theta: float,
        style: str,
        *,
        linear_scale: float = 1.0,
        freq_factors: torch.Tensor | None = None,
    ):
        super().__init__()
        if style not in ("neox", "interleaved"):
            raise ValueError(f"unknown RoPE style {style!r}; expected 'neox' or 'interleaved'")
        inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))
        inv_freq = inv_freq / linear_scale
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.float().to(inv_freq.device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (rope_dim/2,)
        self.rope_dim = rope_dim
        self.interleaved = style == "interleaved"

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every (position, pair) angle, shaped (T, 1, rope_dim/2) to broadcast over heads."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        return angles.cos()[:, None, :], angles.sin()[:, None, :]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, T, heads, D) in float32; dims past rope_dim pass through unchanged."""
        rot, rest = x[..., : self.rope_dim].float(), x[..., self.rope_dim :]
        if self.interleaved:
            pairs = rot.unflatten(-1, (-1, 2))  # (..., rope_dim/2, 2)
            x1, x2 = pairs[..., 0], pairs[..., 1]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((rot.to(x.dtype), rest), dim=-1) if rest.shape[-1] else rot.to(x.dtype)
