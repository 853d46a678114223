"""Packed matrix products (quant/kernels.py) against dequantize-then-matmul, on random and real weights.

Oracle: `dequantize()` (itself checked bit-exactly against gguf-py in test_quant_dequant.py) followed by a
float64 matmul. The kernels do float32 arithmetic on the same weights in another summation order, so we
allow a relative error of 1e-5 of the output's scale (sum of |w| |x| per row): float32 rounding over K <= 1536
terms is ~1e-6 of it, and a wrong nibble, scale or group order is ~1e-1 of it.
"""

from __future__ import annotations

import pytest
import torch

from pellucid.formats.gguf import GGUFFile
from pellucid.quant import kernels
from pellucid.quant.dequant import dequantize
from pellucid.quant.packed import MXFP4, PackedExperts, PackedWeight, pack
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType
from test_quant_dequant import random_blocks

FORMATS = [
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.IQ4_XS,
    GGMLType.MXFP4,
]  # fmt: skip
ROWS = [1, 3, kernels.GEMV_MAX_ROWS, kernels.GEMV_MAX_ROWS + 5]  # packed GEMV (1-8 rows), unpack + GEMM (more)


@pytest.fixture(autouse=True)
def _compiled_kernels_only(monkeypatch):
    """These are the default float32 kernels: keep fast mode out (it has its own tests, test_quant_native.py)."""
    monkeypatch.setattr(kernels, "_fast", False)


def check_product(raw, ggml_type, shape, m: int, lead: tuple[int, ...] = ()):
    """x (*lead, m, K) @ W.T against the float64 oracle."""
    packed = pack(raw, ggml_type, shape)
    w = dequantize(raw, ggml_type, shape).reshape(shape).double()
    x = torch.randn(*lead, m, shape[1], generator=torch.Generator().manual_seed(m))
    with torch.inference_mode():
        y = kernels.matmul(x, packed)
    expected = x.double() @ w.T
    scale = x.double().abs() @ w.abs().T  # what float32 rounding is relative to
    assert y.shape == (*lead, m, shape[0]) and y.dtype == torch.float32
    assert ((y.double() - expected).abs() <= 1e-5 * scale + 1e-30).all()


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_random_weights(ggml_type, m):
    block = BLOCK_LAYOUT[ggml_type].block_size
    shape = (24, 2 * 256)  # whole super-blocks for the K-quants
    raw = random_blocks(ggml_type, shape[0] * shape[1] // block)
    check_product(raw, ggml_type, shape, m)


@pytest.mark.parametrize("t", [2, 5])
@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_1, GGMLType.Q4_K], ids=lambda t: t.name)
def test_a_short_prompt_chunk(ggml_type, t):
    """(1, T, K), 1 < T < GEMV_MAX_ROWS: run padded to GEMV_MAX_ROWS rows (one compiled entry for every
    count); the real rows must come out as if they ran alone."""
    shape = (24, 2 * 256)
    raw = random_blocks(ggml_type, shape[0] * shape[1] // BLOCK_LAYOUT[ggml_type].block_size)
    check_product(raw, ggml_type, shape, t, lead=(1,))


@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_parts_are_the_dequantized_matrix(ggml_type):
    """`parts()` (what every kernel reads) stacked back into (N, K) is `dequantize()` bit for bit, zeros' signs
    included: the same float32 products (a compiler could fuse Q4_1's d * q + m into an FMA; eager torch does
    not). MXFP4's parts build the levels from their bits where dequantize looks them up."""
    shape = (24, 2 * 256)
    raw = random_blocks(ggml_type, shape[0] * shape[1] // BLOCK_LAYOUT[ggml_type].block_size)
    packed = pack(raw, ggml_type, shape)
    got = torch.stack(packed.parts(), dim=-2).reshape(shape)
    assert torch.equal(got.view(torch.int32), dequantize(raw, ggml_type, shape).view(torch.int32))


def test_mxfp4_fields_view_the_file():
    raw = torch.from_numpy(random_blocks(GGMLType.MXFP4, 24 * 16))
    packed = pack(raw, GGMLType.MXFP4, (24, 512))
    assert packed.n_bytes == raw.numel()  # 17 bytes per 32 weights: 4.25 bits, nothing unpacked at load
    assert all(t.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr() for t in packed.parameters())


@pytest.mark.parametrize("ggml_type", [GGMLType.MXFP4, GGMLType.Q4_K, GGMLType.Q3_K], ids=lambda t: t.name)
def test_expert_stack(ggml_type):
    """An (E, N, K) expert stack as GGUF stores it: expert e is a 2-D packed matrix viewing rows e N..(e + 1) N
    of the stack's bytes (Q3_K: re-laid-out at load, sliced the same way), kept from one call to the next."""
    n_experts, shape = 3, (24, 512)
    raw = random_blocks(ggml_type, n_experts * shape[0] * shape[1] // BLOCK_LAYOUT[ggml_type].block_size)
    experts = pack(raw, ggml_type, (n_experts, *shape))
    assert isinstance(experts, PackedExperts) and experts.shape == (n_experts, *shape)
    assert experts.n_experts == n_experts and experts.ggml_type == ggml_type
    w = dequantize(raw, ggml_type, (n_experts, *shape))
    stack_start = experts.stack.fields()
    for e in range(n_experts):
        matrix = experts.expert(e)
        assert isinstance(matrix, PackedWeight) and matrix.shape == shape and experts.expert(e) is matrix
        for name, t in matrix.fields().items():  # a view at expert e's rows, not a copy
            whole = stack_start[name]
            assert t.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
            assert t.data_ptr() == whole[e * shape[0]].data_ptr()
        torch.testing.assert_close(torch.stack(matrix.parts(), dim=-2).reshape(shape), w[e], rtol=0, atol=0)
    x = torch.randn(2, shape[1], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y = kernels.matmul(x, experts.expert(1))
    expected = x.double() @ w[1].double().T
    assert ((y.double() - expected).abs() <= 1e-5 * (x.double().abs() @ w[1].double().abs().T)).all()
    with pytest.raises(IndexError, match="expert 3 of a stack of 3"):
        experts.expert(3)
    first = experts.expert(0)
    assert experts.expert(0) is first
    floating = any(t.is_floating_point() for t in experts.stack.fields().values())  # Q4_K's d, Q3_K's scales
    experts.stack.to(torch.float64)  # changes floating fields in place: views of their old data would be stale
    assert (experts.expert(0) is first) != floating
    name, t = next(iter(experts.stack.fields().items()))
    experts.stack.register_parameter(name, torch.nn.Parameter(t.clone(), requires_grad=False))  # as .to(device)
    assert experts.expert(0).fields()[name].data_ptr() == experts.stack.fields()[name].data_ptr()


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_real_weights(model, m, request):
    gguf = GGUFFile(request.getfixturevalue(model))
    seen = set()
    for name, info in gguf.tensors.items():
        if (
            len(info.shape) == 2
            and info.ggml_type not in seen
            and info.ggml_type != GGMLType.F32
            and info.shape[0] < 5000
        ):
            seen.add(info.ggml_type)
            check_product(gguf.raw(name), info.ggml_type, tuple(info.shape), m)
    assert seen


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_a_gguf_with_mxfp4_matrices_runs_as_its_dequantized_weights(tmp_path, monkeypatch, fast):
    """A tiny llama whose FFN matrices are MXFP4 (model_helpers.write_mxfp4_llama), loaded by load_model: prefill
    and a decode step against the same model built from gguf-py's dequantized weights. Exact mode: the same
    float32 arithmetic, to test_model_tiny.py's tolerance. Default (fast) mode: bfloat16 prefill GEMMs and
    int8-rounded x in decode, ~1e-2 of the logits' scale (measured 4e-3; a wrong scale or nibble order is of
    order 1)."""
    from model_helpers import tiny_config, write_mxfp4_llama
    from pellucid.model.families import family_for
    from pellucid.model.loader import Weights, build_transformer, load_model

    monkeypatch.setattr(kernels, "_fast", fast and kernels.native.available())
    config = tiny_config("llama")
    held = write_mxfp4_llama(tmp_path / "tiny-mxfp4.gguf", config)
    model = load_model(tmp_path / "tiny-mxfp4.gguf", device="cpu")
    assert isinstance(model.blocks[0].mlp.up_proj.packed, MXFP4)
    reference = build_transformer(config, Weights.from_dict(held), family_for("llama").gguf_names).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = reference(tokens)
        cache = model.make_cache(capacity=16)
        prefill = model(tokens[:, :11], cache)
        step = model(tokens[:, 11:], cache)
    got = torch.cat((prefill, step), dim=1)
    if fast:
        assert (got - want).abs().max() <= 2e-2 * want.abs().max()
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)
