"""Decode ggml tensor data (float and quantized blocks) into PyTorch tensors.

A quantized tensor is a run of fixed-size blocks (see `types.BLOCK_LAYOUT`). Each block format below is
one small function that takes *all* blocks at once as a `(n_blocks, type_size)` uint8 tensor and returns
`(n_blocks, block_size)` float32 weights, using only vectorized torch ops, so the same code runs on
whatever device the bytes live on (CPU at load time, or CUDA: move the packed bytes, which are 2-8x
smaller than the floats, and decode there).

Each function opens with its C struct from ggml-common.h, and `_fields` splits a block into those fields
in that order, checking that their sizes add up to the block's `type_size`: the layout is written once.

Every product and sum is done in float32 in the order ggml's C `dequantize_row_*` writes it, so results
are bit-identical to gguf-py's numpy port of that code (the test oracle). A C build that fuses a multiply
and an add into one FMA can differ from both in the last bit.

Speed: on the CPU, `dequantize` decodes in chunks of 1M weights, so the handful of temporaries each
format needs stays in cache instead of streaming through memory once per op; on CUDA, in chunks of 64M.
Each chunk runs torch's intra-op threads; on a machine whose cores are busy with other work those threads
stall each other at every op, and `torch.set_num_threads(1)` is then much faster (see the test).

The block formats can also be `unpack`ed into integer values plus a float scale and min per group of 32 (16
for Q2_K, Q3_K, Q6_K), the form integer matmul kernels take (see quant/packed.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pellucid.errors import UnsupportedError
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType

QK_K = 256  # weights per K-quant super-block

# Weights decoded per step on the CPU: large enough that per-op overhead is negligible, small enough that
# the float32 output and temporaries of one step (a few MB) mostly stay in cache. Measured on a 2-core
# EPYC: 128K-2M weights per step are within 10% of each other; 8M is 2x slower (every op streams memory).
CPU_CHUNK_WEIGHTS = 1 << 20
GPU_CHUNK_WEIGHTS = 1 << 26  # 256 MB of float32 per step: bounds the temporaries on small GPUs

# IQ4_NL / IQ4_XS: the 16 non-uniform levels a 4-bit index selects (kvalues_iq4nl in ggml-common.h).
IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# MXFP4: the 16 values of a 4-bit E2M1 float (sign, 2 exponent bits, 1 mantissa bit), doubled so they are
# integers (kvalues_mxfp4 in ggml-common.h); the block's E8M0 scale is halved to match (`e8m0_to_fp32_half`).
MXFP4_LEVELS = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)

Decoder = Callable[[torch.Tensor], torch.Tensor]  # (n_blocks, type_size) uint8 -> (n_blocks, block_size) f32
# (n_blocks, type_size) uint8 -> q (n_blocks, ..., 32), scale and min (n_blocks, ...) per group of 32
Unpacked = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


# -- the public entry points ------------------------------------------------------------------------------


def dequantize(
    raw: np.ndarray | torch.Tensor,
    ggml_type: GGMLType | int,
    shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode `raw` (the bytes of whole blocks) into a new tensor of `shape` (PyTorch order).

    `raw` is a uint8 numpy array (e.g. `GGUFFile.raw(name)`, a view into the mapped file) or a uint8 torch
    tensor on any device. The result is float32 unless `dtype` says otherwise (bfloat16/float16 are
    rounded once from the exact float32 value), lives on `device` (default: where `raw` is), and never
    shares memory with `raw`, so callers may modify it.
    """
    ggml_type = _check_type(ggml_type)
    decode = DECODERS[ggml_type]
    blocks = as_blocks(raw, ggml_type, shape, device)
    n_blocks, block_size = blocks.shape[0], BLOCK_LAYOUT[ggml_type].block_size
    out = torch.empty((n_blocks, block_size), dtype=dtype or torch.float32, device=blocks.device)
    chunk_weights = CPU_CHUNK_WEIGHTS if blocks.device.type == "cpu" else GPU_CHUNK_WEIGHTS
    step = max(1, chunk_weights // block_size)
    # A loop over chunks of many thousand blocks, not over blocks: each step is a few vectorized ops.
    for start in range(0, n_blocks, step):
        out[start : start + step] = decode(blocks[start : start + step])
    return out.view(shape)


@dataclass(frozen=True)
class GroupQuant:
    """A tensor as small integers with one float scale and min per group: w = q * scale + min.

    q has the tensor's shape (uint8 for the unsigned formats, int8 for the signed ones); scales and mins
    have shape (*shape[:-1], shape[-1] // group_size) and are float32; mins is None for symmetric formats.
    """

    q: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None
    group_size: int = 32

    def dequantize(self) -> torch.Tensor:
        g = self.group_size
        grouped = self.q.unflatten(-1, (-1, g)).float() * self.scales.unsqueeze(-1)
        if self.mins is not None:
            grouped = grouped + self.mins.unsqueeze(-1)
        return grouped.flatten(-2)


def unpack(
    raw: np.ndarray | torch.Tensor,
    ggml_type: GGMLType | int,
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
) -> GroupQuant:
    """Split a quantized tensor into integer values, scales and mins per group (32 weights; 16 for Q2_K,
    Q3_K and Q6_K): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, IQ4_NL / IQ4_XS and MXFP4 (whose q are the levels).

    `GroupQuant.dequantize()` reproduces `dequantize()` exactly for all of them except Q4_0 and Q5_0, stored
    as d * (q - offset): computed as q * d + (-offset d) they can differ in the last bit (by at most
    2^-23 * 16|d|). The tensors are new memory, never views of `raw`.
    """
    ggml_type = _check_type(ggml_type)
    if ggml_type not in UNPACKERS:
        raise UnsupportedError(
            f"unpack() splits only {', '.join(t.name for t in UNPACKERS)} into per-group integers and scales; "
            f"use dequantize() for {ggml_type.name}"
        )
    block_size = BLOCK_LAYOUT[ggml_type].block_size
    if not shape or shape[-1] % block_size:
        raise ValueError(
            f"unpack needs rows that are whole {ggml_type.name} blocks of {block_size}, got {tuple(shape)}"
        )
    q, scales, mins = UNPACKERS[ggml_type](as_blocks(raw, ggml_type, shape, device))
    group = q.shape[-1]
    groups_shape = (*shape[:-1], shape[-1] // group)
    return GroupQuant(
        q=q.reshape(shape),
        scales=scales.reshape(groups_shape),
        mins=None if mins is None else mins.reshape(groups_shape),
        group_size=group,
    )


def as_blocks(
    raw: np.ndarray | torch.Tensor,
    ggml_type: GGMLType,
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`raw` as a (n_blocks, type_size) uint8 tensor on `device`, after checking its size against `shape`."""
    layout = BLOCK_LAYOUT[ggml_type]
    n_weights = 1
    for d in shape:
        n_weights *= d
    if n_weights % layout.block_size:
        raise ValueError(
            f"a {ggml_type.name} tensor holds whole blocks of {layout.block_size} weights; "
            f"shape {tuple(shape)} has {n_weights}"
        )
    n_blocks = n_weights // layout.block_size
    blocks = _as_uint8_tensor(raw)
    if blocks.numel() != n_blocks * layout.type_size:
        raise ValueError(
            f"a {ggml_type.name} tensor of shape {tuple(shape)} takes {n_blocks * layout.type_size:,} bytes, "
            f"got {blocks.numel():,}"
        )
    if device is not None:
        blocks = blocks.to(device)
    return blocks.reshape(n_blocks, layout.type_size)


def _as_uint8_tensor(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        if raw.dtype != torch.uint8:
            raise TypeError(f"raw tensor data must be uint8 bytes, got {raw.dtype}")
        return raw.reshape(-1)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise TypeError(f"raw tensor data must be a uint8 numpy array or torch tensor, got {type(raw).__name__}")
    with warnings.catch_warnings():
        # A read-only buffer (bytes, a read-only mmap) is fine: decoding only ever reads it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1))


def _check_type(ggml_type: GGMLType | int) -> GGMLType:
    try:
        ggml_type = GGMLType(ggml_type)
    except ValueError:
        raise UnsupportedError(f"ggml tensor type {int(ggml_type)} is unknown to pellucid") from None
    if ggml_type not in DECODERS:
        raise UnsupportedError(
            f"pellucid cannot decode {ggml_type.name} tensors yet (it reads {', '.join(t.name for t in DECODERS)}). "
            f"Use a GGUF file quantized to one of those, e.g. Q4_K_M, Q8_0 or F16."
        )
    return ggml_type


# -- field helpers ------------------------------------------------------------------------------------------


def _fields(blocks: torch.Tensor, *sizes: int) -> list[torch.Tensor]:
    """Split (n_blocks, type_size) bytes into consecutive fields of the given byte sizes (views, no copy)."""
    assert sum(sizes) == blocks.shape[1], f"fields {sizes} do not add up to the block size {blocks.shape[1]}"
    return list(torch.split(blocks, sizes, dim=1))


def _f16(field: torch.Tensor) -> torch.Tensor:
    """A 2-byte little-endian half field, (n, 2) uint8 -> (n, 1) float32 (exact)."""
    # contiguous() copies just these 2 bytes per block, giving the half view a 2-byte-aligned buffer.
    return field.contiguous().view(torch.float16).float()


def _low_high(x: torch.Tensor) -> torch.Tensor:
    """Split bytes into their low and high nibbles: (..., L) -> (..., 2, L), low nibbles first."""
    return torch.stack((x & 0x0F, x >> 4), dim=-2)


def _crumbs(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Split bytes into 8/bits fields of `bits` bits, lowest first: (..., L) -> (..., 8 // bits, L)."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device).view(-1, 1)
    return (x.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)


def _bits_of_bytes(x: torch.Tensor) -> torch.Tensor:
    """The bits of little-endian bytes in order: (..., L) -> (..., 8 L), bit i of byte j at 8 j + i."""
    shifts = torch.arange(8, dtype=torch.uint8, device=x.device)
    return ((x.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes (get_scale_min_k4)."""
    a, b, c = scales.view(-1, 3, 4).unbind(1)  # bytes 0-3, 4-7, 8-11
    sc = torch.cat((a & 63, (c & 0x0F) | ((a >> 6) << 4)), dim=1)
    mn = torch.cat((b & 63, (c >> 4) | ((b >> 6) << 4)), dim=1)
    return sc.float(), mn.float()  # (n, 8) each


# -- float formats --------------------------------------------------------------------------------------------


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def _f16_tensor(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


def _f64(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float64).float()


# -- legacy block formats: 32 weights, one scale (and min) per block --------------------------------------------


def _unpack_q4_0(blocks: torch.Tensor) -> Unpacked:
    # block_q4_0 { f16 d; u8 qs[16]; }  weight j: low nibble of qs[j], weight 16 + j: high nibble
    d, qs = _fields(blocks, 2, 16)
    d = _f16(d)
    return _low_high(qs).flatten(1), d.squeeze(1), -8 * d.squeeze(1)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _fields(blocks, 2, 16)
    q = _low_high(qs).flatten(1).to(torch.int8) - 8
    return _f16(d) * q


def _unpack_q4_1(blocks: torch.Tensor) -> Unpacked:
    # block_q4_1 { f16 d; f16 m; u8 qs[16]; }  w = d * q + m
    d, m, qs = _fields(blocks, 2, 2, 16)
    return _low_high(qs).flatten(1), _f16(d).squeeze(1), _f16(m).squeeze(1)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    q, d, m = _unpack_q4_1(blocks)
    return d.unsqueeze(1) * q + m.unsqueeze(1)


def _unpack_q5_0(blocks: torch.Tensor) -> Unpacked:
    # block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }  5th bit of weight j is bit j of the u32 qh
    d, qh, qs = _fields(blocks, 2, 4, 16)
    d = _f16(d)
    return _low_high(qs).flatten(1) | (_bits_of_bytes(qh) << 4), d.squeeze(1), -16 * d.squeeze(1)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qh, qs = _fields(blocks, 2, 4, 16)
    q = (_low_high(qs).flatten(1) | (_bits_of_bytes(qh) << 4)).to(torch.int8) - 16
    return _f16(d) * q


def _unpack_q5_1(blocks: torch.Tensor) -> Unpacked:
    # block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }
    d, m, qh, qs = _fields(blocks, 2, 2, 4, 16)
    return _low_high(qs).flatten(1) | (_bits_of_bytes(qh) << 4), _f16(d).squeeze(1), _f16(m).squeeze(1)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    q, d, m = _unpack_q5_1(blocks)
    return d.unsqueeze(1) * q + m.unsqueeze(1)


def _unpack_q8_0(blocks: torch.Tensor) -> Unpacked:
    # block_q8_0 { f16 d; i8 qs[32]; }
    d, qs = _fields(blocks, 2, 32)
    return qs.view(torch.int8).clone(), _f16(d).squeeze(1), None  # clone: q must not alias the file


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _fields(blocks, 2, 32)
    return _f16(d) * qs.view(torch.int8)


def _unpack_iq4_nl(blocks: torch.Tensor) -> Unpacked:
    # block_iq4_nl { f16 d; u8 qs[16]; }  like Q4_0, but the nibble indexes IQ4_LEVELS (q are the levels)
    d, qs = _fields(blocks, 2, 16)
    levels = torch.tensor(IQ4_LEVELS, dtype=torch.int8, device=blocks.device)
    return levels[_low_high(qs).flatten(1).long()], _f16(d).squeeze(1), None


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    q, d, _ = _unpack_iq4_nl(blocks)
    return d.unsqueeze(1) * q


# -- MXFP4: 32 four-bit floats sharing a power-of-two scale (GPT-OSS's expert weights) ---------------------------


def e8m0_to_fp32_half(e: torch.Tensor) -> torch.Tensor:
    """An E8M0 exponent byte e (a bare float32 exponent, bias 127) as the float 2^(e - 127) / 2, exactly: the
    bits of ggml_e8m0_to_fp32_half (e = 0 and 1 give the subnormals 2^-128 and 2^-127). Same shape, float32."""
    e = e.to(torch.int32)
    return torch.where(e < 2, 0x00200000 << e, (e - 1) << 23).view(torch.float32)


def _unpack_mxfp4(blocks: torch.Tensor) -> Unpacked:
    # block_mxfp4 { u8 e; u8 qs[16]; }  w = 2^(e - 127) / 2 * L[q]; low nibbles are weights 0-15, high 16-31
    e, qs = _fields(blocks, 1, 16)
    levels = torch.tensor(MXFP4_LEVELS, dtype=torch.int8, device=blocks.device)
    return levels[_low_high(qs).flatten(1).long()], e8m0_to_fp32_half(e).squeeze(1), None


def _mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    q, d, _ = _unpack_mxfp4(blocks)
    return d.unsqueeze(1) * q


# -- K-quants: 256-weight super-blocks of 16 or 8 sub-blocks with quantized scales ------------------------------


def _unpack_q2_k(blocks: torch.Tensor) -> Unpacked:
    # block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }  16 groups of 16; scale: low nibble, min: high
    scales, qs, d, dmin = _fields(blocks, 16, 64, 2, 2)
    n = blocks.shape[0]
    q = _crumbs(qs.view(n, 2, 32), 2).reshape(n, 16, 16)  # halves of 128, each 4 shifts x 32 bytes
    return q, _f16(d) * (scales & 0x0F), -(_f16(dmin) * (scales >> 4))


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    q, dl, neg_ml = _unpack_q2_k(blocks)
    return (dl.unsqueeze(-1) * q + neg_ml.unsqueeze(-1)).view(-1, QK_K)


def _unpack_q3_k(blocks: torch.Tensor) -> Unpacked:
    # block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }  16 groups of 16, 6-bit signed scales
    hmask, qs, scales, d = _fields(blocks, 32, 64, 12, 2)
    n = blocks.shape[0]
    low4 = _low_high(scales[:, :8]).flatten(1)  # (n, 16)
    high2 = _crumbs(scales[:, 8:], 2).flatten(1)  # (n, 16)
    sc = (low4 | (high2 << 4)).to(torch.int8) - 32
    dl = (_f16(d) * sc).unsqueeze(-1)  # (n, 16, 1)
    ql = _crumbs(qs.view(n, 2, 32), 2).reshape(n, 8, 32)  # 2 low bits
    hm = _crumbs(hmask, 1)  # (n, 8, 32): bit k of hmask[l] belongs to weight 32 k + l
    # A set hmask bit means "no offset": q = ql, else q = ql - 4; both are (ql | hm << 2) - 4.
    q = ((ql | (hm << 2)).to(torch.int8) - 4).view(n, 16, 16)
    return q, dl.squeeze(-1), None


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    q, dl, _ = _unpack_q3_k(blocks)
    return (dl.unsqueeze(-1) * q).view(-1, QK_K)


def _unpack_q4_k(blocks: torch.Tensor) -> Unpacked:
    # block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }  8 groups of 32: w = d*sc*q - dmin*m
    d, dmin, scales, qs = _fields(blocks, 2, 2, 12, 128)
    n = blocks.shape[0]
    sc, mn = k_scales_mins(scales)
    q = _low_high(qs.view(n, 4, 32)).view(n, 8, 32)  # each 32 bytes: low nibbles then high nibbles
    return q, _f16(d) * sc, -(_f16(dmin) * mn)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    q, scale, neg_min = _unpack_q4_k(blocks)
    return (scale.unsqueeze(-1) * q + neg_min.unsqueeze(-1)).view(-1, QK_K)


def _unpack_q5_k(blocks: torch.Tensor) -> Unpacked:
    # block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }  like Q4_K plus a 5th bit
    d, dmin, scales, qh, qs = _fields(blocks, 2, 2, 12, 32, 128)
    n = blocks.shape[0]
    sc, mn = k_scales_mins(scales)
    ql = _low_high(qs.view(n, 4, 32)).view(n, 8, 32)
    q = ql | (_crumbs(qh, 1) << 4)  # bit k of qh[l] is the 5th bit of weight 32 k + l
    return q, _f16(d) * sc, -(_f16(dmin) * mn)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    q, dl, neg_ml = _unpack_q5_k(blocks)
    return (dl.unsqueeze(-1) * q + neg_ml.unsqueeze(-1)).view(-1, QK_K)


def _unpack_q6_k(blocks: torch.Tensor) -> Unpacked:
    # block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }  16 groups of 16, two halves of 128:
    # in half h, weight 32 k + l (k = 0..3) takes nibble k // 2 of ql[64 h + 32 (k % 2) + l] and the
    # 2 bits at 2 k of qh[32 h + l].
    ql, qh, scales, d = _fields(blocks, 128, 64, 16, 2)
    n = blocks.shape[0]
    low4 = _low_high(ql.view(n, 2, 64)).view(n, 2, 128)
    high2 = _crumbs(qh.view(n, 2, 32), 2).view(n, 2, 128)
    q = ((low4 | (high2 << 4)).to(torch.int8) - 32).view(n, 16, 16)
    return q, _f16(d) * scales.view(torch.int8), None


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    q, dl, _ = _unpack_q6_k(blocks)
    return (dl.unsqueeze(-1) * q).view(-1, QK_K)


def iq4_xs_group_scales(blocks: torch.Tensor) -> torch.Tensor:
    """The 8 signed group scales (ls - 32, int8) of each block_iq4_xs (n, 136) -> (n, 8)."""
    _, scales_h, scales_l, _ = _fields(blocks, 2, 2, 4, 128)
    n = blocks.shape[0]
    low4 = _low_high(scales_l).transpose(1, 2).reshape(n, 8)  # group 2 i: low nibble of byte i, 2 i + 1: high
    high2 = _crumbs(scales_h, 2).transpose(1, 2).reshape(n, 8)  # group k: bits 2 k of the u16
    return (low4 | (high2 << 4)).to(torch.int8) - 32


def _unpack_iq4_xs(blocks: torch.Tensor) -> Unpacked:
    # block_iq4_xs { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }  8 groups of 32, 6-bit scales - 32
    d, _, _, qs = _fields(blocks, 2, 2, 4, 128)
    n = blocks.shape[0]
    dl = _f16(d) * iq4_xs_group_scales(blocks)
    levels = torch.tensor(IQ4_LEVELS, dtype=torch.int8, device=blocks.device)
    return levels[_low_high(qs.view(n, 8, 16)).view(n, 8, 32).long()], dl, None


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    q, dl, _ = _unpack_iq4_xs(blocks)
    return (dl.unsqueeze(-1) * q).view(-1, QK_K)


DECODERS: dict[GGMLType, Decoder] = {
    GGMLType.F32: _f32,
    GGMLType.F16: _f16_tensor,
    GGMLType.BF16: _bf16,
    GGMLType.F64: _f64,
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.IQ4_NL: _iq4_nl,
    GGMLType.IQ4_XS: _iq4_xs,
    GGMLType.MXFP4: _mxfp4,
}

UNPACKERS: dict[GGMLType, Callable[[torch.Tensor], Unpacked]] = {
    GGMLType.Q4_0: _unpack_q4_0,
    GGMLType.Q4_1: _unpack_q4_1,
    GGMLType.Q5_0: _unpack_q5_0,
    GGMLType.Q5_1: _unpack_q5_1,
    GGMLType.Q8_0: _unpack_q8_0,
    GGMLType.Q2_K: _unpack_q2_k,
    GGMLType.Q3_K: _unpack_q3_k,
    GGMLType.Q4_K: _unpack_q4_k,
    GGMLType.Q5_K: _unpack_q5_k,
    GGMLType.Q6_K: _unpack_q6_k,
    GGMLType.IQ4_NL: _unpack_iq4_nl,
    GGMLType.IQ4_XS: _unpack_iq4_xs,
    GGMLType.MXFP4: _unpack_mxfp4,
}
