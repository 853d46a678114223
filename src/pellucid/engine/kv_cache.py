"""The KV cache: keys and values of tokens already seen, so each new token costs one position, not all.

Per layer, one object with a tiny interface (as in mlx-lm): `update_and_fetch(k, v)` appends the new
tokens' keys/values (B, Hkv, T, D) and returns every key/value the new queries attend to, `offset` counts
the tokens seen, `trim(n)` forgets the last n. The model's forward pass uses the two halves of
`update_and_fetch`: each layer `store`s, and `ModelCache.advance` counts the tokens once all layers have run
(so compiled code never changes a Python int). All memory is allocated up front (`make_cache`), so a decode
step writes into existing buffers and allocates nothing.

- `KVCache` (global-attention layers): a buffer of `capacity` positions, filled left to right; it returns
  the filled prefix, oldest first.
- `RotatingKVCache` (sliding-window layers): a ring of `window` positions, slot = position % window, so a
  Gemma 3 local layer holds 512 entries however long the context grows (what `ModelConfig.kv_cache_bytes`
  budgets). We chose the ring over "full buffer + window mask" for that memory bound. A decode step returns
  the whole ring: order does not matter to attention (positions are already rotated into the keys) and
  every entry lies inside the window, so no mask is needed. A multi-token step returns the previous
  window - 1 entries in order followed by the new ones, and the attention mask does the rest.

Prefix reuse on sliding-window layers. A chat's next request shares a long prefix with what the cache holds,
but a ring that has wrapped has overwritten the keys that prefix's last `window` positions need, so trimming
back to it was impossible and every turn past the window recomputed the whole conversation (llama-server has
the same flaw, its issue #14157). So each ring keeps a *prefill tail*: the last `window + REUSE_SLACK`
positions written by prompt processing (not by decode, which would cost a copy per token), itself a ring by
position. Trimming back to any position P whose last `window` keys lie in the tail or the live ring restores
them into the ring: a prompt sent again with a different last part (up to REUSE_SLACK tokens) and the next
turn of a chat (whose prefix ends inside the reply, as long as the reply was shorter than the window) both
reuse their prefix. The tail costs (window + REUSE_SLACK) positions per sliding layer, counted by `fit`.

Storage types (llama.cpp's -ctk/-ctv; quant/kv_blocks.py). Keys and values are each stored as f32, f16, bf16, q8_0
or q4_0, chosen apart (`make_cache(kv_type_k=, kv_type_v=)`; the engine's default is f16, f32 in exact mode). A
block type stores a row of head_dim values as head_dim / 32 blocks of bytes (uint8 tensors whose last dimension is
the row's bytes), so every operation above (rings, the prefill tail, trim, the batch dimension) moves whole rows
and is the same for every type. New keys/values are rounded to the type when written; `store` returns the stored
rows, which attention reads in their type (the native decode kernels in place, prefill a tile at a time).
Latent attention's cache (one latent per token) is kept in a float type and handed back converted.

Every sequence in a cache's batch dimension shares one offset. The server batches sequences at different
positions differently: one cache (batch size 1) per sequence, stepped together by `Transformer.decode_batch`
through `store_one`, which returns an attention mask instead of a wrap-dependent slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pellucid.errors import ContextLengthError, UnsupportedError
from pellucid.model.config import ModelConfig
from pellucid.quant import kv_blocks


class KVCache:
    """Keys and values of one global-attention layer: (B, Hkv, capacity, D), filled from position 0."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        capacity: int,
        head_dim: int,
        value_head_dim: int,
        *,
        device,
        dtype,
        kv_types: tuple[str, str] = ("f32", "f32"),
        fetch_dtype: torch.dtype | None = None,
    ):
        self.kv_types, self.fetch_dtype = kv_types, fetch_dtype
        self.keys = kv_blocks.empty(kv_types[0], (batch_size, n_kv_heads, capacity), head_dim, device)
        self.values = kv_blocks.empty(kv_types[1], (batch_size, n_kv_heads, capacity), value_head_dim, device)
        self.capacity = capacity
        self.offset = 0

    def update_and_fetch(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.store(k, v)
        self.advance(k.shape[2])
        return keys, values

    def store(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens after `offset` and return what they attend to; `advance` then counts them.

        Split from the counting so that a compiled block only writes tensors and the offset, a Python int,
        changes once per forward pass (in `ModelCache.advance`), outside the compiled code.
        """
        start, end = self.offset, self.offset + k.shape[2]
        if end > self.capacity:
            raise ContextLengthError(f"the KV cache holds {self.capacity:,} tokens; {end:,} were needed")
        k, v = _encoded(self, k, v)
        # narrow() rather than [:, :, start:end]: one op instead of three slices each, paid per layer per token
        self.keys.narrow(2, start, end - start).copy_(k)
        self.values.narrow(2, start, end - start).copy_(v)
        return _fetched(self, self.keys.narrow(2, 0, end), self.values.narrow(2, 0, end))

    def store_one(self, k: torch.Tensor, v: torch.Tensor):
        """The batched decode step's `store`: one new token; returns (keys, values, visible), visible = None."""
        keys, values = self.store(k, v)
        return keys, values, None

    def decode_slot(self) -> tuple[int, int]:
        """(slot, length) of a decode step: where its one new token goes, and how many slots it attends to."""
        return self.offset, self.offset + 1

    def advance(self, n: int) -> None:
        self.offset += n

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def reset(self) -> None:
        self.offset = 0

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim(self, n: int) -> None:
        """Forget the last n tokens (their slots are overwritten by whatever comes next)."""
        if not self.can_trim(n):
            raise ValueError(f"cannot trim {n} tokens from a cache holding {self.offset}")
        self.offset -= n


# Prompt tokens a sliding-window ring's prefill tail keeps beyond the window: how far back of the previous
# prompt's end a new prompt may diverge and still reuse its prefix (a changed last message, a trimmed reply).
REUSE_SLACK = 256


class RotatingKVCache:
    """Keys and values of one sliding-window layer: a ring of `window` slots, position p in slot p % window,
    plus the prefill tail that lets a wrapped ring be trimmed (module docstring)."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        window: int,
        head_dim: int,
        value_head_dim: int,
        *,
        device,
        dtype,
        kv_types: tuple[str, str] = ("f32", "f32"),
        fetch_dtype: torch.dtype | None = None,
    ):
        self.kv_types, self.fetch_dtype = kv_types, fetch_dtype
        self.keys = kv_blocks.empty(kv_types[0], (batch_size, n_kv_heads, window), head_dim, device)
        self.values = kv_blocks.empty(kv_types[1], (batch_size, n_kv_heads, window), value_head_dim, device)
        self.window = window
        self.offset = 0
        # the prefill tail: positions [tail_start, tail_end) are valid, position p in slot p % tail_size
        self.tail_size = window + REUSE_SLACK
        self.tail_keys = kv_blocks.empty(kv_types[0], (batch_size, n_kv_heads, self.tail_size), head_dim, device)
        self.tail_values = kv_blocks.empty(
            kv_types[1], (batch_size, n_kv_heads, self.tail_size), value_head_dim, device
        )
        self.tail_start = self.tail_end = 0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.keys, self.values, self.tail_keys, self.tail_values))

    def reset(self) -> None:
        self.offset = self.tail_start = self.tail_end = 0

    def update_and_fetch(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.store(k, v)
        self.advance(k.shape[2])
        return keys, values

    def store(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens and return what they attend to, without counting them (see KVCache.store)."""
        k, v = _encoded(self, k, v)
        if k.shape[2] == 1:
            return _fetched(self, *self._append_one(k, v))
        return _fetched(self, *self._append_many(k, v))

    def decode_slot(self) -> tuple[int, int]:
        """(slot, length) of a decode step: the oldest slot, and the slots that hold a position (all, once the
        ring has wrapped: slot order does not matter to attention)."""
        return self.offset % self.window, min(self.offset + 1, self.window)

    def store_one(self, k: torch.Tensor, v: torch.Tensor):
        """The batched decode step's `store`: writes one token and returns the whole ring with a mask of the
        slots that hold a position (True = attend), (1, window).

        `store` returns a slice whose length depends on whether the ring has wrapped, which a compiled graph
        would guard on per sequence (up to 2^B variants of a batch); a mask computed from the offset keeps
        every batch one graph. Before the ring wraps, slots past the offset are empty or hold a previous
        sequence's keys: the mask hides them.
        """
        self._write_slot(*_encoded(self, k, v))
        visible = torch.arange(self.window, device=self.keys.device) <= self.offset
        return *_fetched(self, self.keys, self.values), visible.view(1, self.window)

    def advance(self, n: int) -> None:
        self.offset += n

    def _append_one(self, k, v):
        # The decode step: overwrite the oldest slot and attend to the whole ring (every entry is in window).
        self._write_slot(k, v)
        # An explicit branch, not min(offset + 1, window): compiled with a symbolic offset, `min` became a
        # guard-free expression that a block compiled on a full ring reused for offset 1 (wrong keys).
        if self.offset + 1 >= self.window:
            return self.keys, self.values
        return self.keys[:, :, : self.offset + 1], self.values[:, :, : self.offset + 1]

    def _write_slot(self, k, v) -> None:
        """Write one token's key/value over the oldest slot of the ring."""
        # Indexed by a tensor (index_put_), not sliced: compiled with a symbolic offset, a slice is a view whose
        # storage offset the graph guards on (slot 0 or not), so passing slot 0 compiled the block again (the
        # single decode step once, the batched one per mix of sequences at slot 0). index_copy_ did the same
        # but cost Gemma 3 2-6 ms per token: inductor copied the whole ring instead of writing in place.
        slot = torch.full((1,), self.offset % self.window, dtype=torch.long, device=self.keys.device)
        self.keys[:, :, slot] = k
        self.values[:, :, slot] = v

    def _append_many(self, k, v):
        # A prompt (or a chunk of one): the new queries need up to window - 1 earlier keys, oldest first,
        # followed by their own; the attention mask hides whatever lies outside each query's window.
        T = k.shape[2]
        n_prev = min(self.offset, self.window - 1)
        prev = self._slots(self.offset - n_prev, self.offset)
        keys = torch.cat((self.keys.index_select(2, prev), k), dim=2)
        values = torch.cat((self.values.index_select(2, prev), v), dim=2)
        n_keep = min(T, self.window)  # only the last `window` new tokens can matter to later queries
        keep = self._slots(self.offset + T - n_keep, self.offset + T)
        self.keys.index_copy_(2, keep, k[:, :, T - n_keep :])
        self.values.index_copy_(2, keep, v[:, :, T - n_keep :])
        self._write_tail(k, v)
        return keys, values

    def _write_tail(self, k, v) -> None:
        """Keep the prompt's newest positions in the prefill tail (before `advance` counts them)."""
        start, T = self.offset, k.shape[2]
        if self.tail_end != start:  # decode steps came in between: start the tail over from the ring's window
            lo = max(0, start - self.window)
            if start > lo:
                positions = torch.arange(lo, start, device=self.keys.device)
                to = positions % self.tail_size
                self.tail_keys.index_copy_(2, to, self.keys.index_select(2, positions % self.window))
                self.tail_values.index_copy_(2, to, self.values.index_select(2, positions % self.window))
            self.tail_start, self.tail_end = lo, start
        n = min(T, self.tail_size)
        to = torch.arange(start + T - n, start + T, device=self.keys.device) % self.tail_size
        self.tail_keys.index_copy_(2, to, k[:, :, T - n :])
        self.tail_values.index_copy_(2, to, v[:, :, T - n :])
        self.tail_end = start + T
        self.tail_start = max(self.tail_start, self.tail_end - self.tail_size)

    def _slots(self, start: int, end: int) -> torch.Tensor:
        return torch.arange(start, end, device=self.keys.device) % self.window

    def _from_tail(self, keep: int) -> tuple[int, int]:
        """The positions a trim back to `keep` tokens must restore from the tail: those of the window ending
        at `keep` that the live ring (positions offset - window .. offset - 1) no longer holds."""
        return max(keep - self.window, 0), min(keep, self.offset - self.window)

    def can_trim(self, n: int) -> bool:
        # Once the ring has wrapped, the slots of trimmed tokens held positions that are gone from the ring;
        # the prefill tail may still hold them.
        if not 0 <= n <= self.offset:
            return False
        lo, hi = self._from_tail(self.offset - n)
        return lo >= hi or (self.tail_start <= lo and hi <= self.tail_end)

    def trim(self, n: int) -> None:
        if not self.can_trim(n):
            raise ValueError(
                f"cannot trim {n} tokens from a sliding-window cache at offset {self.offset}: the ring has "
                f"overwritten positions the shorter sequence needs, and its prefill tail does not hold them"
            )
        keep = self.offset - n
        lo, hi = self._from_tail(keep)
        if lo < hi:
            positions = torch.arange(lo, hi, device=self.keys.device)
            self.keys.index_copy_(
                2, positions % self.window, self.tail_keys.index_select(2, positions % self.tail_size)
            )
            self.values.index_copy_(
                2, positions % self.window, self.tail_values.index_select(2, positions % self.tail_size)
            )
        self.offset = keep
        self.tail_end = min(self.tail_end, keep)  # positions past the kept prefix are no longer this sequence's
        self.tail_start = min(self.tail_start, self.tail_end)


def _encoded(cache, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New keys/values (B, Hkv, T, D) as the cache stores them (its KV types: quant/kv_blocks.py)."""
    return kv_blocks.encode(k, cache.kv_types[0]), kv_blocks.encode(v, cache.kv_types[1])


def _fetched(cache, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `store` returns: the stored rows, which attention reads in their type (a tile at a time), or for a
    cache made with `fetch_dtype` (latent attention's, which reads its cache as plain floats) converted."""
    if cache.fetch_dtype is None:
        return keys, values
    return kv_blocks.decode(keys, cache.kv_types[0], cache.fetch_dtype), kv_blocks.decode(
        values, cache.kv_types[1], cache.fetch_dtype
    )


@dataclass
class ModelCache:
    """One cache object per layer, plus the number of positions the whole cache was sized for."""

    layers: list[KVCache | RotatingKVCache]
    capacity: int

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    @property
    def batch_size(self) -> int:
        return self.layers[0].keys.shape[0]

    def can_trim(self, n: int) -> bool:
        return all(layer.can_trim(n) for layer in self.layers)

    def trim(self, n: int) -> None:
        if not self.can_trim(n):
            raise ValueError(f"cannot trim {n} tokens from this cache (offset {self.offset})")
        for layer in self.layers:
            layer.trim(n)

    def advance(self, n: int) -> None:
        """Count n new tokens in every layer, after a forward pass has `store`d them."""
        for layer in self.layers:
            layer.advance(n)

    def reset(self) -> None:
        """Start a new sequence in the same buffers."""
        for layer in self.layers:
            layer.reset()

    @property
    def n_bytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    @property
    def kv_types(self) -> tuple[str, str]:
        """(keys' type, values' type)."""
        return self.layers[0].kv_types


def make_cache(
    config: ModelConfig,
    batch_size: int = 1,
    capacity: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    kv_type_k: str = "f32",
    kv_type_v: str = "f32",
) -> ModelCache:
    """Preallocate a cache for `capacity` positions (default: the model's whole context window), keys stored as
    `kv_type_k` and values as `kv_type_v` (quant/kv_blocks.py: f32, f16, bf16, q8_0, q4_0). `dtype` is the
    activations' dtype: what latent attention's cache hands back."""
    capacity = config.context_length if capacity is None else capacity
    if capacity < 1:
        raise ValueError(f"a KV cache needs room for at least one token, not {capacity}")
    if capacity > config.context_length:
        raise ContextLengthError(
            f"a KV cache of {capacity:,} tokens exceeds the model's context window of "
            f"{config.context_length:,} tokens; ask for at most {config.context_length:,}"
        )
    kv_types = (kv_blocks.check_kv_type(kv_type_k), kv_blocks.check_kv_type(kv_type_v))
    fetch_dtype = None
    if config.kv_lora_rank:
        # Latent attention multiplies its cached latents as floats (latent_attention.py); a block type would need
        # kernels of its own there.
        if any(t not in kv_blocks.FLOAT_TYPES for t in kv_types):
            raise UnsupportedError(
                f"latent attention ({config.architecture}) caches its latent in f32, f16 or bf16, not "
                f"{'/'.join(kv_types)}: use -ctk/-ctv f16"
            )
        fetch_dtype = dtype
    device = torch.device(device) if device is not None else torch.device("cpu")
    heads, key_dim, value_dim = config.kv_cache_shape  # latent attention: one "head" of latent + RoPE key, no values
    shape, dims = (batch_size, heads), (key_dim, value_dim)
    kw = {"device": device, "dtype": dtype, "kv_types": kv_types, "fetch_dtype": fetch_dtype}
    layers: list[KVCache | RotatingKVCache] = []
    for i in range(config.n_layers):
        window = config.sliding_window if config.sliding_layers and config.sliding_layers[i] else None
        if window is not None and window < capacity:
            layers.append(RotatingKVCache(*shape, window, *dims, **kw))
        else:  # a global layer, or a sliding one whose window covers the whole cache anyway
            layers.append(KVCache(*shape, capacity, *dims, **kw))
    return ModelCache(layers, capacity)
