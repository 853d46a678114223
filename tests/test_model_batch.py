"""`Transformer.decode_batch`: B sequences at different positions, each in its own cache, in one step.

Oracle: the same steps run one sequence at a time through the ordinary single-sequence decode path (which
llama.cpp's fixtures check in test_model_llamacpp.py). Both do float32 arithmetic on the same weights; they
differ in how the matrix products group their sums (B rows in one product vs one) and in what the compiler
fuses, so they agree to rounding. Logits of these models reach ~30; we allow 1e-3 absolute + 1e-4 relative,
orders of magnitude below a real mistake (a wrong position, a neighbour's keys, a stale ring slot move logits
by O(0.1-1)), and check that each mistake we guard against is caught (`test_the_oracle_sees_a_wrong_position`).
"""

from __future__ import annotations

import copy

import pytest
import torch

from model_helpers import loaded, tiny_model
from pellucid.errors import ContextLengthError

TOL = dict(rtol=1e-4, atol=1e-3)


def prefilled(model, lengths: list[int], capacity: int, seed: int = 0):
    """One cache per sequence, each holding a random prompt of the given length."""
    g = torch.Generator().manual_seed(seed)
    caches = []
    for n in lengths:
        cache = model.make_cache(capacity=capacity)
        if n:
            model.hidden(torch.randint(0, model.config.vocab_size, (1, n), generator=g), cache)  # no logits needed
        caches.append(cache)
    return caches


def compare_batched_with_separate(model, lengths: list[int], steps: int, capacity: int):
    caches = prefilled(model, lengths, capacity)
    separate = copy.deepcopy(caches)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, model.config.vocab_size, (len(lengths),), generator=g)
        batched = model.decode_batch(tokens, caches)
        one_by_one = torch.stack([model(t.view(1, 1), c)[0, -1] for t, c in zip(tokens, separate)])
        assert batched.shape == (len(lengths), model.config.vocab_size) and batched.dtype == torch.float32
        torch.testing.assert_close(batched, one_by_one, **TOL)
    for a, b in zip(caches, separate):
        assert a.offset == b.offset
        for la, lb in zip(a.layers, b.layers):
            torch.testing.assert_close(la.keys, lb.keys, **TOL)
            torch.testing.assert_close(la.values, lb.values, **TOL)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@torch.inference_mode()
def test_tiny_batch_equals_separate_steps(architecture, arithmetic):
    """Also in the default arithmetic, where both paths store and attend with the native ops (one
    `store_attend` per layer for the batch; the tiny models' float32 products keep the tolerance)."""
    # Gemma's tiny window is 8: sequences before, at and long past the point where their rings wrap.
    compare_batched_with_separate(tiny_model(architecture), [0, 3, 7, 8, 20], steps=12, capacity=64)


@torch.inference_mode()
def test_tiny_gemma_batch_ignores_a_previous_sequence_in_its_rings(arithmetic):
    """A reset cache's ring still holds the last sequence's keys in the slots past the new offset; the batched
    step attends to the whole ring under a mask (one compiled graph for every mix of wrapped and unwrapped
    rings), so the mask must hide those slots exactly as the single-sequence step's slice does."""
    model = tiny_model("gemma3")
    caches = prefilled(model, [20, 20, 20], capacity=64, seed=3)
    for cache in caches:
        cache.reset()
    g = torch.Generator().manual_seed(5)
    for cache, n in zip(caches, [2, 5, 11]):
        model.hidden(torch.randint(0, model.config.vocab_size, (1, n), generator=g), cache)
    separate = copy.deepcopy(caches)
    for step in range(10):
        tokens = torch.tensor([step + 1, step + 2, step + 3])
        batched = model.decode_batch(tokens, caches)
        one_by_one = torch.stack([model(t.view(1, 1), c)[0, -1] for t, c in zip(tokens, separate)])
        torch.testing.assert_close(batched, one_by_one, **TOL)


@torch.inference_mode()
def test_smollm2_batch_equals_separate_steps(smollm2_path):
    compare_batched_with_separate(loaded(smollm2_path), [1, 9, 30], steps=3, capacity=64)


@torch.inference_mode()
def test_gemma3_batch_equals_separate_steps(gemma3_path):
    # Gemma 3's local layers keep a ring of 512: the 520-token sequence has wrapped it, the others have not.
    compare_batched_with_separate(loaded(gemma3_path), [2, 17, 520], steps=3, capacity=600)


@torch.inference_mode()
def test_the_oracle_sees_a_wrong_position():
    """The tolerance is tight enough to catch a sequence decoded at a neighbour's position."""
    model = tiny_model("llama")
    caches = prefilled(model, [5, 5], capacity=16)
    wrong = copy.deepcopy(caches)
    wrong[1].layers[0].offset -= 1  # layer 0 of sequence 1 writes and reads one slot early
    tokens = torch.tensor([3, 4])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(model.decode_batch(tokens, wrong), model.decode_batch(tokens, caches), **TOL)


@torch.inference_mode()
def test_a_full_cache_stops_the_step_before_any_cache_changes():
    model = tiny_model("llama")
    caches = prefilled(model, [2, 4], capacity=4)
    with pytest.raises(ContextLengthError):
        model.decode_batch(torch.tensor([1, 2]), caches)
    assert [c.offset for c in caches] == [2, 4]


def test_decode_batch_refuses_a_shared_batch_cache():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="one cache per sequence"):
        model.decode_batch(torch.tensor([1, 2]), [model.make_cache(batch_size=2, capacity=4)] * 2)
