"""pellucid's torch dequantizers against gguf-py's numpy ones (a port of ggml's dequantize_row_*).

Tolerance: none. Both compute each weight in float32 with the same operations in the same order (the
order of ggml's C code), so every result must be bit-identical; comparisons use assert_close with
rtol=atol=0 (equal_nan only where the input bytes themselves encode NaN floats).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from pellucid.errors import UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.quant import dequant
from pellucid.quant.dequant import DECODERS, GroupQuant, dequantize, unpack
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType

SRC = Path(__file__).resolve().parents[1] / "src" / "pellucid"

# Byte offsets of the f16 scale fields in each block (ggml-common.h). Random bytes there could be NaN/Inf,
# which would hide every other bit of the block behind a NaN, so the tests put finite halves there.
F16_FIELDS = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
    GGMLType.IQ4_NL: (0,),
    GGMLType.IQ4_XS: (0,),
    GGMLType.MXFP4: (),  # its scale is an E8M0 exponent byte: every value is a finite power of two
}
QUANTIZED = list(F16_FIELDS)
# Formats gguf-py can also *quantize*, giving realistic blocks on top of random ones.
# The quantization step as a fraction of a block's largest |weight| (upper bounds for Q4_1/Q5_1, whose
# step is (max - min) / levels <= 2 absmax / levels).
STEP_OF_ABSMAX = {
    GGMLType.Q4_0: 1 / 8,
    GGMLType.Q4_1: 2 / 15,
    GGMLType.Q5_0: 1 / 16,
    GGMLType.Q5_1: 2 / 31,
    GGMLType.Q8_0: 1 / 127,
}
GGUF_PY_QUANTIZES = list(STEP_OF_ABSMAX)


def reference(raw: np.ndarray, ggml_type: GGMLType, shape) -> torch.Tensor:
    out = gguf_dequantize(raw, int(ggml_type))
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)


def assert_exact(got: torch.Tensor, want: torch.Tensor, equal_nan: bool = False) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=equal_nan)


def finite_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random half-precision bit patterns (zeros, subnormals, negatives, up to 65504), never Inf/NaN."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    all_ones_exponent = (bits & 0x7C00) == 0x7C00
    bits[all_ones_exponent] &= ~np.uint16(0x4000)
    return bits


def random_blocks(ggml_type: GGMLType, n_blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, int(ggml_type)])
    layout = BLOCK_LAYOUT[ggml_type]
    blocks = rng.integers(0, 256, (n_blocks, layout.type_size), dtype=np.uint8)
    for offset in F16_FIELDS[ggml_type]:
        blocks[:, offset : offset + 2] = finite_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if ggml_type == GGMLType.MXFP4:  # scales 2^-16..2^15 (as models have), so products stay finite and normal
        blocks[:, 0] = rng.integers(112, 144, n_blocks)  # test_mxfp4_every_exponent_... covers all 256 bytes
    return blocks.reshape(-1)


# -- random blocks: every bit pattern of the packed integers ---------------------------------------------------


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(ggml_type):
    layout = BLOCK_LAYOUT[ggml_type]
    n_blocks = 2000 if layout.block_size == 32 else 300
    raw = random_blocks(ggml_type, n_blocks)
    shape = (n_blocks * layout.block_size // 64, 64) if layout.block_size == 32 else (n_blocks, 256)
    assert_exact(dequantize(raw, ggml_type, shape), reference(raw, ggml_type, shape))


@pytest.mark.parametrize("ggml_type", GGUF_PY_QUANTIZES, ids=lambda t: t.name)
def test_quantized_random_weights_match_gguf_py(ggml_type):
    weights = np.random.default_rng(1).standard_normal((96, 256)).astype(np.float32)
    weights[3] = 0.0  # an all-zero block: scale 0
    raw = gguf_quantize(weights, int(ggml_type)).reshape(-1)
    got = dequantize(raw, ggml_type, weights.shape)
    assert_exact(got, reference(raw, ggml_type, weights.shape))
    # and it really is the weights: off by at most one quantization step of each block
    blocks = torch.from_numpy(weights).view(-1, 32)
    step = blocks.abs().amax(dim=1, keepdim=True) * STEP_OF_ABSMAX[ggml_type]
    assert ((got.view(-1, 32) - blocks).abs() <= step * 1.001).all()


def test_mxfp4_every_exponent_and_nibble_matches_gguf_py():
    """Every E8M0 byte 0-255 (2^-128 .. 2^126 halved: subnormal scales at 0 and 1, products that overflow to inf
    at the top) with every nibble 0-15 in each position, low and high."""
    nibbles = np.arange(16, dtype=np.uint8)
    qs = np.stack([nibbles | (np.roll(nibbles, s) << 4) for s in range(16)])  # (16, 16): each pair of nibbles
    blocks = np.zeros((256, 16, 17), np.uint8)
    blocks[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    blocks[:, :, 1:] = qs
    raw = blocks.reshape(-1)
    with np.errstate(over="ignore"):  # e = 254, 255 times the largest levels overflow float32, in both
        want = reference(raw, GGMLType.MXFP4, (256 * 16, 32))
    got = dequantize(raw, GGMLType.MXFP4, (256 * 16, 32))
    assert_exact(got, want)
    assert torch.isinf(got).any() and (got[:16] != 0).any()  # both ends of the exponent range were reached
    groups = unpack(raw, GGMLType.MXFP4, (256 * 16, 32))  # int8 levels and a power-of-two scale per block
    assert groups.q.dtype == torch.int8 and groups.mins is None
    assert_exact(groups.dequantize(), want)


def test_float_formats_match_gguf_py():
    rng = np.random.default_rng(2)
    f32 = rng.standard_normal(4096).astype(np.float32)
    f32[:4] = [0.0, -0.0, np.inf, np.nan]
    assert_exact(dequantize(f32.view(np.uint8), GGMLType.F32, (64, 64)), torch.from_numpy(f32).view(64, 64), True)
    f16 = rng.integers(0, 1 << 16, 4096, dtype=np.uint16).view(np.uint8)  # includes Inf/NaN patterns
    assert_exact(dequantize(f16, GGMLType.F16, (4096,)), reference(f16, GGMLType.F16, (4096,)), equal_nan=True)
    bf16 = rng.integers(0, 1 << 16, 4096, dtype=np.uint16).view(np.uint8)
    assert_exact(dequantize(bf16, GGMLType.BF16, (4096,)), reference(bf16, GGMLType.BF16, (4096,)), equal_nan=True)
    f64 = rng.standard_normal(100)
    assert_exact(dequantize(f64.view(np.uint8), GGMLType.F64, (100,)), torch.from_numpy(f64.astype(np.float32)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("ggml_type", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_half_outputs_are_the_float32_result_rounded_once(ggml_type, dtype):
    raw = random_blocks(ggml_type, 64)
    shape = (64 * BLOCK_LAYOUT[ggml_type].block_size,)
    want = reference(raw, ggml_type, shape)
    # keep values inside float16 range so the comparison is about rounding, not overflow
    if dtype == torch.float16 and want.abs().max() > 60000:
        raw = raw.reshape(64, -1)
        for offset in F16_FIELDS[ggml_type]:
            raw[:, offset : offset + 2] = np.full((64, 1), 0.001, np.float16).view(np.uint8)
        raw = raw.reshape(-1)
        want = reference(raw, ggml_type, shape)
    assert_exact(dequantize(raw, ggml_type, shape, dtype=dtype), want.to(dtype))


def test_chunk_boundaries(monkeypatch):
    """The CPU path decodes in chunks; a chunk size that does not divide the block count changes nothing."""
    raw = random_blocks(GGMLType.Q5_K, 37)
    want = dequantize(raw, GGMLType.Q5_K, (37, 256))
    monkeypatch.setattr(dequant, "CPU_CHUNK_WEIGHTS", 5 * 256)
    assert_exact(dequantize(raw, GGMLType.Q5_K, (37, 256)), want)
    monkeypatch.setattr(dequant, "CPU_CHUNK_WEIGHTS", 1)  # one block per step still works
    assert_exact(dequantize(raw, GGMLType.Q5_K, (37, 256)), want)


# -- inputs, devices, errors ------------------------------------------------------------------------------------


def test_raw_may_be_a_torch_tensor_or_a_read_only_array():
    raw = random_blocks(GGMLType.Q4_K, 8)
    want = reference(raw, GGMLType.Q4_K, (8, 256))
    assert_exact(dequantize(torch.from_numpy(raw.copy()), GGMLType.Q4_K, (8, 256)), want)
    read_only = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    assert not read_only.flags.writeable
    assert_exact(dequantize(read_only, GGMLType.Q4_K, (8, 256), device="cpu"), want)
    assert_exact(dequantize(raw, int(GGMLType.Q4_K), (8, 256)), want)  # a plain int type works too


def test_result_never_aliases_the_input():
    f32 = np.arange(64, dtype=np.float32)
    out = dequantize(f32.view(np.uint8), GGMLType.F32, (64,))
    out += 1
    assert f32[0] == 0.0


@pytest.mark.parametrize("ggml_type", list(DECODERS), ids=lambda t: t.name)
def test_decoders_stay_on_the_input_device(ggml_type):
    """Run on the data-less "meta" device: a CPU constant created inside a decoder (a shift table, the IQ4
    levels) would raise "Tensor on device cpu is not on the expected device meta", as it would on CUDA."""
    layout = BLOCK_LAYOUT[ggml_type]
    raw = torch.empty(4 * layout.type_size, dtype=torch.uint8, device="meta")
    out = dequantize(raw, ggml_type, (4, layout.block_size), dtype=torch.bfloat16)
    assert out.device.type == "meta" and out.shape == (4, layout.block_size) and out.dtype == torch.bfloat16
    if ggml_type in dequant.UNPACKERS:
        groups = unpack(raw, ggml_type, (4, layout.block_size))
        assert groups.q.device.type == groups.scales.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_cuda_matches_cpu(ggml_type):
    raw = random_blocks(ggml_type, 256)
    shape = (256 * BLOCK_LAYOUT[ggml_type].block_size,)
    got = dequantize(raw, ggml_type, shape, device="cuda")
    assert got.device.type == "cuda"
    assert_exact(got.cpu(), reference(raw, ggml_type, shape))
    on_device = torch.from_numpy(raw).cuda()
    assert_exact(dequantize(on_device, ggml_type, shape).cpu(), reference(raw, ggml_type, shape))


@pytest.mark.parametrize("ggml_type", [GGMLType.IQ2_XXS, GGMLType.Q8_K, GGMLType.TQ1_0, GGMLType.I32])
def test_unsupported_types_name_themselves(ggml_type):
    layout = BLOCK_LAYOUT[ggml_type]
    raw = np.zeros(layout.type_size, np.uint8)
    with pytest.raises(UnsupportedError, match=rf"\b{ggml_type.name}\b.*Q4_K_M"):
        dequantize(raw, ggml_type, (layout.block_size,))


def test_unknown_type_number():
    with pytest.raises(UnsupportedError, match="type 99"):
        dequantize(np.zeros(4, np.uint8), 99, (1,))


def test_wrong_sizes_are_reported():
    with pytest.raises(ValueError, match="whole blocks of 32"):
        dequantize(np.zeros(34, np.uint8), GGMLType.Q8_0, (31,))
    with pytest.raises(ValueError, match="takes 68 bytes, got 34"):
        dequantize(np.zeros(34, np.uint8), GGMLType.Q8_0, (2, 32))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(np.zeros(34, np.int8), GGMLType.Q8_0, (32,))


def test_every_block_function_describes_its_whole_block():
    """`_fields` asserts the field sizes add up to type_size; decoding one block of each runs that check."""
    for ggml_type in DECODERS:
        layout = BLOCK_LAYOUT[ggml_type]
        out = dequantize(np.zeros(layout.type_size, np.uint8), ggml_type, (layout.block_size,))
        assert out.shape == (layout.block_size,)


def test_src_reads_models_without_gguf_py():
    """gguf-py is a test oracle for reading; only `pellucid quantize` uses it, to write files through its writer."""
    pattern = re.compile(r"^\s*(import gguf\b|from gguf\b)", re.MULTILINE)
    writers = {"quantize_file.py", "hf_source.py"}
    offenders = [p.name for p in SRC.rglob("*.py") if pattern.search(p.read_text()) and p.name not in writers]
    assert offenders == []


# -- unpack: integers + per-group scales and mins ---------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_1, GGMLType.Q4_K, GGMLType.Q8_0], ids=lambda t: t.name)
def test_unpack_reproduces_dequantize_exactly(ggml_type):
    raw = random_blocks(ggml_type, 40)
    shape = (20, 2 * BLOCK_LAYOUT[ggml_type].block_size)
    groups = unpack(raw, ggml_type, shape)
    assert isinstance(groups, GroupQuant)
    assert groups.q.shape == shape and groups.scales.shape == (20, shape[1] // 32)
    if ggml_type == GGMLType.Q8_0:
        assert groups.q.dtype == torch.int8 and groups.mins is None
    else:
        assert groups.q.dtype == torch.uint8 and int(groups.q.max()) <= 15
        assert groups.mins.shape == groups.scales.shape
    assert_exact(groups.dequantize(), reference(raw, ggml_type, shape))


def test_unpack_q4_0_is_within_one_rounding():
    raw = random_blocks(GGMLType.Q4_0, 64)
    groups = unpack(raw, GGMLType.Q4_0, (32, 64))
    want = reference(raw, GGMLType.Q4_0, (32, 64))
    assert int(groups.q.max()) <= 15 and torch.equal(groups.mins, -8 * groups.scales)
    # q*d + (-8d) rounds twice where ggml's d*(q-8) rounds once: at most 1 ulp of the largest term, 8|d|
    ulp = torch.finfo(torch.float32).eps * 8 * groups.scales.abs().repeat_interleave(32, dim=1)
    assert ((groups.dequantize() - want).abs() <= ulp).all()


def test_unpack_refuses_other_formats():
    with pytest.raises(UnsupportedError, match="dequantize\\(\\) for F16"):
        unpack(np.zeros(64, dtype=np.uint8), GGMLType.F16, (32,))


# -- real tensors from the default models ---------------------------------------------------------------------


def _real_tensors(path: Path, per_type: int, max_rows: int):
    """(name, type, rows-slice raw bytes, shape) for the first `per_type` tensors of each type in the file."""
    with GGUFFile(path) as g:
        counts: dict[GGMLType, int] = {}
        for info in g.tensors.values():
            if counts.get(info.ggml_type, 0) >= per_type:
                continue
            counts[info.ggml_type] = counts.get(info.ggml_type, 0) + 1
            rows = min(info.shape[0], max_rows) if len(info.shape) > 1 else 1
            shape = (rows, *info.shape[1:]) if len(info.shape) > 1 else info.shape
            n_bytes = info.n_bytes * rows // info.shape[0] if len(info.shape) > 1 else info.n_bytes
            yield info.name, info.ggml_type, g.raw(info.name)[:n_bytes].copy(), shape
    assert counts, f"{path} has no tensors"


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_real_tensors_match_gguf_py(model, request):
    seen = set()
    for name, ggml_type, raw, shape in _real_tensors(request.getfixturevalue(model), per_type=3, max_rows=256):
        seen.add(ggml_type)
        got = dequantize(raw, ggml_type, shape)
        assert torch.isfinite(got).all(), name
        assert_exact(got, reference(raw, ggml_type, shape))
    expected = {
        "smollm2_path": {GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F32},
        "gemma3_path": {GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F32},
    }[model]
    assert seen == expected


def test_gguf_file_tensor_uses_these_decoders(gemma3_path):
    with GGUFFile(gemma3_path) as g:
        info = next(t for t in g.tensors.values() if t.ggml_type == GGMLType.Q6_K)
        got = g.tensor(info.name, dtype=torch.bfloat16)
        assert got.shape == info.shape and got.dtype == torch.bfloat16
        assert_exact(got, reference(g.raw(info.name), info.ggml_type, info.shape).to(torch.bfloat16))


def test_big_embedding_decodes_fast(gemma3_path):
    """Gemma's 262144 x 640 Q8_0 embedding (671 MB as float32) is the bulk of model load.

    ~0.3 s on one core, not much more than allocating and zeroing the output. It runs on one thread
    because this suite shares 2 cores with other work, and torch's intra-op threads stall on a busy
    machine (seconds, for any op); the bound is loose, but a per-block Python loop (minutes) fails it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with GGUFFile(gemma3_path) as g:
            info = g.tensors["token_embd.weight"]
            raw = g.raw(info.name)
            start = time.perf_counter()
            out = dequantize(raw, info.ggml_type, info.shape, dtype=torch.bfloat16)
            elapsed = time.perf_counter() - start
            assert out.shape == (262144, 640)
            want = reference(raw[-100 * 680 :], info.ggml_type, (100, 640)).to(torch.bfloat16)
            assert_exact(out[-100:], want)
    finally:
        torch.set_num_threads(threads)
    assert elapsed < 3.0, f"dequantizing token_embd took {elapsed:.2f} s"
