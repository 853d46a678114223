"""Multi-head latent attention (MLA: DeepSeek V2/V3/R1, Kimi K2): a KV cache of one small latent per token.

Each token's keys and values, for every head, are decompressed from one latent vector c (kv_lora_rank values,
normed) that all heads share: k_nope[h] = K_b[h] c, v[h] = V_b[h] c (K_b[h]: nope_dim x rank, V_b[h]: v_dim x
rank: HF's kv_b_proj, or llama.cpp's attn_k_b / attn_v_b). Positions enter through a separate, decoupled
rope_dim-wide key k_pe, also shared by all heads; each query is q_nope[h] (no RoPE) followed by q_pe[h] (RoPE):

    score[h, s] = scale * (q_nope[h] . K_b[h] c_s + q_pe[h] . k_pe_s)
                = scale * ((K_b[h]^T q_nope[h]) . c_s + q_pe[h] . k_pe_s)

So the cache holds only [c, k_pe] per token (kv_lora_rank + rope_dim values per layer, not 2 x heads x head_dim),
stored as a one-head KV cache whose keys are [c, k_pe] and whose values are empty: the values are the c part of
the keys, as in llama.cpp. Two ways to attend over it, equal up to float rounding:

- **absorbed** (decode): K_b is folded into the query (q_abs[h] = K_b[h]^T q_nope[h], rank wide), the query
  [q_abs, q_pe] attends directly over the cached [c, k_pe] (one shared key head: multi-query attention), and V_b
  turns each head's weighted sum of latents into its value output. Costs per (query, cached token) pair
  heads x (2 rank + rope_dim): nothing is decompressed, which is what makes a decode step cheap.
- **decompressed** (prefill): k_nope and v of every cached token are computed once (S x heads x rank x
  (nope_dim + v_dim)), then ordinary attention costs heads x (nope_dim + rope_dim + v_dim) per pair. With
  DeepSeek-V3's dims (rank 512, 128 + 64, v 128) that is 320 instead of 1,088 per pair, so a prompt attending
  to itself is ~3x cheaper decompressed, while one decode token would have to decompress the whole cache.

`_decompress_is_cheaper` picks by counting those multiply-adds for T new queries over S keys: a fresh prompt
(S = T) always decompresses, a decode step (T = 1) always absorbs, a chunk continuing a long cache absorbs
unless it is long itself.

RoPE pairing: DeepSeek rotates adjacent pairs (HF's rope_interleave, llama.cpp's NORM rope on the unpermuted
weights), which the family sets as `rope_style` "interleaved".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.model.layers.attention import attention_mask
from pellucid.model.layers.rope import RotaryEmbedding


class LatentAttention(nn.Module):
    """MLA over a latent KV cache. Projections are modules (packed or dense); `k_b` (H, nope_dim, rank) and
    `v_b` (H, v_dim, rank) are dense tensors (the per-head decompression matrices).

    Queries: `q_proj` (hidden -> H * head_dim), or `q_a` -> `q_a_norm` -> `q_b` where the model has a low-rank
    query (q_lora_rank). `kv_a` maps hidden -> kv_lora_rank + rope_dim ([latent, k_pe]), `kv_a_norm` norms the
    latent. `query_scale` multiplies q.k (1/sqrt(head_dim) times YaRN's mscale_all_dim correction squared).
    """

    def __init__(
        self,
        q_proj: nn.Module | None,
        q_a: nn.Module | None,
        q_a_norm: nn.Module | None,
        q_b: nn.Module | None,
        kv_a: nn.Module,
        kv_a_norm: nn.Module,
        k_b: torch.Tensor,
        v_b: torch.Tensor,
        o_proj: nn.Module,
        *,
        rope_dim: int,
        query_scale: float | None = None,
    ):
        super().__init__()
        self.q_proj, self.q_a, self.q_a_norm, self.q_b = q_proj, q_a, q_a_norm, q_b
        self.kv_a, self.kv_a_norm, self.o_proj = kv_a, kv_a_norm, o_proj
        self.k_b = nn.Parameter(k_b, requires_grad=False)  # (H, nope_dim, rank)
        self.v_b = nn.Parameter(v_b, requires_grad=False)  # (H, v_dim, rank)
        self.n_heads, self.nope_dim, self.rank = k_b.shape
        self.value_head_dim = v_b.shape[1]
        self.rope_dim = rope_dim
        self.head_dim = self.nope_dim + rope_dim
        self.scale = query_scale if query_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        B, T, _ = x.shape
        H, rank = self.n_heads, self.rank
        q = self.q_proj(x) if self.q_proj is not None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = q.view(B, T, H, self.head_dim)
        q_nope, q_pe = q[..., : self.nope_dim], q[..., self.nope_dim :].contiguous()
        kv = self.kv_a(x)  # (B, T, rank + rope_dim)
        latent = self.kv_a_norm(kv[..., :rank])
        k_pe = kv[..., rank:].reshape(B, T, 1, self.rope_dim)
        q_pe, k_pe = rope.apply(q_pe, cos, sin), rope.apply(k_pe, cos, sin)
        new = torch.cat((latent.to(k_pe.dtype), k_pe.view(B, T, self.rope_dim)), dim=-1).unsqueeze(1)  # (B, 1, T, L)
        if isinstance(cache, list):  # Transformer.decode_batch: one layer cache per sequence, each at its offset
            out = torch.cat(
                [
                    self._attend(
                        q_nope[b : b + 1], q_pe[b : b + 1], c.store_one(new[b : b + 1], new[b : b + 1, ..., :0])[0]
                    )
                    for b, c in enumerate(cache)
                ]
            )
        else:
            keys = cache.store(new, new[..., :0])[0] if cache is not None else new  # (B, 1, S, rank + rope_dim)
            out = self._attend(q_nope, q_pe, keys)
        return self.o_proj(out.reshape(B, T, H * self.value_head_dim))

    def _attend(self, q_nope: torch.Tensor, q_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """q_nope (B, T, H, nope_dim), q_pe (B, T, H, rope_dim) over the cached [latent, k_pe] keys (B, 1, S, L):
        the heads' value outputs (B, T, H, v_dim), by whichever order of the sums costs less."""
        T, S = q_nope.shape[1], keys.shape[2]
        # A decode step (T = 1) sees every cached key; tested first so that a compiled step, where S is symbolic,
        # makes no decision on S.
        causal = T > 1 and T == S
        mask = None if T == 1 or causal else attention_mask(T, S, None, keys.device)
        if T > 1 and self._decompress_is_cheaper(T, S):
            return self._attend_decompressed(q_nope, q_pe, keys, mask, causal)
        return self._attend_absorbed(q_nope, q_pe, keys, mask, causal)

    def _attend_absorbed(self, q_nope, q_pe, keys, mask, causal: bool) -> torch.Tensor:
        B, T, H, _ = q_nope.shape
        S = keys.shape[2]
        latent = keys[..., : self.rank]  # (B, 1, S, rank)
        q_abs = torch.einsum("bthn,hnr->bhtr", q_nope, self.k_b.to(keys.dtype))  # K_b folded in: (B, H, T, rank)
        q = torch.cat((q_abs, q_pe.transpose(1, 2).to(q_abs.dtype)), dim=-1)  # (B, H, T, rank + rope_dim)
        # One key "head" serves all H query heads (multi-query attention): the heads' queries are rows of one
        # matrix product with the cached keys, never a copy of the cache per head (SDPA's enable_gqa and
        # broadcasting matmuls copy it: 10x slower at 4,096 tokens).
        scores = (q.reshape(B, 1, H * T, -1) @ keys.transpose(-1, -2)).view(B, H, T, S) * self.scale
        if causal:
            mask = attention_mask(T, S, None, keys.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(keys.dtype)
        out = (weights.view(B, 1, H * T, S) @ latent).view(B, H, T, self.rank)  # values: the keys' latent part
        return torch.einsum("bhtr,hvr->bthv", out, self.v_b.to(keys.dtype))

    def _attend_decompressed(self, q_nope, q_pe, keys, mask, causal: bool) -> torch.Tensor:
        latent, k_pe = keys[..., : self.rank], keys[..., self.rank :]  # (B, 1, S, rank), (B, 1, S, rope_dim)
        k_nope = torch.einsum("bzsr,hnr->bhsn", latent, self.k_b.to(keys.dtype))  # (B, H, S, nope_dim)
        v = torch.einsum("bzsr,hvr->bhsv", latent, self.v_b.to(keys.dtype))  # (B, H, S, v_dim)
        k = torch.cat((k_nope, k_pe.expand(-1, self.n_heads, -1, -1)), dim=-1)
        q = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)  # (B, H, T, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale)
        return out.transpose(1, 2)

    def _decompress_is_cheaper(self, T: int, S: int) -> bool:
        """Multiply-adds of T queries over S keys: decompressing costs S x rank x (nope + v) per head up front
        plus (nope + rope + v) per pair; absorbing costs T x rank x (nope + v) (the query and output folds) plus
        (2 rank + rope) per pair."""
        fold = self.rank * (self.nope_dim + self.value_head_dim)
        decompressed = S * fold + T * S * (self.head_dim + self.value_head_dim)
        absorbed = T * fold + T * S * (2 * self.rank + self.rope_dim)
        return decompressed < absorbed
