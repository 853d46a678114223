"""Rotary position embedding (RoPE): the pairings and the per-frequency scalings families use."""

from __future__ import annotations

import math

import torch
from torch import nn

from pellucid.quant import kernels, native


class RotaryEmbedding(nn.Module):
    """RoPE: rotate pairs of query/key dims by angle position * theta^(-2i/rope_dim).

    Two pairings exist. "neox" (HF's rotate_half) pairs dim i with dim i + rope_dim/2; "interleaved"
    (llama.cpp's GGML_ROPE_TYPE_NORM, the original Meta code) pairs dims 2i and 2i+1. llama.cpp's converter
    permutes the rows of llama's attn_q/attn_k so that the interleaved form applies to GGUF weights. We keep
    those weights as stored and rotate interleaved pairs, rather than un-permuting rows at load: the weights
    stay byte-for-byte the file's blocks (packed-quantized layers can use them as they are), and the
    arithmetic is the one llama.cpp does. Only the first `rope_dim` dims of a head rotate (partial rotary).

    `freq_factors` divide each pair's frequency, as ggml_rope_ext does: llama 3's long-context scaling (GGUF
    `rope_freqs.weight`, or `llama3_freq_factors` from config.json), or LongRoPE's (Phi-3) short factors. A
    LongRoPE model also has `long_freq_factors`, used instead when the model runs with a context longer than
    `original_context` (`use_context`), and an `attention_factor` that multiplies cos and sin.
    """

    def __init__(
        self,
        rope_dim: int,
        theta: float,
        style: str,
        *,
        linear_scale: float = 1.0,
        freq_factors: torch.Tensor | None = None,
        long_freq_factors: torch.Tensor | None = None,
        original_context: int | None = None,
        attention_factor: float = 1.0,
    ):
        super().__init__()
        if style not in ("neox", "interleaved"):
            raise ValueError(f"unknown RoPE style {style!r}; expected 'neox' or 'interleaved'")
        base = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim)) / linear_scale
        self._base_inv_freq = base
        self._short = freq_factors.float() if freq_factors is not None else None
        self._long = long_freq_factors.float() if long_freq_factors is not None else None
        self.original_context = original_context
        self.register_buffer("inv_freq", self._with_factors(self._short), persistent=False)  # (rope_dim/2,)
        self.attention_factor = attention_factor
        self.rope_dim = rope_dim
        self.interleaved = style == "interleaved"

    def _with_factors(self, factors: torch.Tensor | None) -> torch.Tensor:
        return self._base_inv_freq if factors is None else self._base_inv_freq / factors.to(self._base_inv_freq.device)

    def use_context(self, n_ctx: int) -> None:
        """Pick LongRoPE's factors for a model run with an `n_ctx`-token context (llama.cpp's rule: long
        factors when n_ctx exceeds the original context). A no-op for every other RoPE."""
        if self._long is None:
            return
        factors = self._long if n_ctx > self.original_context else self._short
        self.inv_freq = self._with_factors(factors).to(self.inv_freq.device)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every (position, pair) angle, shaped (T, 1, rope_dim/2) to broadcast over heads."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos, sin

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, T, heads, D) in float32; dims past rope_dim pass through unchanged.

        cos/sin are `tables(positions)`: (T, 1, rope_dim/2) for T positions shared by the batch, or
        (B, 1, 1, rope_dim/2) for one position per sequence (the batched decode step).
        """
        if kernels.fused(x):
            B, T = x.shape[:2]
            # The op's (B, T, half) views of this step's tables, made once per step (every layer and both q
            # and k get the same cos/sin objects), not four view ops per call.
            memo = self.__dict__.get("_native_tables")
            if memo is None or memo[0] is not cos or memo[1] != (B, T):
                half = self.rope_dim // 2
                if cos.dim() == 3:  # (T, 1, half): the same positions for every sequence
                    c, s = (t.view(1, T, half).expand(B, T, half) for t in (cos, sin))
                else:
                    c, s = (t.reshape(B, T, half) for t in (cos, sin))
                memo = self.__dict__["_native_tables"] = (cos, (B, T), c, s)
            return native.rope(x, memo[2], memo[3], self.rope_dim, self.interleaved)
        rot, rest = x[..., : self.rope_dim].float(), x[..., self.rope_dim :]
        if self.interleaved:
            pairs = rot.unflatten(-1, (-1, 2))  # (..., rope_dim/2, 2)
            x1, x2 = pairs[..., 0], pairs[..., 1]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((rot.to(x.dtype), rest), dim=-1) if rest.shape[-1] else rot.to(x.dtype)


def llama3_freq_factors(
    rope_dim: int, theta: float, factor: float, low_freq_factor: float, high_freq_factor: float, original_context: int
) -> torch.Tensor:
    """Llama 3.1's per-frequency divisors (what llama.cpp's converter writes as `rope_freqs.weight`).

    Wavelengths shorter than original_context / high_freq_factor keep their frequency (divisor 1), those
    longer than original_context / low_freq_factor are divided by `factor`, and the ones between move
    smoothly from one to the other.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim))
    wavelength = 2 * math.pi / inv_freq
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    ramp = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = torch.where(wavelength > original_context / low_freq_factor, torch.full_like(ramp, factor), ramp)
    divisors = torch.where(wavelength < original_context / high_freq_factor, torch.ones_like(ramp), divisors)
    return divisors.float()


def yarn_freq_factors(
    rope_dim: int,
    theta: float,
    factor: float,
    original_context: int,
    beta_fast: float,
    beta_slow: float,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN's per-frequency divisors (DeepSeek V2/V3), as ggml_rope_ext and transformers compute them.

    Pairs that turn more than `beta_fast` times over the original context keep their frequency, those turning
    fewer than `beta_slow` times are divided by `factor`, and a linear ramp over the pair index joins them (ends
    rounded outwards to whole pairs, unless `truncate` is False: GPT-OSS's config.json; llama.cpp always rounds). Its attention correction (mscale) is not here: cos/sin take
    `ModelConfig.rope_attention_factor`, and latent attention folds mscale_all_dim into its query scale.
    """

    def pair_turning(turns: float) -> float:  # the pair index whose wavelength fits `turns` times in the context
        return rope_dim * math.log(original_context / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_turning(beta_fast), pair_turning(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(0.0, low), min(rope_dim - 1.0, high)
    pairs = torch.arange(rope_dim // 2, dtype=torch.float64)
    keep = 1.0 - ((pairs - low) / max(0.001, high - low)).clamp(0.0, 1.0)  # 1: extrapolate (keep), 0: interpolate
    return (1.0 / ((1.0 - keep) / factor + keep)).float()
