"""The default arithmetic's small native ops (quant/native/ops.cpp) against the PyTorch code they replace.

Oracle: the layers' own float32 expressions (RMSNorm, RotaryEmbedding.apply, Attention._attend, the gated
activation), run with the native ops switched off. The native ops do the same float32 arithmetic in another
summation order, with a polynomial exp (relative error < 2e-7), so the tolerance is float32's: 1e-5 of the
output's scale. A wrong pairing, head group or mask is O(1).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pellucid.model.layers import RotaryEmbedding
from pellucid.model.layers.attention import Attention
from pellucid.model.layers.norms import RMSNorm
from pellucid.quant import kernels, native


@pytest.fixture(autouse=True, scope="module")
def _native():
    if not native.available():
        pytest.skip(
            "NATIVE KERNELS UNAVAILABLE: this CPU lacks AVX512-VNNI, or g++ could not build quant/native/*.cpp; "
            "the layers use PyTorch's ops instead"
        )


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= rel * max(scale, 1e-6), ((a - b).abs().max(), scale)


def test_rms_norm_matches_layer_on_strided_rows():
    torch.manual_seed(0)
    w = torch.randn(576)
    norm = RMSNorm(w, 1e-5)
    x = torch.randn(3, 5, 2 * 576)[..., :576]
    got = native.rms_norm(x, norm.weight, norm.eps)
    xf = x.float()
    want = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    close(got, want)


@pytest.mark.parametrize("style", ["neox", "interleaved"])
@pytest.mark.parametrize("rope_dim", [64, 32])  # 32 of 64: partial rotary, the rest passes through
def test_rope_matches_layer(style, rope_dim):
    torch.manual_seed(1)
    rope = RotaryEmbedding(rope_dim, 10000.0, style)
    B, T, H, D = 2, 3, 4, 64
    x = torch.randn(B, T, 2 * H * D)[..., : H * D].view(B, T, H, D)  # a strided view, as q from a split
    positions = torch.arange(7, 7 + T)
    cos, sin = rope.tables(positions)  # (T, 1, R/2)
    got = native.rope(
        x, cos.view(1, T, -1).expand(B, T, -1), sin.view(1, T, -1).expand(B, T, -1), rope_dim, style == "interleaved"
    )
    kernels_fast, kernels._fast = kernels._fast, False  # the layer's own PyTorch expression
    try:
        want = rope.apply(x, cos, sin)
    finally:
        kernels._fast = kernels_fast
    close(got, want)


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("masked", [False, True])
def test_attend_one_matches_sdpa(softcap, masked):
    torch.manual_seed(2)
    B, H, Hkv, D, S = 2, 8, 2, 64, 37
    q = torch.randn(B, 1, H, D) * 2
    cache_k = torch.randn(B, Hkv, 64, D)  # a cache with room past S: k/v are strided slices of it
    cache_v = torch.randn(B, Hkv, 64, D)
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]
    visible = (torch.arange(S) % 5 != 3) if masked else None
    got = native.attend_one(q, k, v, visible, 1 / math.sqrt(D), softcap)
    scores = (q.transpose(1, 2).reshape(B, Hkv, H // Hkv, D) @ k.transpose(-1, -2)) / math.sqrt(D)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if masked:
        scores = scores.masked_fill(~visible, float("-inf"))
    want = (torch.softmax(scores, -1) @ v).reshape(B, 1, H * D)
    close(got, want)


def test_attend_one_matches_attention_layer_decode():
    """Attention._attend (SDPA with GQA) on the same cache slice as the native decode path."""
    torch.manual_seed(3)
    B, H, Hkv, D, S = 1, 6, 2, 32, 11
    attn = Attention(None, None, None, None, n_heads=H, n_kv_heads=Hkv, head_dim=D, value_head_dim=D)
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    want = attn._attend(q, k, v).transpose(1, 2).reshape(B, 1, H * D)
    close(native.attend_one(q.transpose(1, 2), k, v, None, attn.scale, None), want)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_glu_matches_torch(activation):
    torch.manual_seed(4)
    y = (
        torch.randn(3, 2 * 1000) * 4
    )  # gate and up: the halves of one fused output, each strided; N not a multiple of 16
    gate, up = y[:, :1000], y[:, 1000:]
    act = F.silu if activation == "silu" else (lambda t: F.gelu(t, approximate="tanh"))
    close(native.glu(gate, up, activation), act(gate) * up)


def test_ops_refuse_wrong_inputs_clearly():
    with pytest.raises(RuntimeError, match="float32"):
        native.rms_norm(torch.randn(2, 8).double(), torch.randn(8), 1e-5)
    with pytest.raises(RuntimeError, match="rope_dim"):
        native.rope(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 3), torch.randn(1, 1, 3), 8, False)


@pytest.mark.parametrize("ring", [False, True])
def test_store_attend_writes_each_cache_and_attends_its_slots(ring):
    """The batched decode step's op against attend_one over the same caches after the same writes: a plain cache
    (slot = offset) and a sliding-window ring (slot = offset % window; all slots once it has wrapped)."""
    from pellucid.engine.kv_cache import KVCache, RotatingKVCache

    torch.manual_seed(5)
    H, Hkv, D, B = 4, 2, 32, 3
    make = (
        (lambda: RotatingKVCache(1, Hkv, 8, D, D, device="cpu", dtype=torch.float32))
        if ring
        else (lambda: KVCache(1, Hkv, 16, D, D, device="cpu", dtype=torch.float32))
    )
    caches = [make() for _ in range(B)]
    for c, n in zip(caches, [0, 5, 11 if ring else 9]):
        c.keys.normal_(), c.values.normal_()
        c.offset = n
    q, k, v = torch.randn(B, 1, H, D), torch.randn(B, 1, Hkv, D), torch.randn(B, 1, Hkv, D)
    slots, lengths = zip(*(c.decode_slot() for c in caches))
    want_caches = [(c.keys.clone(), c.values.clone()) for c in caches]
    for (wk, wv), slot, b in zip(want_caches, slots, range(B)):
        wk[0, :, slot], wv[0, :, slot] = k[b, 0], v[b, 0]
    got = native.store_attend(q, k, v, [c.keys for c in caches], [c.values for c in caches], slots, lengths, 0.2, None)
    for b, ((wk, wv), n) in enumerate(zip(want_caches, lengths)):
        assert torch.equal(caches[b].keys, wk) and torch.equal(caches[b].values, wv)
        want = native.attend_one(q[b : b + 1], wk[:, :, :n], wv[:, :, :n], None, 0.2, None)
        close(got[b : b + 1], want)
    assert lengths == ((1, 6, 8) if ring else (1, 6, 10))
