"""The generic decoder on tiny random models of each family (mlx-lm style): fast checks of its mechanics.

Oracle for the KV cache: the same model run without a cache over the whole sequence. Cached and uncached
passes do the same float32 arithmetic on different shapes (matmuls over T vs 1 rows, softmax over
different key counts), so they agree to rounding. The tiny models' logits reach ~30 in magnitude; we allow
5e-5 absolute (+1e-5 relative), a few float32 ulps at that size and far below any real mistake (a wrong
position or mask moves logits by O(1)).
"""

from __future__ import annotations

import re

import pytest
import torch

from model_helpers import random_weights, tiny_config, tiny_model
from pellucid.errors import ContextLengthError, UnsupportedError
from pellucid.model.families import family_for
from pellucid.model.layers import RotaryEmbedding, attention_mask
from pellucid.model.loader import Weights, build_transformer

TOL = dict(rtol=1e-5, atol=5e-5)


def run_in_steps(model, tokens: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Logits for `tokens` fed through one cache in chunks of the given sizes (1 = a decode step)."""
    cache = model.make_cache(capacity=tokens.shape[1])
    out, start = [], 0
    for n in steps:
        out.append(model(tokens[:, start : start + n], cache))
        start += n
    assert start == tokens.shape[1] and cache.offset == start
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize(
    "steps",
    [
        [1] * 30,  # decode only: Gemma's ring (window 8) wraps several times
        [5] + [1] * 25,  # prefill shorter than the window, then decode across it
        [20, 1, 1, 1, 7],  # prefill longer than the window, decode, then a chunk after the ring wrapped
        [3, 9, 1, 10, 7],  # chunks around the window size
    ],
)
@torch.inference_mode()
def test_cached_equals_uncached(architecture, steps):
    model = tiny_model(architecture)
    tokens = torch.randint(0, model.config.vocab_size, (1, sum(steps)), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(run_in_steps(model, tokens, steps), model(tokens), **TOL)


@torch.inference_mode()
def test_sliding_window_changes_the_output():
    """The window must matter: the same weights with global attention everywhere differ past the window."""
    config = tiny_config("gemma3", rope_theta_local=None)  # one RoPE base, so only the window differs
    weights = random_weights(config)
    names = family_for("gemma3").gguf_names
    windowed = build_transformer(config, Weights.from_dict(weights), names)
    no_window = tiny_config("gemma3", rope_theta_local=None, sliding_window=None, sliding_layers=[])
    global_only = build_transformer(no_window, Weights.from_dict(weights), names)
    tokens = torch.randint(0, config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    a, b = windowed(tokens), global_only(tokens)
    window = config.sliding_window
    torch.testing.assert_close(a[:, :window], b[:, :window], **TOL)  # inside the window: identical
    assert (a[:, window:] - b[:, window:]).abs().amax() > 1e-2


@torch.inference_mode()
def test_batch_rows_are_independent():
    model = tiny_model("gemma3")
    tokens = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(3))
    batched = model(tokens)
    for row in range(3):
        torch.testing.assert_close(batched[row : row + 1], model(tokens[row : row + 1]), **TOL)


def _hf_to_gguf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to llama's q/k rows (within each head)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_interleaved_rope_on_gguf_rows_equals_neox_rope_on_hf_rows():
    """Why llama GGUF weights take the interleaved RoPE: q·k scores then equal HF's (NeoX) ones exactly."""
    g = torch.Generator().manual_seed(4)
    n_heads, head_dim, hidden, T = 3, 8, 12, 6
    w_q, w_k = (
        torch.randn(n_heads * head_dim, hidden, generator=g),
        torch.randn(n_heads * head_dim, hidden, generator=g),
    )
    x = torch.randn(1, T, hidden, generator=g)
    positions = torch.arange(T)

    def scores(wq, wk, style):
        rope = RotaryEmbedding(head_dim, 10_000.0, style)
        cos, sin = rope.tables(positions)
        q = rope.apply((x @ wq.T).view(1, T, n_heads, head_dim), cos, sin)
        k = rope.apply((x @ wk.T).view(1, T, n_heads, head_dim), cos, sin)
        return torch.einsum("bthd,bshd->bhts", q, k)

    hf = scores(w_q, w_k, "neox")
    gguf = scores(_hf_to_gguf_permute(w_q, n_heads), _hf_to_gguf_permute(w_k, n_heads), "interleaved")
    torch.testing.assert_close(gguf, hf, rtol=1e-5, atol=1e-5)
    wrong = scores(_hf_to_gguf_permute(w_q, n_heads), _hf_to_gguf_permute(w_k, n_heads), "neox")
    assert (wrong - hf).abs().amax() > 1e-2  # the other pairing on permuted rows is measurably wrong


def test_partial_rotary_leaves_the_tail_alone():
    rope = RotaryEmbedding(4, 10_000.0, "neox")
    x = torch.randn(1, 3, 2, 8)
    cos, sin = rope.tables(torch.arange(3))
    out = rope.apply(x, cos, sin)
    torch.testing.assert_close(out[..., 4:], x[..., 4:], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=1e-7)  # position 0 is the identity
    assert not torch.allclose(out[:, 1, :, :4], x[:, 1, :, :4])


def test_attention_mask_causal_and_window():
    # 3 new queries over 6 keys (3 cached): query i sits at key position 3 + i.
    mask = attention_mask(3, 6, None, torch.device("cpu"))
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    windowed = attention_mask(3, 6, 2, torch.device("cpu"))  # each query sees itself and one back
    assert windowed.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    assert attention_mask(1, 5, None, torch.device("cpu")) is None
    assert attention_mask(1, 5, 5, torch.device("cpu")) is None
    assert attention_mask(1, 6, 5, torch.device("cpu")).tolist() == [[0, 1, 1, 1, 1, 1]]


def test_prompt_longer_than_cache_is_a_context_length_error():
    model = tiny_model("llama")
    cache = model.make_cache(capacity=10)
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ContextLengthError, match=r"10 tokens \(8 already used\).*at most 2 more"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)
    assert cache.offset == 8  # nothing was written
    with pytest.raises(ContextLengthError, match="context window is 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_unknown_architecture_lists_supported_ones():
    with pytest.raises(
        UnsupportedError, match=r"'mamba'.*supported: deepseek2, gemma2, gemma3, .*granite, llama.*qwen3"
    ) as e:
        family_for("mamba")
    assert "Closest" not in str(e.value)  # nothing is like it: no suggestion rather than a wrong one


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("olmoe", "olmo2 (OLMoE"), ("olmo", "olmo2"), ("gemma", "gemma2 / gemma3"), ("qwen", "qwen2 / qwen3")],
)
def test_unknown_architecture_names_its_closest_family(name, suggested):
    with pytest.raises(UnsupportedError, match=r"Closest supported family: " + re.escape(suggested)):
        family_for(name)


def test_unused_tensor_is_refused(tmp_path):
    """A tensor the decoder ignores (here GPT-OSS's attention sinks) must stop the load, not be dropped."""
    from model_helpers import finish_gguf, llama_gguf_writer
    from pellucid.model.loader import load_model

    config = tiny_config("llama")
    tensors = random_weights(config) | {"blk.0.attn_sinks.weight": torch.zeros(4)}
    path = tmp_path / "tiny.gguf"
    writer = llama_gguf_writer(path, config)
    for name, t in tensors.items():
        writer.add_tensor(name, t.numpy())
    finish_gguf(writer)
    with pytest.raises(UnsupportedError, match=r"blk\.0\.attn_sinks\.weight"):
        load_model(path, device="cpu")


def test_cache_made_for_another_batch_size_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="batch of 2 sequences needs a cache made for 2, not 1"):
        model(torch.zeros(2, 3, dtype=torch.long), model.make_cache(capacity=8))


@torch.inference_mode()
def test_a_short_sequence_decoded_after_a_wrapped_ring():
    """Regression: a decode step compiled on a full sliding-window ring was reused for a new sequence at
    offset 1 (the ring's fill was a guard-free min()), which then attended to stale slots. Compiled variants
    are per process, so we start from none to make the order of compilation the one that failed."""
    torch._dynamo.reset()
    model = tiny_model("gemma3")
    g = torch.Generator().manual_seed(4)
    long = model.make_cache(capacity=32)
    model.hidden(torch.randint(0, model.config.vocab_size, (1, 20), generator=g), long)
    tokens = torch.randint(0, model.config.vocab_size, (1, 4), generator=g)
    fresh = model.make_cache(capacity=32)
    out = [model(tokens[:, :1], fresh), model(tokens[:, 1:2], long)]  # offset 0, then a full ring (offset 20)
    out += [model(tokens[:, i : i + 1], fresh) for i in range(1, 4)]  # offsets 1-3 of the new sequence
    torch.testing.assert_close(torch.cat([out[0], *out[2:]], dim=1), model(tokens), **TOL)


@torch.inference_mode()
def test_decoding_over_the_rings_slot_0_compiles_nothing_new():
    """Once the decode step has run on a full sliding-window ring, going on compiles nothing: writing the
    new key at slot 0 used to be a slice at a symbolic offset, which the graph guards on (0 or not), so the
    first reply to pass the window (Gemma 3: 512 tokens) stalled for a second compile (1-9 s)."""
    from torch._dynamo.utils import counters

    model = tiny_model("gemma3")
    window = model.config.sliding_window
    cache = model.make_cache(capacity=4 * window)
    tokens = torch.randint(0, model.config.vocab_size, (1, 4 * window), generator=torch.Generator().manual_seed(5))
    for i in range(window):  # offsets 0 .. window - 1: the ring's empty and full variants
        model(tokens[:, i : i + 1], cache)
    compiled = counters["stats"]["unique_graphs"]
    for i in range(window, 3 * window + 2):  # slot 0 at offsets window and 2 * window
        model(tokens[:, i : i + 1], cache)
    assert counters["stats"]["unique_graphs"] == compiled
