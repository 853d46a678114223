"""The generic decoder: token embedding -> N blocks -> final norm -> logits.

One class serves every supported family; what differs between families (norms around each branch, QK-norm,
the activation, sliding-window layers and their RoPE base, the embedding scale) was decided when the blocks
were built from a `ModelConfig` (see `loader.py`). A forward pass takes token ids (B, T) and, optionally, a
KV cache (`pellucid.engine.kv_cache`): without one it is a plain causal pass over the T tokens; with one, the
T tokens continue the cached sequence at position `cache.offset`, so a prompt is prefilled in one call and
generation then feeds one token at a time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pellucid.errors import ContextLengthError
from pellucid.model.config import ModelConfig
from pellucid.model.layers import Block, RotaryEmbedding, frozen


class Transformer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        embed_weight: torch.Tensor,  # (vocab, hidden)
        blocks: list[Block],
        final_norm: nn.Module,
        output: nn.Module,  # hidden -> vocab logits (shares embed_weight when embeddings are tied)
        rope: RotaryEmbedding,
        rope_local: RotaryEmbedding | None = None,  # for sliding-window layers, when their base differs
    ):
        super().__init__()
        self.config = config
        self.embed_weight = frozen(embed_weight)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.output = output
        self.rope = rope
        self.rope_local = rope_local if rope_local is not None else rope
        # Gemma multiplies embeddings by sqrt(hidden). llama.cpp applies it as an f32 scalar (sqrtf(n_embd));
        # HF first rounds it to the weight dtype (25.25 in bf16 instead of 25.298). We follow llama.cpp.
        self.embed_scale = math.sqrt(config.hidden_size) if config.embedding_scale_by_sqrt_hidden else None
        self.load_seconds: float | None = None  # set by load_model

    @property
    def device(self) -> torch.device:
        return self.embed_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_weight.dtype

    def forward(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits (B, T, vocab) in float32 for token ids (B, T)."""
        return self.logits(self.hidden(tokens, cache))

    def hidden(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """Final-normed hidden states (B, T, hidden): call `logits` on just the positions you need."""
        B, T = tokens.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"a batch of {B} sequences needs a cache made for {B}, not {cache.batch_size}")
        offset = self._check_room(T, cache)
        x = nn.functional.embedding(tokens, self.embed_weight)  # (B, T, hidden)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        positions = torch.arange(offset, offset + T, device=tokens.device)
        cos, sin = self.rope.tables(positions)
        cos_local, sin_local = self.rope_local.tables(positions) if self.rope_local is not self.rope else (cos, sin)
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            if block.sliding:
                x = block(x, self.rope_local, cos_local, sin_local, layer_cache)
            else:
                x = block(x, self.rope, cos, sin, layer_cache)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden).float()

    def make_cache(self, batch_size: int = 1, capacity: int | None = None, dtype: torch.dtype | None = None):
        """A KV cache for this model on its device (in its dtype unless `dtype` says otherwise)."""
        from pellucid.engine.kv_cache import make_cache

        return make_cache(self.config, batch_size, capacity, device=self.device, dtype=dtype or self.dtype)

    def _check_room(self, n_new: int, cache) -> int:
        """Where the new tokens start; a clear error (never a shape crash) when they do not fit."""
        limit = cache.capacity if cache is not None else self.config.context_length
        offset = cache.offset if cache is not None else 0
        if offset + n_new > limit:
            where = (
                f"the KV cache holds {limit:,} tokens ({offset:,} already used)"
                if cache is not None
                else f"the model's context window is {self.config.context_length:,} tokens"
            )
            raise ContextLengthError(
                f"{n_new:,} new tokens do not fit: {where}, so at most {limit - offset:,} more fit. Shorten "
                f"the prompt or allocate a larger cache (up to the model's {self.config.context_length:,})."
            )
        return offset
