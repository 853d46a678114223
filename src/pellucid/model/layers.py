"""The building blocks of a decoder-only transformer: projections, RMSNorm, RoPE, attention, gated MLP, block.

Each layer is handed its weights when it is built (see `loader.py`) and knows nothing about file formats or
tensor names. Shapes are written where they change; B = batch, T = new tokens, S = keys attended to
(cached + new), H = query heads, Hkv = key/value heads, D = head_dim.

Everything here is torch.compile-friendly: the Python branches in `forward` depend only on shapes and on
how the module was built, never on tensor values.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.quant import kernels
from pellucid.quant.linear import QuantizedLinear


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    """An inference-only parameter; an existing Parameter is reused, so tied weights stay one object."""
    if isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=False)


class Linear(nn.Module):
    """y = x @ W.T with a dense weight (out_features, in_features).

    Every projection in the model is built by `loader.make_linear`, which uses this dense layer for float32
    matrices and `quant.linear.QuantizedLinear` (same `forward(x)`) for the packed ones.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = frozen(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def project(x: torch.Tensor, *projections: nn.Module) -> list[torch.Tensor]:
    """[p(x) for p in projections]; packed ones that read the same x run as one product in decode (q/k/v,
    gate/up: `kernels.matmul_many` quantizes x once for all of them)."""
    if all(isinstance(p, QuantizedLinear) for p in projections):
        return kernels.matmul_many(x, [p.packed for p in projections])
    return [p(x) for p in projections]


class Embedding(nn.Module):
    """Token ids -> rows of a dense (vocab, hidden) table. A quantized table is `quant.linear.QuantizedEmbedding`."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = frozen(weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32 whatever the model dtype (as llama.cpp and HF do).

    The weight is used as stored: Gemma's "(1 + w)" is already folded into its GGUF norm weights by the
    converter, so no family needs an offset here.
    """

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = frozen(weight if weight.dtype == torch.float32 else weight.float())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight).to(x.dtype)


# -- rotary position embedding ----------------------------------------------------------------------------


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


# -- attention --------------------------------------------------------------------------------------------


def attention_mask(q_len: int, k_len: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each query may see (True = attend), or None when it sees all of them.

    Keys are assumed to end at the newest query's position: query i sits at position k_len - q_len + i
    relative to the first key. A query sees keys at or before itself and, on sliding-window layers, less
    than `window` positions back (llama.cpp's LLAMA_SWA_TYPE_STANDARD, HF's sliding_window: q - k < window).
    A single query over keys that all fit in the window needs no mask (the decode step).
    """
    if q_len == 1 and (window is None or k_len <= window):
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    distance = q_pos - torch.arange(k_len, device=device)[None, :]  # (T, S)
    visible = distance >= 0
    if window is not None:
        visible = visible & (distance < window)
    return visible


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, RoPE, optional per-head QK-norm and a sliding window."""

    def __init__(
        self,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        o_proj: nn.Module,
        *,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        value_head_dim: int,
        query_scale: float | None = None,
        window: int | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
    ):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim, self.value_head_dim = head_dim, value_head_dim
        self.scale = query_scale if query_scale is not None else 1.0 / math.sqrt(head_dim)
        self.window = window

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        B, T, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.value_head_dim)
        if self.q_norm is not None:  # Gemma 3 / Qwen 3: RMSNorm over each head's dims, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if isinstance(cache, list):  # Transformer.decode_batch: one layer cache per sequence, each at its offset
            out = torch.cat(
                [self._attend(q[b : b + 1], *c.store_one(k[b : b + 1], v[b : b + 1])) for b, c in enumerate(cache)]
            )
        else:
            if cache is not None:
                k, v = cache.store(k, v)  # (B, Hkv, S, D): cached keys followed by the new ones
            out = self._attend(q, k, v)  # (B, H, T, Dv)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.value_head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible=None) -> torch.Tensor:
        """Attention of q over k/v; `visible` (T, S), when given, replaces the causal/window mask."""
        # enable_gqa (torch >= 2.5): each KV head serves its group of n_heads / n_kv_heads query heads
        # without copying K and V out to n_heads (measured as fast or faster than repeat_interleave on CPU).
        T, S = q.shape[2], k.shape[2]
        gqa = self.n_kv_heads != self.n_heads
        if T == 1 and torch.compiler.is_compiling():
            return self._attend_one(q, k, v, visible)
        if visible is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.scale, enable_gqa=gqa)
        if T == S and (self.window is None or self.window >= S):
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale, enable_gqa=gqa)
        mask = attention_mask(T, S, self.window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible=None) -> torch.Tensor:
        """One query per sequence (a decode step) as plain arithmetic, for compiled graphs.

        Inductor turns these few lines into two small fused loops inside the block's graph; the SDPA kernel
        costs ~15 us per call on this CPU whatever the size (thread start-up), which a batched decode step of 8
        sequences pays 240 times (30 layers x 8). A window mask is not needed here: a decode step's keys all
        lie inside the window (see `attention_mask`); `visible` hides a sliding-window ring's empty slots.
        """
        B, S = q.shape[0], k.shape[2]
        group = self.n_heads // self.n_kv_heads
        qg = q.float().view(B, self.n_kv_heads, group, 1, self.head_dim)
        scores = (qg * k.float().unsqueeze(2)).sum(-1) * self.scale  # (B, Hkv, group, S)
        if visible is not None:
            scores = scores.masked_fill(~visible.view(1, 1, 1, S), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2)  # (B, Hkv, group, Dv)
        return out.view(B, self.n_heads, 1, self.value_head_dim).to(q.dtype)


# -- feed-forward -----------------------------------------------------------------------------------------

ACTIVATIONS = {
    "silu": F.silu,  # SwiGLU (llama)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GeGLU (Gemma; ggml_gelu is the tanh approximation)
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the gated feed-forward of llama (SiLU) and Gemma (GELU)."""

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module, activation: str):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(self.act(gate) * up)


# -- one transformer layer --------------------------------------------------------------------------------


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
