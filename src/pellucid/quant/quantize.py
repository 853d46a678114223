"""Quantize float matrices into GGUF block formats, byte for byte what llama.cpp's reference quantizers write.

`quantize(weights, ggml_type)` turns an (N, K) float matrix into the bytes of N rows of blocks, the layout a
GGUF file stores and `packed.pack()` / `dequant.dequantize()` read. It reproduces the functions `llama-quantize`
runs when no importance matrix is given (ggml-quants.c): `quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`,
`quantize_row_q4_1_ref`, `quantize_row_q5_0_ref`, `quantize_row_q5_1_ref`, `quantize_row_mxfp4_ref`, and for the K-quants
`quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` (`make_qkx2_quants`) and `quantize_row_q6_K_ref`
(`make_qx_quants`). tests/test_quant_quantize.py checks the bytes against gguf-py and against llama.cpp's C code.

Bit-exactness means doing what the C does, in float32, in the same order:

- `nearest_int` is the 1.5 * 2^23 trick (round half to even), `roundf` (Q8_0) rounds half away from zero and
  `(int8_t)(v + 8.5f)` (Q4_0, Q5_0) truncates; each has its own helper below.
- The C loops add a block's 16 or 32 terms one after another. torch's `sum()` adds in another order (and
  `cumsum` in float64), so `_sum_in_order` adds element 0, then 1, ... as 31 vectorized adds over every block.
- Constants the C computes in float32 (`rmin + rdelta*is + nmax`) are computed in numpy float32; `c / tensor`
  is written `torch.full_like(tensor, c) / tensor`, since Python's `c / tensor` multiplies by the reciprocal.
- torch's float32 `sqrt` is not correctly rounded on AVX512 CPUs (1 ulp off for ~17% of inputs); `sqrtf` is,
  and so is float64 sqrt rounded to float32, which `_sqrtf` uses.
- llama.cpp's `min` in `make_qkx2_quants` moves when the search finds a better fit, and the next candidate
  scales are measured from the new min; the search below does the same.

Everything is vectorized over all blocks of a chunk of rows (the per-block loops of 16-32 become vectorized
ops over the blocks), so the code runs on any device. Speed (1.4x llama.cpp's C for Q4_K): see `quantize`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.quant.dequant import MXFP4_LEVELS, e8m0_to_fp32_half
from pellucid.quant.packed import PackedWeight, pack
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType

GROUP_MAX_EPS = float(np.float32(1e-15))  # ggml-quants.c's 1e-15f: a group whose largest |x| is below it is zero

# Weights quantized per step. Small steps pay the per-op overhead of the K-quant searches' thousands of small
# ops; large ones spill their temporaries (a dozen float32 copies of the step) out of cache. One thread of a
# 2-core EPYC, 2048 x 8192 Q4_K: 64K weights per step 2.6 s, 128K 1.9 s, 256K 1.8 s, 512K 2.0 s, 1M 2.7 s.
CHUNK_WEIGHTS = 1 << 18

# What llama-quantize uses for a matrix whose rows are not whole 256-weight blocks (tensor_type_fallback in
# llama-quant.cpp), and F16 where rows are not whole 32-weight blocks either.
LLAMA_CPP_FALLBACK = {GGMLType.Q4_K: GGMLType.Q5_0, GGMLType.Q5_K: GGMLType.Q5_1, GGMLType.Q6_K: GGMLType.Q8_0}


def type_for_rows(target: GGMLType, k: int) -> GGMLType | None:
    """The type a matrix with rows of `k` weights gets when `target` is asked for: `target` itself, else
    llama-quantize's fallback when its blocks fit, else None (keep the matrix in its original precision)."""
    for candidate in (target, LLAMA_CPP_FALLBACK.get(target)):
        if candidate is not None and k % BLOCK_LAYOUT[candidate].block_size == 0:
            return candidate
    return None


Quantizer = Callable[[torch.Tensor], torch.Tensor]  # (n_blocks, block_size) f32 -> (n_blocks, type_size) u8


# -- the public entry points ------------------------------------------------------------------------------


def quantize(weights: torch.Tensor, ggml_type: GGMLType | int) -> torch.Tensor:
    """The (N, K) float matrix `weights` as `ggml_type` blocks: a (N, K // block_size * type_size) uint8 tensor.

    Each row is K / block_size blocks (32 weights for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4; 256 for Q4_K, Q5_K,
    Q6_K), the bytes llama.cpp's `llama-quantize` writes without an importance matrix; pass them to
    `packed.pack(bytes, ggml_type, (N, K))` or write them to a GGUF file. The input may be float32, float16
    or bfloat16 (converted to float32 exactly first, as llama.cpp does) on any device; the bytes land there.

    Raises `UnsupportedError` for a type without a quantizer here and for K not a multiple of the type's
    block size: a loader should catch it and keep that matrix in its original dtype (llama-quantize falls
    back to `LLAMA_CPP_FALLBACK[type]`, whose blocks are 32 weights, and to F16 when K is not a multiple of
    32 either). Raises `ModelFileError` if a weight is NaN or infinite (llama.cpp would write garbage).

    Speed, 2048 x 8192 float32 on one thread of a 2-core EPYC (torch 2.13): Q8_0 0.22 s, Q4_0 0.20 s, Q4_1
    0.27 s, Q5_0 0.25 s, Q5_1 0.27 s, Q4_K 1.5 s, Q5_K 1.2 s, Q6_K 0.9 s (llama.cpp's C: 0.06, 0.02, 0.02,
    0.03, 0.03, 1.1, 0.9, 0.5 s). Two threads: Q4_K 1.2 s, if nothing else runs; on cores busy with other
    work torch's threads stall each other at every op (Q6_K took 5 s), and `torch.set_num_threads(1)` wins.
    MXFP4 (a search of 8 levels per weight) took 2.3 s where Q4_0 took 0.8 s, measured on a busier machine.
    """
    ggml_type = _check_type(ggml_type)
    if weights.dim() != 2 or not weights.is_floating_point():
        raise ValueError(
            f"quantize() takes a float matrix (out_features, in_features), got {weights.dtype} "
            f"of shape {tuple(weights.shape)}"
        )
    n, k = weights.shape
    layout = BLOCK_LAYOUT[ggml_type]
    if k % layout.block_size:
        fallback = LLAMA_CPP_FALLBACK.get(ggml_type)
        instead = f", or quantize it to {fallback.name} as llama-quantize does" if fallback and k % 32 == 0 else ""
        raise UnsupportedError(
            f"cannot quantize a {n} x {k} matrix to {ggml_type.name}: its rows ({k} weights) are not whole "
            f"blocks of {layout.block_size}; keep it in its original precision{instead}"
        )
    blocks = weights.reshape(-1, layout.block_size)
    out = torch.empty((blocks.shape[0], layout.type_size), dtype=torch.uint8, device=weights.device)
    step = max(1, CHUNK_WEIGHTS // layout.block_size)
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start : start + step].float()
        _check_finite(chunk, start * layout.block_size, k)
        out[start : start + step] = QUANTIZERS[ggml_type](chunk)
    return out.view(n, -1)


def quantize_to_packed(weights: torch.Tensor, ggml_type: GGMLType | int) -> PackedWeight:
    """`weights` (N, K) quantized (see `quantize`, whose errors it raises) and packed for the matmul kernels."""
    raw = quantize(weights, ggml_type)
    return pack(raw, GGMLType(ggml_type), tuple(weights.shape))


def _check_type(ggml_type: GGMLType | int) -> GGMLType:
    supported = ", ".join(t.name for t in QUANTIZERS)
    try:
        ggml_type = GGMLType(ggml_type)
    except ValueError:
        raise UnsupportedError(f"ggml type {int(ggml_type)} is unknown; pellucid quantizes to {supported}") from None
    if ggml_type not in QUANTIZERS:
        raise UnsupportedError(f"pellucid cannot quantize to {ggml_type.name}; pick one of {supported}")
    return ggml_type


def _check_finite(chunk: torch.Tensor, first_weight: int, k: int) -> None:
    bad = ~torch.isfinite(chunk)
    if bad.any():
        at = first_weight + int(bad.flatten().nonzero()[0])
        raise ModelFileError(
            f"cannot quantize a matrix holding {chunk.flatten()[at - first_weight].item()} at row {at // k}, "
            f"column {at % k}: the checkpoint is damaged; re-download it, or load it without quantizing"
        )


# -- float32 arithmetic as ggml's C does it ------------------------------------------------------------------


def _nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int: add 1.5 * 2^23 in float32 and read the integer off the mantissa (int32).

    Round half to even for |v| < 2^22; beyond (and for inf and NaN) the same garbage as the C.
    """
    return ((v + 12582912.0).view(torch.int32) & 0x7FFFFF) - 0x400000


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C's roundf: half away from zero (torch.round goes to even). v - trunc(v) is exact in float32."""
    t = torch.trunc(v)
    return t + torch.where((v - t).abs() >= 0.5, torch.sign(v), 0.0)


def _sqrtf(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (sqrtf): through float64, which rounds the same for sqrt."""
    return v.double().sqrt().float()


def _div(c: float, t: torch.Tensor) -> torch.Tensor:
    """The float32 quotient c / t (Python's `c / t` is `t.reciprocal() * c`, rounded twice)."""
    return torch.full_like(t, c) / t


def _f32(x: float) -> float:
    """x rounded to float32 and back, for constants the C computes in float (0.1f * is, ...)."""
    return float(np.float32(x))


def _sum_in_order(terms: torch.Tensor, from_zero: bool = True) -> torch.Tensor:
    """terms[0] + terms[1] + ... in float32, left to right, as a C loop `sum += term` does: (n, ...) -> (...).

    `from_zero` starts at 0.0f like `float sum = 0`; it matters only for the sign of a zero sum.
    """
    acc = terms[0] + 0.0 if from_zero else terms[0].clone()
    for term in terms[1:]:
        acc += term
    return acc


def _first_absmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest |x| along `dim` and the signed value holding it (the first one on a tie, +0.0 if all are
    zero), as the C loop `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` finds them."""
    ax = x.abs()
    amax, idx = ax.max(dim=dim, keepdim=True)  # ties: the first index
    signed = torch.gather(x, dim, idx)
    signed = torch.where(amax == 0, 0.0, signed)  # the C's max starts at +0.0 and an all-zero group keeps it
    return amax.squeeze(dim), signed.squeeze(dim)


def _first_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's min and max as the C's `if (v < min) min = v` loop finds them: among equal values (a +0.0
    and a -0.0) the first, whose sign reaches the file through Q4_1's stored min."""
    lo = torch.gather(x, 1, x.argmin(dim=1, keepdim=True)).squeeze(1)  # argmin: the first on a tie
    hi = torch.gather(x, 1, x.argmax(dim=1, keepdim=True)).squeeze(1)
    return lo, hi


def _half_bytes(v: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 (round to nearest even, as torch's .half()) of a (n,) tensor, as (n, 2) bytes."""
    return v.half().view(torch.uint8).view(-1, 2)


# -- legacy block formats: 32 weights, one scale (and min) each ------------------------------------------------


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    # block_q8_0 { f16 d; i8 qs[32]; }  d = amax / 127, q = roundf(x * (1 / d))
    d = x.abs().amax(dim=1) / 127.0
    inv_d = torch.where(d != 0, _div(1.0, d), 0.0)  # the quants use 1/d, not the float16-rounded d
    qs = _c_byte(_roundf(x * inv_d.unsqueeze(1)))  # the int8_t's byte
    return torch.cat((_half_bytes(d), qs.to(torch.uint8)), dim=1)


def _q4_0(x: torch.Tensor) -> torch.Tensor:
    # block_q4_0 { f16 d; u8 qs[16]; }  d = (the value of largest |x|) / -8, q = (int8_t)(x * (1 / d) + 8.5f)
    _, signed_max = _first_absmax(x, dim=1)
    d = signed_max / -8.0
    q = _truncated_levels(x, d, offset=8.5, top=15)
    return torch.cat((_half_bytes(d), _nibbles(q)), dim=1)


def _q4_1(x: torch.Tensor) -> torch.Tensor:
    # block_q4_1 { f16 d; f16 m; u8 qs[16]; }  d = (max - min) / 15, m = min, q = (int8_t)((x - m) * (1 / d) + .5f)
    lo, hi = _first_min_max(x)
    d = (hi - lo) / 15.0
    q = _truncated_levels(x - lo.unsqueeze(1), d, offset=0.5, top=15)
    return torch.cat((_half_bytes(d), _half_bytes(lo), _nibbles(q)), dim=1)


def _q5_0(x: torch.Tensor) -> torch.Tensor:
    # block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }  as Q4_0 with d = max / -16; bit j of qh: 5th bit of weight j
    _, signed_max = _first_absmax(x, dim=1)
    d = signed_max / -16.0
    q = _truncated_levels(x, d, offset=16.5, top=31)
    return torch.cat((_half_bytes(d), _fifth_bits(q), _nibbles(q & 15)), dim=1)


def _q5_1(x: torch.Tensor) -> torch.Tensor:
    # block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }  as Q4_1 with d = (max - min) / 31
    lo, hi = _first_min_max(x)
    d = (hi - lo) / 31.0
    q = _truncated_levels(x - lo.unsqueeze(1), d, offset=0.5, top=None)
    return torch.cat((_half_bytes(d), _half_bytes(lo), _fifth_bits(q), _nibbles(q & 15)), dim=1)


def _truncated_levels(x: torch.Tensor, d: torch.Tensor, offset: float, top: int | None) -> torch.Tensor:
    """MIN(top, (int8_t)(x * id + offset)) with id = d ? 1.0f/d : 0.0f, as uint8_t: int64 (n, 32) in 0..255.

    x * id + offset lies in [0, top + 1.5] unless 1/d overflowed (d subnormal): then it is +-inf or NaN and
    x86-64 converts it to 0 (see `_c_byte`). `top=None`: the C's `(uint8_t)(...)` without a MIN (Q5_1).
    """
    inv_d = torch.where(d != 0, _div(1.0, d), 0.0).unsqueeze(1)
    q = _c_byte(x * inv_d + offset)
    if top is None:
        return q
    return torch.where(q >= 128, q - 256, q).clamp_(max=top) & 255  # MIN compares the int8_t


def _c_byte(v: torch.Tensor) -> torch.Tensor:
    """A float's conversion to int8_t / uint8_t as x86-64 builds of the C do it: truncate to int32 (cvttss2si
    gives INT_MIN for NaN and out-of-range values, so 0 here) and keep the low byte; int64 in 0..255.

    In C an out-of-range conversion is undefined; it happens only for blocks of float32 subnormals, and there
    an ARM build of llama.cpp writes other bytes (its conversion saturates).
    """
    t = torch.where(v.abs() < 2.0**31, torch.trunc(v), -(2.0**31))  # NaN fails the comparison
    return t.to(torch.int64) & 255


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) values 0-15 -> (n, 16) bytes: weight j in the low nibble of byte j, weight 16 + j in the high."""
    return (q[:, :16] | (q[:, 16:] << 4)).to(torch.uint8)


def _fifth_bits(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) values 0-31 -> (n, 4) bytes of the little-endian u32 whose bit j is bit 4 of weight j."""
    bits = ((q >> 4) & 1).view(-1, 4, 8)
    return (bits << torch.arange(8, dtype=torch.int32, device=q.device)).sum(dim=2).to(torch.uint8)


def _mxfp4(x: torch.Tensor) -> torch.Tensor:
    # block_mxfp4 { u8 e; u8 qs[16]; }  e = floorf(log2f(amax)) - 2 + 127, so amax / scale lands in [4, 8) and
    # the largest level (12, i.e. 6.0 doubled) covers it; each weight takes the nearest level (the first on ties)
    amax = x.abs().amax(dim=1)
    # log2f, correctly rounded to float32, then floor: through float64 (float32 log2 rounds 2^k - ulp up to k);
    # a negative exponent (amax below 2^-125) wraps to a byte as the C's (uint8_t) cast does on x86-64
    exponent = torch.log2(amax.double()).float().floor() - 2 + 127
    e = torch.where(amax > 0, torch.where(torch.isfinite(exponent), exponent, 0.0).to(torch.int64) & 255, 0)
    d = e8m0_to_fp32_half(e.to(torch.uint8))
    # best_index_mxfp4 tries all 16 levels, keeping the first of equal errors |L d - x|. The levels of x's sign
    # always win (|-L d - x| = |L d - |x|| exactly), so only the 8 non-negative ones are tried on |x|; a
    # negative x takes the negative level (index + 8), except 0, whose first index is 0 (+0) for both signs.
    levels = torch.tensor(MXFP4_LEVELS[:8], dtype=torch.float32, device=x.device)
    errors = (d[:, None, None] * levels - x.abs().unsqueeze(-1)).abs()  # (n, 32, 8)
    q = errors.argmin(dim=-1)  # the first of equal errors, as the C's strict `<` keeps
    q = torch.where((x < 0) & (q > 0), q + 8, q)
    return torch.cat((e.to(torch.uint8).unsqueeze(1), _nibbles(q)), dim=1)


# -- K-quants: 256-weight super-blocks of 8 groups of 32 (Q4_K, Q5_K) or 16 groups of 16 (Q6_K) ----------------
#
# The group searches work on x transposed to (group_size, n_groups): row i holds weight i of every group, so
# the C's loop over a group's weights is a loop over rows, each step a contiguous op over all groups.


def _make_qkx2_quants(x, weights, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Fit x ~ scale * L + min (L in 0..nmax, min <= 0) per group, as ggml's make_qkx2_quants (use_mad false).

    x, weights: (n, G) float32, one group per column. Starts from L = round((x - min) / (range / nmax)) with
    min = min(min(x), 0) and tries nstep + 1 other scales (rmin + rdelta * is + nmax) / (max - min), each
    with the least-squares scale and min of its L, keeping the one with the least weighted squared error.
    Returns L (n, G) int32, scale (G,) and the_min = -min (G,).
    """
    lo = x.amin(dim=0).clamp(max=0.0)  # the C's `min`; the sign of a zero min changes no result here
    hi = x.amax(dim=0)
    flat = hi == lo  # every weight equal to a non-positive min (all zero, or one negative value)
    sum_w, sum_x = _sum_in_order(torch.stack((weights, weights * x), dim=1), from_zero=False)

    candidate, scratch = torch.empty_like(x), torch.empty_like(x)
    products = x.new_empty((3, *x.shape))  # w l, w l^2, w l x for each weight
    iscale = _div(float(nmax), hi - lo)
    scale = _div(1.0, iscale)
    best_error = _squared_error(x, weights, _levels(x, lo, iscale, 0, nmax, candidate), scale, lo, scratch)
    best_lo, best_iscale = lo, iscale  # what the best L was made from; L itself is remade at the end
    for step in range(nstep + 1):
        iscale = _div(_f32(_f32(_f32(rmin) + _f32(_f32(rdelta) * step)) + nmax), hi - lo)
        _levels(x, lo, iscale, 0, nmax, candidate)
        wl = torch.mul(weights, candidate, out=products[0])
        torch.mul(wl, candidate, out=products[1])
        torch.mul(wl, x, out=products[2])
        sum_l, sum_l2, sum_xl = _sum_in_order(products.transpose(0, 1))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0  # a positive min is not allowed: refit the scale alone with min = 0
        this_min = torch.where(positive, 0.0, this_min)
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        error = _squared_error(x, weights, candidate, this_scale, this_min, scratch)
        better = (det > 0) & (error < best_error) & ~flat  # (the C returns before the search for flat groups)
        best_error = torch.where(better, error, best_error)
        best_lo = torch.where(better, lo, best_lo)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)  # the C's `min` moves: later candidates are measured from it
    levels = _levels(x, best_lo, best_iscale, 0, nmax, candidate).to(torch.int32)
    return torch.where(flat, 0, levels), torch.where(flat, 0.0, scale), -lo


def _levels(x, lo, iscale, low: int, high: int, out: torch.Tensor) -> torch.Tensor:
    """MAX(low, MIN(high, nearest_int(iscale * (x - lo)))) per weight, as float32 into `out` (n, G).

    nearest_int's bits, clamped and turned back into a float by setting the exponent of 2^23 (exact for any
    input): all in place, since a fresh (n, G) tensor per op costs more in page faults than the op itself.
    """
    bits = torch.sub(x, lo, out=out).mul_(iscale).add_(12582912.0).view(torch.int32)
    bits.bitwise_and_(0x7FFFFF).clamp_(low + 0x400000, high + 0x400000).bitwise_or_(0x4B000000)
    return out.sub_(12582912.0)  # (2^23 + m) - (2^23 + 2^22) = m - 2^22 = nearest_int's result


def _squared_error(x, weights, levels, scale, min_, out: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * (scale * L_i + min - x_i)^2 per group, in the C's order: (n, G) -> (G,); `out` is scratch."""
    diff = torch.mul(levels, scale, out=out).add_(min_).sub_(x)  # (scale * L + min) - x: the same roundings
    return _sum_in_order(diff.mul_(diff).mul_(weights))


def _make_qx_quants(x: torch.Tensor, nmax: int):
    """Fit x ~ scale * (L - nmax) per group, L in 0..2 nmax - 1, as make_qx_quants with rmse_type 1, no weights.

    x: (n, G) float32. Starts from scale = -max / nmax (max: the value of largest |x|; so scales are usually
    negative) and tries 18 others, -(nmax + 0.1 is) / max for is = -9..9, each with its least-squares scale
    under the weights x^2, keeping the best. Returns L (n, G) int32 and scale (G,); groups whose |x| are all
    below 1e-15 get L = 0 and scale 0.
    """
    amax, signed_max = _first_absmax(x, dim=0)
    zero = torch.zeros_like(signed_max)
    w = x * x
    wx = w * x
    q = torch.empty_like(x)
    products = x.new_empty((2, *x.shape))  # w x l and w l^2 for each weight

    def fit(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _levels(x, zero, iscale, -nmax, nmax - 1, q)
        torch.mul(wx, q, out=products[0])
        torch.mul(w, q, out=products[1]).mul_(q)
        return _sum_in_order(products.transpose(0, 1)).unbind(0)

    best_iscale = _div(float(-nmax), signed_max)
    sum_lx, sum_l2 = fit(best_iscale)
    scale = torch.where(sum_l2 != 0, sum_lx / sum_l2, 0.0)
    best = scale * sum_lx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = _div(-_f32(nmax + _f32(_f32(0.1) * step)), signed_max)
        sum_lx, sum_l2 = fit(iscale)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, sum_lx / sum_l2, scale)
        best = torch.where(better, scale * sum_lx, best)
    levels = _levels(x, zero, best_iscale, -nmax, nmax - 1, q).to(torch.int32) + nmax
    all_zero = amax < GROUP_MAX_EPS  # the C returns L = 0 and scale 0 before searching
    return torch.where(all_zero, 0, levels), torch.where(all_zero, 0.0, scale)


def _as_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n_blocks, 256) -> (group_size, n_groups): weight i of every group in row i (contiguous)."""
    return x.reshape(-1, group_size).t().contiguous()


def _from_groups(levels: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Inverse of `_as_groups`: (group_size, n_groups) -> (n_blocks, groups per block, group_size)."""
    return levels.t().reshape(n_blocks, -1, levels.shape[0])


def _qkx_blocks(x: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int):
    """The shared body of quantize_row_q4_K_ref / q5_K_ref: (n_blocks, 256) -> d, dmin, scales[12], L.

    Each group of 32 is fitted by `_make_qkx2_quants` under weights av_x + |x| (av_x: the group's RMS); the
    8 scales and 8 mins are quantized to 6 bits against the block's largest, and the weights re-quantized
    with the float16 d and dmin. Returns (n_blocks, 16) bytes (d, dmin, scales) and L (n_blocks, 8, 32) int32.
    """
    n = x.shape[0]
    xg = _as_groups(x, 32)  # (32, n * 8)
    av_x = _sqrtf(_sum_in_order(xg * xg) / 32.0)
    levels, scales, mins = _make_qkx2_quants(xg, av_x + xg.abs(), nmax, rmin, rdelta, nstep)
    scales, mins = scales.view(n, 8), mins.view(n, 8)
    max_scale = _positive_max(scales)
    max_min = _positive_max(mins)  # mins of groups whose min was clamped to 0 are -0.0; dmin stays +0.0
    inv_scale = torch.where(max_scale > 0, _div(63.0, max_scale), 0.0)
    inv_min = torch.where(max_min > 0, _div(63.0, max_min), 0.0)
    # uint8_t ls = nearest_int(...); MIN(63, ls): the C wraps to a byte before the MIN
    ls = (_nearest_int(inv_scale.unsqueeze(1) * scales) & 255).clamp(max=63)
    lm = (_nearest_int(inv_min.unsqueeze(1) * mins) & 255).clamp(max=63)
    d = (max_scale / 63.0).half()
    dmin = (max_min / 63.0).half()

    group_d = d.float().unsqueeze(1) * ls  # (n, 8)
    group_m = dmin.float().unsqueeze(1) * lm
    x3 = x.view(n, 8, 32)
    requantized = _nearest_int((x3 + group_m.unsqueeze(2)) / group_d.unsqueeze(2)).clamp(0, nmax)
    levels = torch.where(group_d.unsqueeze(2) != 0, requantized, _from_groups(levels, n))
    head = torch.cat((d.view(torch.uint8).view(n, 2), dmin.view(torch.uint8).view(n, 2), _k_scales(ls, lm)), 1)
    return head, levels


def _positive_max(v: torch.Tensor) -> torch.Tensor:
    """max(0, v...) per row as `float m = 0; if (v > m) m = v;` finds it: +0.0 (not -0.0) when none is > 0."""
    m = v.amax(dim=1)
    return torch.where(m > 0, m, 0.0)


def _k_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and mins (n, 8) -> the 12 bytes get_scale_min_k4 reads (dequant.k_scales_mins)."""
    low = torch.cat((ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)), dim=1)
    high = (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)
    return torch.cat((low, high), dim=1).to(torch.uint8)


def _q4_k(x: torch.Tensor) -> torch.Tensor:
    # block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }  each 32 bytes: groups 2i (low), 2i+1 (high)
    head, levels = _qkx_blocks(x, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20)
    qs = levels[:, 0::2] | (levels[:, 1::2] << 4)  # (n, 4, 32)
    return torch.cat((head, qs.to(torch.uint8).flatten(1)), dim=1)


def _q5_k(x: torch.Tensor) -> torch.Tensor:
    # block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }  bit g of qh[j]: 5th bit of 32 g + j
    head, levels = _qkx_blocks(x, nmax=31, rmin=-0.5, rdelta=0.1, nstep=15)
    shifts = torch.arange(8, dtype=torch.int32, device=x.device).view(1, 8, 1)
    qh = ((levels >> 4) << shifts).sum(dim=1)  # (n, 32): distinct bits, so the sum is an OR
    low = levels & 15
    qs = low[:, 0::2] | (low[:, 1::2] << 4)
    return torch.cat((head, qh.to(torch.uint8), qs.to(torch.uint8).flatten(1)), dim=1)


def _q6_k(x: torch.Tensor) -> torch.Tensor:
    # block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }  16 groups of 16, w = d * sc * (q - 32)
    n = x.shape[0]
    levels, scales = _make_qx_quants(_as_groups(x, 16), nmax=32)
    scales = scales.view(n, 16)
    max_abs, max_scale = _first_absmax(scales, dim=1)
    iscale = _div(-128.0, max_scale)
    d = _div(1.0, iscale).half()
    sc = (_nearest_int(iscale.unsqueeze(1) * scales).clamp(max=127) & 255).to(torch.uint8)  # int8_t in C

    group_d = d.float().unsqueeze(1) * sc.view(torch.int8)  # (n, 16)
    requantized = _nearest_int(x.view(n, 16, 16) / group_d.unsqueeze(2)).clamp(-32, 31) + 32
    levels = torch.where(group_d.unsqueeze(2) != 0, requantized, _from_groups(levels, n)).view(n, 2, 4, 32)
    # Two halves of 128; in each, weight 32 k + l puts its low 4 bits in ql[64 h + 32 (k % 2) + l] (nibble
    # k // 2) and its high 2 bits at bit 2 k of qh[32 h + l].
    low = levels & 15
    ql = low[:, :, 0:2] | (low[:, :, 2:4] << 4)  # (n, 2, 2, 32)
    shifts = torch.arange(0, 8, 2, dtype=torch.int32, device=x.device).view(1, 1, 4, 1)
    qh = ((levels >> 4) << shifts).sum(dim=2)  # (n, 2, 32)
    out = torch.cat(
        (ql.to(torch.uint8).reshape(n, 128), qh.to(torch.uint8).reshape(n, 64), sc, d.view(torch.uint8).view(n, 2)),
        dim=1,
    )
    return torch.where((max_abs < GROUP_MAX_EPS).unsqueeze(1), 0, out)  # an all-zero block is all zero bytes


QUANTIZERS: dict[GGMLType, Quantizer] = {
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.MXFP4: _mxfp4,
}
