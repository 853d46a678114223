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
from pellucid.model.compiled import decode_block_runner
from pellucid.model.config import ModelConfig
from pellucid.model.layers import Block, RotaryEmbedding


class Transformer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        embedding: nn.Module,  # token ids (B, T) -> (B, T, hidden) in the model's dtype
        blocks: list[Block],
        final_norm: nn.Module,
        output: nn.Module,  # hidden -> vocab logits (shares the embedding's weights when they are tied)
        rope: RotaryEmbedding,
        rope_local: RotaryEmbedding | None = None,  # for sliding-window layers, when their base differs
        *,
        dtype: torch.dtype = torch.float32,  # activations and KV cache; packed weights keep their own format
    ):
        super().__init__()
        self.config = config
        self.embedding = embedding
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.output = output
        self.rope = rope
        self.rope_local = rope_local if rope_local is not None else rope
        # Gemma multiplies embeddings by sqrt(hidden). llama.cpp applies it as an f32 scalar (sqrtf(n_embd));
        # HF first rounds it to the weight dtype (25.25 in bf16 instead of 25.298). We follow llama.cpp.
        self.embed_scale = math.sqrt(config.hidden_size) if config.embedding_scale_by_sqrt_hidden else None
        if config.embedding_multiplier is not None:  # Granite: a constant from the file instead
            self.embed_scale = config.embedding_multiplier
        self.dtype = dtype
        self.load_seconds: float | None = None  # set by load_model

    @property
    def device(self) -> torch.device:
        return self.final_norm.weight.device

    def forward(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits (B, T, vocab) in float32 for token ids (B, T)."""
        return self.logits(self.hidden(tokens, cache))

    def hidden(self, tokens: torch.Tensor, cache=None, observe=None) -> torch.Tensor:
        """Final-normed hidden states (B, T, hidden): call `logits` on just the positions you need.

        In a decode step (one token per sequence, with a cache) each block runs as a compiled graph
        (`pellucid.model.compiled`); otherwise blocks run eagerly, their matrix products as compiled kernels.
        `observe(i, x)`, if given, sees the residual stream (B, T, hidden) after the embedding (i = -1) and
        after each block i, and every block then runs eagerly (what `pellucid explain` times and lenses).
        """
        B, T = tokens.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"a batch of {B} sequences needs a cache made for {B}, not {cache.batch_size}")
        eager = observe is not None or cache is None or T != 1
        run_block = None if eager else decode_block_runner(tokens.device)
        offset = self._check_room(T, cache)
        x = self.embedding(tokens)  # (B, T, hidden)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        positions = torch.arange(offset, offset + T, device=tokens.device)
        cos, sin = self.rope.tables(positions)
        cos_local, sin_local = self.rope_local.tables(positions) if self.rope_local is not self.rope else (cos, sin)
        if observe is not None:  # after the RoPE tables, so explain's time for layer 0 is layer 0's alone
            observe(-1, x)
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            rope, c, s = (self.rope_local, cos_local, sin_local) if block.sliding else (self.rope, cos, sin)
            x = run_block(block, x, rope, c, s, layer_cache) if run_block else block(x, rope, c, s, layer_cache)
            if observe is not None:
                observe(i, x)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)

    def decode_batch(self, tokens: torch.Tensor, caches: list) -> torch.Tensor:
        """One decode step for B independent sequences: next-token logits (B, vocab) in float32.

        tokens (B,) holds each sequence's newest token; caches[b] (from `make_cache()`, batch size 1) holds
        sequence b's past and may sit at any offset, different from the others'. The token is placed at its
        own cache's offset (RoPE position), its key/value written there, and every cache advances by one.
        The projections run once for all B rows, so the packed weights are read once per step whatever B is
        (where continuous batching gets its throughput); attention runs per sequence over its own cache.
        Each block runs as a compiled graph for this B (`pellucid.model.compiled`; one graph per batch size,
        which the server's warm-up compiles for every B it will see).
        The result equals B separate `model(tokens[b].view(1, 1), caches[b])[0, -1]` calls to float32
        rounding (tests/test_model_batch.py). Raises ContextLengthError, before touching any cache, when a
        sequence's cache is full.
        """
        B = tokens.shape[0]
        if tokens.dim() != 1 or len(caches) != B:
            raise ValueError(f"decode_batch takes tokens (B,) and B caches, got {tuple(tokens.shape)}, {len(caches)}")
        for cache in caches:
            if cache.batch_size != 1:
                raise ValueError(f"decode_batch needs one cache per sequence (batch size 1), not {cache.batch_size}")
            self._check_room(1, cache)
        x = self.embedding(tokens.view(B, 1))  # (B, 1, hidden)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        positions = torch.tensor([cache.offset for cache in caches], device=tokens.device)
        tables = self.rope.tables(positions)  # each (B, 1, rope_dim/2): one position per row
        local = self.rope_local.tables(positions) if self.rope_local is not self.rope else tables
        cos, sin = (t.unsqueeze(1) for t in tables)  # (B, T=1, 1, rope_dim/2), broadcast over heads
        cos_local, sin_local = (t.unsqueeze(1) for t in local)
        run_block = decode_block_runner(tokens.device) or (lambda block, *args: block(*args))
        for i, block in enumerate(self.blocks):
            rope, c, s = (self.rope_local, cos_local, sin_local) if block.sliding else (self.rope, cos, sin)
            x = run_block(block, x, rope, c, s, [cache.layers[i] for cache in caches])
        for cache in caches:
            cache.advance(1)
        return self.logits(self.final_norm(x))[:, 0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits from final-normed hidden states, with Granite's divisor and Gemma 2's soft-cap."""
        logits = self.output(hidden).float()
        if self.config.logits_divisor is not None:
            logits = logits / self.config.logits_divisor
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    def use_context(self, n_ctx: int) -> None:
        """Tell the model the context it will run with. Only LongRoPE (Phi-3) depends on it: past the original
        context it switches to its long-context RoPE factors, for every position (as llama.cpp does)."""
        self.rope.use_context(n_ctx)
        self.rope_local.use_context(n_ctx)

    # The KV cache's storage types (quant/kv_blocks.py), set by `pellucid.load(kv_type=...)`; None = the default.
    kv_type_k: str | None = None
    kv_type_v: str | None = None

    @property
    def kv_types(self) -> tuple[str, str]:
        """(keys' type, values' type) of the caches `make_cache` makes."""
        from pellucid.quant.kv_blocks import check_kv_type

        return check_kv_type(self.kv_type_k), check_kv_type(self.kv_type_v)

    def make_cache(self, batch_size: int = 1, capacity: int | None = None, dtype: torch.dtype | None = None):
        """A KV cache for this model on its device, in its KV types (`kv_types`)."""
        from pellucid.engine.kv_cache import make_cache

        k, v = self.kv_types
        return make_cache(
            self.config, batch_size, capacity, device=self.device, dtype=dtype or self.dtype, kv_type_k=k, kv_type_v=v
        )

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
