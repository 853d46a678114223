"""Attention: grouped KV heads, RoPE, optional QK-norm, sliding windows, chunks, soft-caps, sinks; the masks it needs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.model.layers.linear import frozen, project
from pellucid.model.layers.rope import RotaryEmbedding
from pellucid.quant import kernels, kv_blocks, native

# Prefill over a KV cache stored in another type than the activations (f16, q8_0, ...): caches of up to WHOLE_CACHE
# positions are decoded whole for SDPA (a few MB at most); longer ones are read TILE positions at a time.
WHOLE_CACHE = 1024
TILE = 256

# The most attention scores the explicit path (soft-caps, sinks) holds at once: 2^25 floats, 128 MiB
EXPLICIT_SCORES = 1 << 25


def attention_mask(
    q_len: int, k_len: int, window: int | None, device: torch.device, chunk: int | None = None
) -> torch.Tensor | None:
    """Which keys each query may see (True = attend), or None when it sees all of them.

    Keys are assumed to end at the newest query's position: query i sits at position k_len - q_len + i
    relative to the first key. A query sees keys at or before itself and, on sliding-window layers, less
    than `window` positions back (llama.cpp's LLAMA_SWA_TYPE_STANDARD, HF's sliding_window: q - k < window).
    A single query over keys that all fit in the window needs no mask (the decode step).

    On chunked layers (Llama 4) a query sees only the keys of its own chunk of `chunk` positions, counted from
    position 0 (llama.cpp's LLAMA_SWA_TYPE_CHUNKED, HF's chunked_attention: q // chunk == k // chunk), so
    the first key must be position 0: such layers keep a full cache (see `Attention`).
    """
    if q_len == 1 and (window is None or k_len <= window) and (chunk is None or k_len <= chunk):
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    distance = q_pos - k_pos  # (T, S)
    visible = distance >= 0
    if window is not None:
        visible = visible & (distance < window)
    if chunk is not None:
        visible = visible & (q_pos // chunk == k_pos // chunk)
    return visible


def temperature_scales(positions: torch.Tensor, floor_scale: float, scale: float) -> torch.Tensor:
    """Llama 4's attention temperature for RoPE-free layers: queries at position p are multiplied by
    1 + scale * ln(1 + floor((p + 1) / floor_scale)), 1 below floor_scale - 1 and growing slowly beyond, so
    that attention over very long contexts does not flatten (arXiv 2501.19399; HF attn_temperature_tuning)."""
    return torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * scale + 1.0


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, RoPE, and the variants families use.

    - `q_norm`/`k_norm`: RMSNorm on queries and keys before RoPE, over each head (`qk_norm_over_heads`
      False: Qwen 3, Gemma 3) or over the whole projection (True: OLMo 2).
    - `window`: attend only to the last `window` positions (a sliding-window layer).
    - `softcap`: scores become softcap * tanh(scores / softcap) before the mask and softmax (Gemma 2).
    - `use_rope=False`: a layer that sees positions only through the causal mask (SmolLM3's every fourth).
    - `sinks` (n_heads,): a learned logit per head that joins the softmax's denominator as if a key scored it,
      but contributes no value: a head can give less than all of its attention to the keys (GPT-OSS). llama.cpp's
      soft_max with sinks and transformers' GPT-OSS eager attention both do exactly this.
    - `chunk`: attend only within the query's chunk of `chunk` positions (Llama 4's local layers). A chunk is a
      window that restarts at every multiple of `chunk`. Such a layer keeps a full KV cache and masks: a ring of
      `chunk` slots would hold every key a query sees, but the ring's decode step attends to all it holds, and
      its prefix-reuse tail follows window rules; the full cache needs one mask rule here and nothing new in the
      cache, at the memory of a global layer (what `fit` counts). Past 8,192 tokens the ring would save memory.
    - `temperature` (floor_scale, scale): queries scaled by `temperature_scales` of their position (Llama 4's
      RoPE-free layers).
    - `norm_after_rope_eps`: a weightless RMSNorm over each head of q and k after RoPE (Llama 4's "L2 norm").
    Chunks and temperatures depend on absolute positions; like the masks, they take the keys returned by the
    cache to end at the newest query, the first being position 0 (a full cache, never a sliding ring).
    Projections may carry biases (Qwen 2's q/k/v); that is the projection's business (`layers.linear`).
    """

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
        qk_norm_over_heads: bool = False,
        softcap: float | None = None,
        use_rope: bool = True,
        sinks: torch.Tensor | None = None,
        chunk: int | None = None,
        temperature: tuple[float, float] | None = None,
        norm_after_rope_eps: float | None = None,
    ):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm
        self.qk_norm_over_heads = qk_norm_over_heads
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim, self.value_head_dim = head_dim, value_head_dim
        self.scale = query_scale if query_scale is not None else 1.0 / math.sqrt(head_dim)
        self.window = window
        self.softcap = softcap
        self.use_rope = use_rope
        self.sinks = frozen(sinks.float()) if sinks is not None else None
        if (chunk or temperature) and window:
            raise ValueError("chunked attention and attention temperature need a full cache, not a sliding window")
        self.chunk = chunk
        self.temperature = temperature
        self.norm_after_rope_eps = norm_after_rope_eps

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        B, T, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        if self.q_norm is not None and self.qk_norm_over_heads:  # OLMo 2: over all heads at once
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.value_head_dim)
        if self.q_norm is not None and not self.qk_norm_over_heads:  # Gemma 3 / Qwen 3: over each head's dims
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
            if self.norm_after_rope_eps is not None:  # Llama 4: weightless, over each head, after RoPE
                q, k = _rms(q, self.norm_after_rope_eps), _rms(k, self.norm_after_rope_eps)
        rot_k, rot_v = cache_rotations(cache, self.head_dim, self.value_head_dim, q.device)
        if rot_k is not None:  # a quantized key cache stores rotated keys; q.k is unchanged by rotating both
            q, k = hadamard(q, rot_k), hadamard(k, rot_k)
        if rot_v is not None:
            v = hadamard(v, rot_v)
        native_step = self.chunk is None and self.temperature is None  # those need the positions, known after store
        if T == 1 and cache is not None and kernels.fused(q) and native_step:  # a decode step, one native op
            out = self._attend_one_native(q, k.transpose(1, 2), v.transpose(1, 2), cache)
            return self.o_proj(self._unrotate(out, rot_v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if isinstance(cache, list):  # Transformer.decode_batch: one layer cache per sequence, each at its offset
            out = torch.cat(
                [
                    self._attend_cached(q[b : b + 1], *c.store_one(k[b : b + 1], v[b : b + 1]), c.kv_types)
                    for b, c in enumerate(cache)
                ]
            )
        elif cache is not None:
            keys, values = cache.store(k, v)  # (B, Hkv, S, row): cached keys followed by the new ones, as stored
            out = self._attend_cached(q, keys, values, None, cache.kv_types)  # (B, H, T, Dv)
        else:
            out = self._attend(q, k, v)  # (B, H, T, Dv)
        return self.o_proj(self._unrotate(out.transpose(1, 2).reshape(B, T, self.n_heads * self.value_head_dim), rot_v))

    def _unrotate(self, out: torch.Tensor, rot_v: torch.Tensor | None) -> torch.Tensor:
        """out (..., H * Dv) back from the rotated values' basis (the Hadamard matrix is its own inverse)."""
        if rot_v is None:
            return out
        lead = out.shape[:-1]
        return hadamard(out.view(*lead, self.n_heads, self.value_head_dim), rot_v).reshape(*lead, -1)

    def _attend_one_native(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache) -> torch.Tensor:
        """A decode step's attention by the native ops: q (B, 1, H, D), k/v (B, Hkv, 1, D) the new token's;
        stores them and returns (B, 1, H * Dv). With a list of caches (`Transformer.decode_batch`) each
        sequence attends to its own, all in one `native.store_attend`. The ops read the cache in its KV type."""
        caches = cache if isinstance(cache, list) else [cache]
        kv_types = caches[0].kv_types
        if isinstance(cache, list) or q.shape[0] == 1:
            slots, lengths = zip(*(c.decode_slot() for c in caches))
            keys, values = [c.keys for c in caches], [c.values for c in caches]
            kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # back to (B, 1, Hkv, D) views
            return native.store_attend(
                q, kt, vt, keys, values, slots, lengths, self.scale, self.softcap, kv_types, self.sinks
            )
        keys, values = cache.store(k, v)  # one cache of batch size B
        return native.attend_one(q, keys, values, None, self.scale, self.softcap, kv_types, self.sinks)

    def _attend_cached(self, q: torch.Tensor, keys, values, visible, kv_types: tuple[str, str]) -> torch.Tensor:
        """Attention of q (B, H, T, D) over cache rows in their KV types (quant/kv_blocks.py).

        Rows already in q's dtype are attended as they are. Otherwise a short cache (at most WHOLE_CACHE
        positions: a prompt of its own) is decoded whole, and a longer one (a chunk continuing a long cached prefix)
        a tile of TILE positions at a time with an online softmax, so no step makes a float copy of the whole cache.
        """
        floats = kv_types[0] in kv_blocks.FLOAT_TYPES and kv_types[1] in kv_blocks.FLOAT_TYPES
        if floats and keys.dtype == q.dtype and values.dtype == q.dtype:
            return self._attend(q, keys, values, visible)
        S = keys.shape[2]
        if S <= WHOLE_CACHE or torch.compiler.is_compiling():  # compiled: inductor fuses the decoding into its loops
            k = kv_blocks.decode(keys, kv_types[0], q.dtype)
            v = kv_blocks.decode(values, kv_types[1], q.dtype)
            return self._attend(q, k, v, visible)
        q, visible = self._positional(q, S, visible)
        mask = visible if visible is not None else attention_mask(q.shape[2], S, self.window, q.device)
        return self._attend_tiled(q, keys, values, mask, kv_types)

    def _attend_tiled(self, q: torch.Tensor, keys, values, mask, kv_types: tuple[str, str]) -> torch.Tensor:
        """Attention over TILE cache positions at a time, each tile decoded to float32 into a small buffer and merged
        by the online softmax (running max m, sum l and weighted values acc, rescaled as the max grows)."""
        B, H, T, D = q.shape
        S, Hkv = keys.shape[2], self.n_kv_heads
        group = H // Hkv
        qg = q.float().reshape(B, Hkv, group * T, D)  # a KV head's queries, group-major
        m = torch.full((B, Hkv, group * T, 1), float("-inf"), device=q.device)
        total = torch.zeros(B, Hkv, group * T, 1, device=q.device)
        acc = torch.zeros(B, Hkv, group * T, self.value_head_dim, device=q.device)
        for s0 in range(0, S, TILE):
            s1 = min(S, s0 + TILE)
            k = kv_blocks.decode(keys[:, :, s0:s1], kv_types[0])  # (B, Hkv, n, D) float32
            scores = (qg @ k.transpose(-1, -2)) * self.scale  # (B, Hkv, group * T, n)
            if self.softcap is not None:
                scores = torch.tanh(scores / self.softcap) * self.softcap
            if mask is not None:
                hidden = ~mask[:, s0:s1]  # (T, n) or (1, n)
                scores = scores.view(B, Hkv, group, T, s1 - s0).masked_fill(hidden, float("-inf")).view_as(scores)
            m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
            base = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows that have seen no key yet
            p = torch.exp(scores - base)
            scale_old = torch.exp(m - base)
            total = total * scale_old + p.sum(-1, keepdim=True)
            acc = acc * scale_old + p @ kv_blocks.decode(values[:, :, s0:s1], kv_types[1])
            m = m_new
        if self.sinks is not None:  # each head's sink joins the denominator (relative to the same running max)
            base = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            sink = self.sinks.view(1, Hkv, group, 1, 1).expand(1, Hkv, group, T, 1).reshape(1, Hkv, group * T, 1)
            total = total + torch.exp(sink - base)
        out = acc / total  # (B, Hkv, group * T, Dv)
        return out.view(B, H, T, self.value_head_dim).to(q.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible=None) -> torch.Tensor:
        """Attention of q over k/v; `visible` (T, S), when given, replaces the causal/window mask."""
        # enable_gqa (torch >= 2.5): each KV head serves its group of n_heads / n_kv_heads query heads
        # without copying K and V out to n_heads (measured as fast or faster than repeat_interleave on CPU).
        T, S = q.shape[2], k.shape[2]
        gqa = self.n_kv_heads != self.n_heads
        q, visible = self._positional(q, S, visible)
        if T == 1 and torch.compiler.is_compiling():
            return self._attend_one(q, k, v, visible)
        if self.softcap is not None or self.sinks is not None:  # SDPA has neither: the same steps written out
            mask = visible if visible is not None else attention_mask(T, S, self.window, q.device)
            return self._attend_explicit(q, k, v, mask)
        if visible is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.scale, enable_gqa=gqa)
        if T == S and (self.window is None or self.window >= S):
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale, enable_gqa=gqa)
        mask = attention_mask(T, S, self.window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _positional(self, q: torch.Tensor, S: int, visible):
        """What depends on the queries' absolute positions (Llama 4): the temperature scaling q, the chunk mask
        (unless `visible` is given). The queries sit at positions S - T .. S - 1 (see the class docstring)."""
        T = q.shape[2]
        if self.temperature is not None:
            positions = torch.arange(S - T, S, device=q.device)
            q = (q.float() * temperature_scales(positions, *self.temperature).view(T, 1)).to(q.dtype)
        if self.chunk is not None and visible is None:
            visible = attention_mask(T, S, None, q.device, self.chunk)
        return q, visible

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
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if visible is not None:
            scores = scores.masked_fill(~visible.view(1, 1, 1, S), float("-inf"))
        weights = self._softmax(scores, self.n_kv_heads, group)
        out = (weights.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2)  # (B, Hkv, group, Dv)
        return out.view(B, self.n_heads, 1, self.value_head_dim).to(q.dtype)

    def _softmax(self, scores: torch.Tensor, n_kv_heads: int, group: int) -> torch.Tensor:
        """Softmax over the last dim of scores (B, Hkv, group, [T,] S), with each head's sink in the denominator."""
        if self.sinks is None:
            return torch.softmax(scores, dim=-1)
        sink = self.sinks.view(1, n_kv_heads, group, *([1] * (scores.dim() - 3))).expand(*scores.shape[:-1], 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]

    def _attend_explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible) -> torch.Tensor:
        """Attention as matmuls, softmax, soft-cap and sinks, in float32; `visible` (T, S) or None (see all).
        Long prompts go EXPLICIT_SCORES scores at a time (a 4,096-token prompt at GPT-OSS's 64 heads would
        otherwise hold 4 GiB of them)."""
        B, T, S = q.shape[0], q.shape[2], k.shape[2]
        step = max(1, EXPLICIT_SCORES // (B * self.n_heads * S))
        if step < T:
            return torch.cat(
                [
                    self._attend_explicit(
                        q[:, :, i : i + step], k, v, None if visible is None else visible[i : i + step]
                    )
                    for i in range(0, T, step)
                ],
                dim=2,
            )
        group = self.n_heads // self.n_kv_heads
        qg = q.float().reshape(B, self.n_kv_heads, group * T, self.head_dim)  # a KV head's queries, group-major
        scores = (qg @ k.float().transpose(-1, -2)) * self.scale  # (B, Hkv, group * T, S)
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.view(B, self.n_kv_heads, group, T, S)
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        weights = self._softmax(scores, self.n_kv_heads, group).view(B, self.n_kv_heads, group * T, S)
        out = weights @ v.float()  # (B, Hkv, group * T, Dv)
        return out.view(B, self.n_heads, T, self.value_head_dim).to(q.dtype)


def cache_rotations(cache, head_dim: int, value_head_dim: int, device) -> tuple:
    """The Walsh-Hadamard matrices keys and values are rotated by before a quantized cache stores them, as
    llama.cpp does (llama_kv_cache's attn_rot_k / attn_rot_v, its PR 21038): a rotation spreads an outlier
    dimension over the whole block, so q8_0 / q4_0's one scale per 32 values fits every value better (SmolLM2 with
    a q4_0 cache: perplexity +15% unrotated, +3% rotated, at ctx 512). Keys: the largest power-of-two block of at least 64
    dividing head_dim (q and k both rotated, so q.k is unchanged); values: blocks of 64 (the attention output is
    rotated back). None where the cache is not quantized or the head is not a multiple of 64."""
    kv_types = None
    if isinstance(cache, list) and cache:
        kv_types = cache[0].kv_types
    elif cache is not None:
        kv_types = getattr(cache, "kv_types", None)
    if kv_types is None:
        return None, None
    rot_k = rot_v = None
    if kv_types[0] in QUANTIZED_KV_TYPES and head_dim % 64 == 0:
        n = 64
        while head_dim % (2 * n) == 0:
            n *= 2
        rot_k = hadamard_matrix(n, device)
    if kv_types[1] in QUANTIZED_KV_TYPES and value_head_dim % 64 == 0:
        rot_v = hadamard_matrix(64, device)
    return rot_k, rot_v


QUANTIZED_KV_TYPES = ("q8_0", "q4_0")
_HADAMARD: dict = {}


def hadamard_matrix(n: int, device) -> torch.Tensor:
    """The orthonormal n x n Walsh-Hadamard matrix (Sylvester's construction, as ggml_gen_hadamard), symmetric and
    its own inverse; cached per size and device."""
    key = (n, str(device))
    if key not in _HADAMARD:
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _HADAMARD[key] = (h / math.sqrt(n)).to(device)
    return _HADAMARD[key]


def hadamard(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x (..., D) with each block of h's size along D multiplied by h (in float32)."""
    n = h.shape[0]
    return (x.float().reshape(*x.shape[:-1], x.shape[-1] // n, n) @ h).reshape(x.shape).to(x.dtype)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, in float32, with no weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
