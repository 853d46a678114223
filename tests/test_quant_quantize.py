"""pellucid's quantizers (quant/quantize.py) against llama.cpp's reference quantizers, byte for byte.

Oracles:
- llama.cpp's C (`ggml_quantize_chunk` without an importance matrix, what `llama-quantize` runs), recorded by
  tests/fixtures/quantize/make_reference.py as sha256 hashes of its bytes on matrices the test rebuilds from
  seeds (normal, bfloat16-rounded, heavy-tailed, rounding ties, and 24 awkward blocks: zeros of both signs,
  outliers, one-signed and constant blocks, float16 underflow and overflow of the scales, float32
  subnormals, |max| ties). Tolerance: none, every byte of every block.
- gguf-py's numpy quantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4), run live. Tolerance: none.
- For the round trip, `dequantize()` (checked against gguf-py in test_quant_dequant.py) and the matmul kernels.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.quant import kernels
from pellucid.quant import quantize as quantize_module
from pellucid.quant.dequant import dequantize
from pellucid.quant.packed import PackedWeight
from pellucid.quant.quantize import QUANTIZERS, quantize, quantize_to_packed
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quantize"
_spec = importlib.util.spec_from_file_location("make_reference", FIXTURES / "make_reference.py")
make_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference)

REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CASES = {case["name"]: case for case in REFERENCE["cases"]}
TYPES = list(QUANTIZERS)
GGUF_PY = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.MXFP4]
NAME = lambda t: t.name  # noqa: E731 - test ids


def case_matrix(name: str) -> np.ndarray:
    case = CASES[name]
    x = make_reference.matrix(case["kind"], case["seed"], case["shape"])
    assert make_reference.sha256(x) == case["input_sha256"], (
        f"numpy {np.__version__} built a different '{name}' matrix than numpy {REFERENCE['numpy']} did for "
        f"reference.json: rerun tests/fixtures/quantize/make_reference.py where llama.cpp is installed"
    )
    return x


def test_the_fixture_describes_our_types():
    assert set(make_reference.TYPES) == {t.name for t in TYPES}
    for name, (ggml_type, block_size, type_size) in make_reference.TYPES.items():
        layout = BLOCK_LAYOUT[GGMLType[name]]
        assert (GGMLType[name], layout.block_size, layout.type_size) == (ggml_type, block_size, type_size)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ggml_type", TYPES, ids=NAME)
def test_matches_llama_cpp(ggml_type, case):
    ours = quantize(torch.from_numpy(case_matrix(case)), ggml_type).numpy()
    expected = CASES[case]["types"][ggml_type.name]
    if make_reference.sha256(ours) != expected["sha256"]:
        rows = make_reference.row_hashes(ours)
        differ = [i for i in range(len(rows) // 8) if rows[8 * i : 8 * i + 8] != expected["rows"][8 * i : 8 * i + 8]]
        pytest.fail(f"{ggml_type.name} bytes differ from llama.cpp's in rows {differ} of '{case}'")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ggml_type", GGUF_PY, ids=NAME)
def test_matches_gguf_py(ggml_type, case):
    # Where a block's largest |x| (Q4_0, Q5_0) or its min (Q4_1, Q5_1) is a zero, gguf-py and llama.cpp pick
    # zeros of different signs (llama.cpp: +0.0, or the first zero), and d or m differs in the sign bit. Adding
    # 0.0 makes every zero +0.0 (llama.cpp's bytes for the signed zeros are checked above).
    x = case_matrix(case) + np.float32(0.0)
    with np.errstate(all="ignore"):  # the subnormal blocks overflow 1 / d (to inf, as in the C)
        expected = gguf_quantize(x, GGMLQuantizationType(int(ggml_type)))
    ours = quantize(torch.from_numpy(x), ggml_type).numpy()
    np.testing.assert_array_equal(ours, expected)


# Relative RMS error of a N(0, 1) matrix quantized and dequantized. A uniform quantizer with step D errs by
# D / sqrt(12) in RMS. Over 32 normals E max|x| ~ 2.3 and E (max - min) ~ 4.1; over 16, E max|x| ~ 2.0. So
# Q8_0: D = 2.3 / 127 -> 0.0052; Q4_0: 2.3 / 8 -> 0.083; Q5_0: 2.3 / 16 -> 0.042; Q4_1: 4.1 / 15 -> 0.079;
# Q5_1: 4.1 / 31 -> 0.038; Q6_K: 2.0 / 32 -> 0.018; Q4_K and Q5_K as Q4_1 and Q5_1 (their searched step and
# min do a little better, their 6-bit scales a little worse). Measured: 0.0053, 0.086, 0.043, 0.078, 0.038,
# 0.018, 0.072, 0.036. MXFP4: the scale s = 2^(floor(log2 max|x|) - 2) is 0.5 for most blocks (max|x| in [2, 4)),
# so the levels are 0.25 apart below 1, 0.5 up to 2 and 1 up to 3: 68%, 27% and 4.5% of the weights, MSE
# 0.68 0.25^2 / 12 + 0.27 0.5^2 / 12 + 0.045 / 12 -> RMS 0.113; measured 0.115. The bounds are the estimates
# plus 15%.
ROUND_TRIP_RMS = {
    GGMLType.Q8_0: 0.0060,
    GGMLType.Q4_0: 0.095,
    GGMLType.Q5_0: 0.048,
    GGMLType.Q4_1: 0.091,
    GGMLType.Q5_1: 0.044,
    GGMLType.Q6_K: 0.021,
    GGMLType.Q4_K: 0.091,
    GGMLType.Q5_K: 0.044,
    GGMLType.MXFP4: 0.13,
}


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAME)
def test_round_trip_error(ggml_type):
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    raw = quantize(w, ggml_type)
    back = dequantize(raw, ggml_type, tuple(w.shape))
    rms = ((back - w).pow(2).mean() / w.pow(2).mean()).sqrt().item()
    assert rms < ROUND_TRIP_RMS[ggml_type]
    assert rms > ROUND_TRIP_RMS[ggml_type] / 2  # not suspiciously exact either: the bound is the format's


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAME)
def test_packed_product(ggml_type, monkeypatch):
    """`quantize_to_packed` gives a PackedWeight whose products are x @ dequantize(bytes).T, within
    test_quant_kernels.py's tolerance (1e-5 of sum |x| |w|: float32 rounding in another summation order).

    The kernels run eagerly (the same expressions; test_quant_kernels.py checks the compiled ones), so that
    this test does not spend ~5 s per format compiling them."""
    monkeypatch.setattr(kernels, "compile_enabled", lambda: False)
    monkeypatch.setattr(kernels, "_fast", False)
    w = torch.randn(24, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    packed = quantize_to_packed(w, ggml_type)
    assert isinstance(packed, PackedWeight) and packed.shape == (24, 512) and packed.ggml_type == ggml_type
    w_q = dequantize(quantize(w, ggml_type), ggml_type, (24, 512)).double()
    for m in (1, kernels.GEMV_MAX_ROWS + 1):  # the packed product and the unpack + GEMM one
        x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m))
        y = kernels.matmul(x, packed).double()
        assert ((y - x.double() @ w_q.T).abs() <= 1e-5 * (x.double().abs() @ w_q.abs().T)).all()


def test_float16_and_bfloat16_inputs_quantize_as_their_float32_values():
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float16, torch.bfloat16):
        low = w.to(dtype)
        assert torch.equal(quantize(low, GGMLType.Q4_K), quantize(low.float(), GGMLType.Q4_K))


def test_chunks_do_not_change_the_bytes(monkeypatch):
    """Rows are quantized a chunk of blocks at a time; a chunk boundary inside a row changes nothing."""
    x = torch.from_numpy(case_matrix("awkward"))
    whole = {t: quantize(x, t) for t in (GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q6_K)}
    monkeypatch.setattr(quantize_module, "CHUNK_WEIGHTS", 3 * 256)
    for t, expected in whole.items():
        assert torch.equal(quantize(x, t), expected), t.name


def test_rows_not_whole_blocks_are_refused_with_what_to_do():
    with pytest.raises(UnsupportedError, match="2880 weights.*blocks of 256.*original precision.*Q5_0"):
        quantize(torch.zeros(4, 2880), GGMLType.Q4_K)
    with pytest.raises(UnsupportedError, match="original precision$"):
        quantize(torch.zeros(4, 200), GGMLType.Q6_K)  # not whole 32-weight blocks either: llama.cpp uses F16
    with pytest.raises(UnsupportedError, match="blocks of 32"):
        quantize(torch.zeros(4, 48), GGMLType.Q8_0)
    assert quantize(torch.zeros(4, 2880), GGMLType.Q8_0).shape == (4, 2880 // 32 * 34)  # 2880 = 90 x 32


def test_unsupported_types_are_refused():
    for ggml_type in (GGMLType.Q2_K, GGMLType.IQ4_XS, GGMLType.F16, 99):
        with pytest.raises(UnsupportedError, match="Q8_0, Q4_0"):
            quantize(torch.zeros(4, 256), ggml_type)


def test_bad_input_is_refused():
    w = torch.zeros(4, 256)
    w[2, 100] = float("nan")
    with pytest.raises(ModelFileError, match="row 2, column 100"):
        quantize(w, GGMLType.Q4_K)
    with pytest.raises(ValueError, match="matrix"):
        quantize(torch.zeros(256), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="float"):
        quantize(torch.zeros(4, 256, dtype=torch.int32), GGMLType.Q8_0)
