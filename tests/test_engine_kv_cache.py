"""The KV cache objects on their own: what they store, what they return, when they refuse.

Oracle: the positions themselves. Each test writes keys whose value *is* their position, so the returned
tensors say exactly which positions came back and in what order (exact equality, no tolerance).
"""

from __future__ import annotations

import pytest
import torch

from model_helpers import tiny_config
from pellucid.engine.kv_cache import REUSE_SLACK, KVCache, RotatingKVCache, make_cache
from pellucid.errors import ContextLengthError


def positions(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values (B=1, Hkv=1, T, D=2) whose entries are their positions (values are negated)."""
    k = torch.arange(start, end, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 1, -1, 2)
    return k, -k


def returned(k: torch.Tensor) -> list[int]:
    return k[0, 0, :, 0].int().tolist()


def test_full_cache_returns_everything_in_order():
    cache = KVCache(1, 1, 8, 2, 2, device="cpu", dtype=torch.float32)
    k, v = cache.update_and_fetch(*positions(0, 3))
    assert returned(k) == [0, 1, 2] and returned(-v) == [0, 1, 2]
    k, _ = cache.update_and_fetch(*positions(3, 4))
    assert returned(k) == [0, 1, 2, 3] and cache.offset == 4
    cache.trim(2)
    k, _ = cache.update_and_fetch(*positions(2, 3))
    assert returned(k) == [0, 1, 2] and cache.offset == 3


def test_full_cache_refuses_overflow():
    cache = KVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    cache.update_and_fetch(*positions(0, 3))
    with pytest.raises(ContextLengthError, match="holds 4 tokens; 5 were needed"):
        cache.update_and_fetch(*positions(3, 5))


def test_ring_decode_keeps_the_last_window():
    ring = RotatingKVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    seen = []
    for p in range(10):
        k, _ = ring.update_and_fetch(*positions(p, p + 1))
        seen.append(sorted(returned(k)))
    assert seen[2] == [0, 1, 2]
    assert seen[3] == [0, 1, 2, 3]
    assert seen[9] == [6, 7, 8, 9]  # exactly the window: position 9 sees 6..9 (9 - 6 < 4)
    assert ring.keys.shape[2] == 4  # the memory never grows


def test_ring_prefill_returns_previous_window_then_new_tokens():
    ring = RotatingKVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    k, _ = ring.update_and_fetch(*positions(0, 6))  # longer than the window: all 6 come back for the mask
    assert returned(k) == [0, 1, 2, 3, 4, 5]
    k, v = ring.update_and_fetch(*positions(6, 8))  # a chunk after the ring wrapped: 3 earlier + 2 new, in order
    assert returned(k) == [3, 4, 5, 6, 7] and returned(-v) == [3, 4, 5, 6, 7]
    k, _ = ring.update_and_fetch(*positions(8, 9))
    assert sorted(returned(k)) == [5, 6, 7, 8]


def test_ring_trims_back_into_what_its_prefill_tail_holds():
    ring = RotatingKVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    ring.update_and_fetch(*positions(0, 3))
    ring.trim(1)
    k, _ = ring.update_and_fetch(*positions(2, 3))
    assert sorted(returned(k)) == [0, 1, 2]
    # A prompt far past the window: the ring has wrapped, but the prefill tail still holds what a trim needs,
    # so the next chunk sees exactly the positions it would have seen had the prompt been shorter.
    ring.update_and_fetch(*positions(3, 12))
    assert ring.can_trim(5)
    ring.trim(5)
    assert ring.offset == 7
    k, _ = ring.update_and_fetch(*positions(7, 9))
    assert returned(k) == [4, 5, 6, 7, 8]  # the 3 positions before 7, then the new ones
    k, _ = ring.update_and_fetch(*positions(9, 10))
    assert sorted(returned(k)) == [6, 7, 8, 9]


def test_ring_refuses_a_trim_its_tail_does_not_cover():
    ring = RotatingKVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    ring.update_and_fetch(*positions(0, 3))
    for p in range(3, 10):  # decode steps are not kept in the tail (that would cost a copy per token)
        ring.update_and_fetch(*positions(p, p + 1))
    assert ring.can_trim(0) and not ring.can_trim(3)
    with pytest.raises(ValueError, match="overwritten"):
        ring.trim(3)
    # nor does it reach further back than the window plus its slack
    long = RotatingKVCache(1, 1, 4, 2, 2, device="cpu", dtype=torch.float32)
    end = long.tail_size + 10
    long.update_and_fetch(*positions(0, end))
    assert long.can_trim(long.tail_size - 4) and not long.can_trim(long.tail_size - 3)


def test_make_cache_uses_a_ring_only_where_the_window_is_smaller_than_the_cache():
    config = tiny_config("gemma3")  # window 8, layers [sliding, sliding, global, sliding]
    kinds = [type(layer).__name__ for layer in make_cache(config, capacity=32).layers]
    assert kinds == ["RotatingKVCache", "RotatingKVCache", "KVCache", "RotatingKVCache"]
    small = make_cache(config, capacity=8)
    assert all(isinstance(layer, KVCache) for layer in small.layers)
    cache = make_cache(config, batch_size=2, capacity=32)
    per_token = config.n_kv_heads * (config.head_dim + config.value_head_dim) * 4  # float32
    assert cache.n_bytes == 2 * per_token * (3 * (8 + 8 + REUSE_SLACK) + 32)  # rings, their prefill tails
    assert cache.n_bytes == 2 * config.kv_cache_bytes(32, bytes_per_element=4)  # what the memory planner budgets


def test_make_cache_refuses_more_than_the_context_window():
    with pytest.raises(ContextLengthError, match="200 tokens exceeds the model's context window of 128"):
        make_cache(tiny_config("llama"), capacity=200)


def test_model_cache_trim_and_reset():
    cache = make_cache(tiny_config("gemma3", n_kv_heads=1, head_dim=2, value_head_dim=2), capacity=32)
    for layer in cache.layers:
        layer.update_and_fetch(*positions(0, 5))
    assert cache.offset == 5
    cache.trim(2)
    assert cache.offset == 3 and all(layer.offset == 3 for layer in cache.layers)
    cache.reset()
    assert cache.offset == 0
