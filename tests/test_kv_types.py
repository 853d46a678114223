"""KV cache types (f32, f16, bf16, q8_0, q4_0): storage, rounding and the attention that reads them.

Oracles: gguf-py's quantizer (llama.cpp's reference rounding, byte for byte) for the block types; for attention,
the float32 attention over the *decoded* cache (dequantize, then attend: what the kernels must equal up to
summation order, 1e-5 relative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pellucid.engine.kv_cache import KVCache, RotatingKVCache, make_cache
from pellucid.errors import PellucidError, UnsupportedError
from pellucid.model.layers.attention import Attention
from pellucid.quant import kv_blocks, native

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
needs_native = pytest.mark.skipif(not native.available(), reason="native kernels need an AVX512-VNNI CPU")


def rows(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2
    x[..., :32] *= 0.01  # blocks of very different scales
    return x


def close(got, want, tol=1e-5):
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), err


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_blocks_are_gguf_py_s_bytes(kv_type):
    """quantize_row_q8_0_ref / q4_0_ref's bytes, from torch (prefill's writes) and from the native decode step."""
    from gguf import GGMLQuantizationType, quants

    x = rows(64, 128)
    x[0, :32] = 0  # an all-zero block: d = 0
    x[1, :32] = torch.tensor([1.0, -1.0] * 16)  # the largest magnitude tied between signs: the first wins
    x[2, :32] = torch.arange(32) / 4 - 4  # values on the .5 rounding boundaries
    ref = quants.quantize(x.numpy(), GGMLQuantizationType[kv_type.upper()])
    assert np.array_equal(kv_blocks.encode(x, kv_type).numpy(), ref)
    if native.available():
        assert np.array_equal(native.kv_encode(x, kv_type).numpy(), ref)
    back = kv_blocks.decode(torch.from_numpy(ref), kv_type)
    assert np.array_equal(back.numpy(), quants.dequantize(ref, GGMLQuantizationType[kv_type.upper()]))


@needs_native
@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
def test_native_float_rounding_is_torch_s(kv_type):
    x = rows(16, 64)
    want = kv_blocks.encode(x, kv_type).view(torch.uint8)
    assert torch.equal(native.kv_encode(x, kv_type), want.reshape(16, -1))


def test_unknown_type_and_bad_head_dim_are_refused():
    from pellucid.model.config import ModelConfig

    with pytest.raises(PellucidError, match="f32, f16, bf16, q8_0, q4_0"):
        kv_blocks.check_kv_type("q5_k")
    with pytest.raises(UnsupportedError, match="multiple of 32.*is 48"):
        kv_blocks.row_width("q4_0", 48)
    config = ModelConfig(
        architecture="llama", n_layers=2, hidden_size=96, n_heads=2, n_kv_heads=1, head_dim=48, value_head_dim=48,
        ffn_size=64, vocab_size=10, context_length=64, norm_eps=1e-5, rope_theta=1e4, rope_dim=48,
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match="is 48"):
        make_cache(config, 1, 16, kv_type_k="q8_0")
    assert make_cache(config, 1, 16, kv_type_k="f16").kv_types == ("f16", "f32")


def reference_attention(q, k, v, kv_types, scale, softcap, visible=None):
    """q (B, 1, H, D) over cache rows decoded to float32: the plain arithmetic."""
    kf, vf = kv_blocks.decode(k, kv_types[0]), kv_blocks.decode(v, kv_types[1])
    B, H, D = q.shape[0], q.shape[2], q.shape[3]
    Hkv = kf.shape[1]
    qg = q.reshape(B, Hkv, H // Hkv, D)
    scores = qg @ kf.transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if visible is not None:
        scores = scores.masked_fill(~visible.view(1, 1, 1, -1), float("-inf"))
    return (torch.softmax(scores, -1) @ vf).reshape(B, 1, -1)


@needs_native
@pytest.mark.parametrize("kv_k", TYPES)
@pytest.mark.parametrize("kv_v", TYPES)
def test_attend_one_reads_every_type(kv_k, kv_v):
    B, H, Hkv, D, Dv, S = 2, 8, 2, 64, 96, 37
    q = rows(B, 1, H, D, seed=1)
    cache_k = kv_blocks.encode(rows(B, Hkv, 50, D, seed=2), kv_k)  # room past S: strided slices, as a cache's
    cache_v = kv_blocks.encode(rows(B, Hkv, 50, Dv, seed=3), kv_v)
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]
    got = native.attend_one(q, k, v, None, 1 / math.sqrt(D), None, (kv_k, kv_v))
    close(got, reference_attention(q, k, v, (kv_k, kv_v), 1 / math.sqrt(D), None))


@needs_native
@pytest.mark.parametrize("kv_type", TYPES)
def test_attend_one_softcap_and_mask(kv_type):
    B, H, Hkv, D, S = 1, 4, 4, 32, 20
    q = rows(B, 1, H, D, seed=4) * 3
    k = kv_blocks.encode(rows(B, Hkv, S, D, seed=5), kv_type)
    v = kv_blocks.encode(rows(B, Hkv, S, D, seed=6), kv_type)
    visible = torch.arange(S) % 3 != 1
    got = native.attend_one(q, k, v, visible, 0.3, 5.0, (kv_type, kv_type))
    close(got, reference_attention(q, k, v, (kv_type, kv_type), 0.3, 5.0, visible))


@needs_native
@pytest.mark.parametrize("kv_types", [("f16", "f16"), ("bf16", "q4_0"), ("q8_0", "q8_0"), ("q4_0", "f32")])
@pytest.mark.parametrize("ring", [False, True])
def test_store_attend_batched_every_type(kv_types, ring):
    """The batched decode step writes each sequence's token in its type, bytes as a prefill would write them, and
    attends to its own cache; rings wrap (offsets past the window)."""
    H, Hkv, D, B = 4, 2, 64, 3
    kw = {"device": "cpu", "dtype": torch.float32, "kv_types": kv_types}
    caches = [RotatingKVCache(1, Hkv, 8, D, D, **kw) if ring else KVCache(1, Hkv, 16, D, D, **kw) for _ in range(B)]
    for b, c in enumerate(caches):  # prompts of different lengths, some past the ring's window
        n = (3, 9, 12)[b] if ring else (3, 5, 7)[b]
        c.update_and_fetch(rows(1, Hkv, n, D, seed=10 + b), rows(1, Hkv, n, D, seed=20 + b))
    slots, lengths = zip(*(c.decode_slot() for c in caches))
    q, k, v = rows(B, 1, H, D, seed=7), rows(B, 1, Hkv, D, seed=8), rows(B, 1, Hkv, D, seed=9)
    want_caches = [(c.keys.clone(), c.values.clone()) for c in caches]
    got = native.store_attend(
        q, k, v, [c.keys for c in caches], [c.values for c in caches], slots, lengths, 0.2, None, kv_types
    )
    for b, c in enumerate(caches):
        wk, wv = want_caches[b]
        wk[:, :, slots[b]] = kv_blocks.encode(k[b : b + 1].transpose(1, 2), kv_types[0])[:, :, 0]
        wv[:, :, slots[b]] = kv_blocks.encode(v[b : b + 1].transpose(1, 2), kv_types[1])[:, :, 0]
        assert torch.equal(c.keys, wk) and torch.equal(c.values, wv)
        n = lengths[b]
        want = reference_attention(q[b : b + 1], wk[:, :, :n], wv[:, :, :n], kv_types, 0.2, None)
        close(got[b : b + 1], want)


@pytest.mark.parametrize("kv_type", TYPES)
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("window", [None, 300])
def test_prefill_over_a_long_typed_cache_reads_it_in_tiles(kv_type, softcap, window, monkeypatch):
    """A chunk continuing a cached prefix longer than WHOLE_CACHE: the tiled online softmax equals the attention over
    the decoded cache (GQA, soft-cap, a sliding window's mask)."""
    from pellucid.model.layers import attention

    monkeypatch.setattr(attention, "WHOLE_CACHE", 64)
    monkeypatch.setattr(attention, "TILE", 48)
    B, H, Hkv, D, T, S = 1, 6, 2, 32, 5, 700
    attn = Attention(
        None, None, None, None, n_heads=H, n_kv_heads=Hkv, head_dim=D, value_head_dim=D, window=window,
        softcap=softcap,
    )  # fmt: skip
    q = rows(B, H, T, D, seed=1) * 2
    keys = kv_blocks.encode(rows(B, Hkv, S, D, seed=2), kv_type)
    values = kv_blocks.encode(rows(B, Hkv, S, D, seed=3), kv_type)
    got = attn._attend_cached(q, keys, values, None, (kv_type, kv_type))
    want = attn._attend(q, kv_blocks.decode(keys, kv_type), kv_blocks.decode(values, kv_type))
    close(got, want, 1e-4)


@pytest.mark.parametrize("kv_type", TYPES)
def test_ring_and_prefill_tail_keep_working(kv_type):
    """A sliding-window ring in any type holds what an f32 ring holds, rounded: wrap, trim back into the prefill
    tail, decode again."""
    D, W = 32, 8
    typed = RotatingKVCache(1, 2, W, D, D, device="cpu", dtype=torch.float32, kv_types=(kv_type, kv_type))
    plain = RotatingKVCache(1, 2, W, D, D, device="cpu", dtype=torch.float32)
    rounded = lambda x: kv_blocks.decode(kv_blocks.encode(x, kv_type), kv_type)  # noqa: E731
    for step, n in enumerate((13, 1, 1, 5, 1)):
        k, v = rows(1, 2, n, D, seed=step), rows(1, 2, n, D, seed=50 + step)
        got_k, got_v = typed.update_and_fetch(k, v)
        want_k, want_v = plain.update_and_fetch(rounded(k), rounded(v))
        assert torch.equal(kv_blocks.decode(got_k, kv_type), want_k)
        assert torch.equal(kv_blocks.decode(got_v, kv_type), want_v)
    for cache in (typed, plain):
        assert cache.can_trim(6)
        cache.trim(6)
    assert torch.equal(kv_blocks.decode(typed.keys, kv_type), plain.keys)
    got = typed.store_one(rows(1, 2, 1, D, seed=99), rows(1, 2, 1, D, seed=98))
    want = plain.store_one(rounded(rows(1, 2, 1, D, seed=99)), rounded(rows(1, 2, 1, D, seed=98)))
    assert torch.equal(kv_blocks.decode(got[0], kv_type), want[0]) and torch.equal(got[2], want[2])


def small_config(**overrides):
    from pellucid.model.config import ModelConfig

    base = dict(
        architecture="gemma3", n_layers=6, hidden_size=128, n_heads=4, n_kv_heads=2, head_dim=64, value_head_dim=64,
        ffn_size=64, vocab_size=10, context_length=4096, norm_eps=1e-6, rope_theta=1e4, rope_dim=64,
    )  # fmt: skip
    return ModelConfig(**(base | overrides))


@pytest.mark.parametrize("kv_type", ["f32", "f16", "bf16", "q8_0", "q4_0", "q8_0/f16", "f16/q4_0"])
@pytest.mark.parametrize("n_ctx", [100, 1000])
@pytest.mark.parametrize("kind", ["global", "sliding", "latent"])
def test_fit_predicts_what_make_cache_allocates(kv_type, n_ctx, kind):
    """memory.kv_cache_bytes (fit, inspect, the RAM check) equals the bytes make_cache allocates, for every type,
    sliding-window rings with their prefill tail, and latent attention's one-head cache."""
    from pellucid import memory

    overrides = {
        "global": {},
        "sliding": {"sliding_window": 256, "sliding_layers": [True, True, False, True, True, False]},
        "latent": {"kv_lora_rank": 64, "rope_dim": 32, "n_kv_heads": 4},
    }[kind]
    config = small_config(**overrides)
    kv_k, kv_v = memory.kv_pair(kv_type)
    if kind == "latent" and not {kv_k, kv_v} <= set(kv_blocks.FLOAT_TYPES):
        with pytest.raises(UnsupportedError, match="latent"):
            make_cache(config, 1, n_ctx, kv_type_k=kv_k, kv_type_v=kv_v)
        return
    cache = make_cache(config, 1, n_ctx, kv_type_k=kv_k, kv_type_v=kv_v)
    assert memory.kv_cache_bytes(config, n_ctx, kv_type) == cache.n_bytes


def test_fit_default_is_the_engine_s(monkeypatch):
    from pellucid import memory

    monkeypatch.delenv("PELLUCID_EXACT", raising=False)
    assert memory.kv_pair(None) == ("f16", "f16") == (kv_blocks.DEFAULT_KV_TYPE,) * 2
    monkeypatch.setenv("PELLUCID_EXACT", "1")  # exact mode: float32 everywhere, the cache included
    assert memory.kv_pair(None) == ("f32", "f32")


def test_quantized_caches_store_hadamard_rotated_rows_as_llama_cpp_does():
    """The Walsh-Hadamard matrix is orthonormal and its own inverse (so q.k and the attention output are unchanged
    by rotating), and the block sizes follow llama.cpp's attn_rot_k / attn_rot_v: keys the largest power-of-two
    block >= 64 dividing head_dim, values 64, only for q8_0 / q4_0 caches."""
    from types import SimpleNamespace

    from pellucid.model.layers.attention import cache_rotations, hadamard_matrix

    h = hadamard_matrix(128, "cpu")
    torch.testing.assert_close(h @ h, torch.eye(128), atol=1e-6, rtol=0)
    torch.testing.assert_close(h, h.T)
    cache = SimpleNamespace(kv_types=("q4_0", "q8_0"))
    rot_k, rot_v = cache_rotations(cache, 256, 64, "cpu")
    assert rot_k.shape == (256, 256) and rot_v.shape == (64, 64)
    assert cache_rotations(cache, 192, 96, "cpu")[0].shape == (64, 64)  # 192 = 3 x 64
    assert cache_rotations(cache, 32, 32, "cpu") == (None, None)  # not a multiple of 64
    assert cache_rotations(SimpleNamespace(kv_types=("f16", "bf16")), 64, 64, "cpu") == (None, None)
