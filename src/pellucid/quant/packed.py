"""Quantized weight matrices kept in their ggml block formats, split into named fields for the matmul kernels.

A GGUF matrix (out_features N, in_features K) is N rows of K / block_size blocks. `pack()` turns its bytes into
a `PackedWeight`: the format's fields (4-bit nibbles, 8-bit values, float16 scales...) as tensors shaped
(N, groups..., L). For the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the K-quants real files mostly use
(Q4_K, Q5_K, Q6_K) the weight fields are strided *views* of the file's bytes: loading copies nothing and the
weights cost what they cost on disk (Q4_K/Q5_K unpack their 6-bit scales at load: 16 bytes per 256 weights).
The rarer formats (Q3_K, Q2_K, IQ4_NL, IQ4_XS) are re-laid-out once at load as int8 values plus a float32 scale
(and min) per group of 16 or 32 (`Q8G`), which reproduces their dequantized weights exactly at 1.1-1.5 bytes
per weight instead of the file's 0.4-0.6.

Every format answers one question, `parts(fields)`: the weights as float32, grouped the way the kernels read
them, i.e. a list of P tensors (N, *groups, L) such that `stack(parts, dim=-2).reshape(N, K)` is the matrix.
Q4_0 has two parts per 32-weight block (the low nibbles are weights 0-15, the high ones 16-31), so x is viewed
as (groups, 2, 16) and each nibble plane meets its half of x without any shuffling. The arithmetic is
dequant.py's, operation for operation, so a packed matrix equals `dequantize()` of the same bytes (up to the
fused multiply-adds a compiler may form: last-bit differences).

Kernels (quant/kernels.py) build on `parts`: a matrix-vector product multiplies each part by its slice of x
and sums, which torch.compile turns into one loop that reads each packed byte once.

MXFP4 (GPT-OSS's expert weights: 32 four-bit E2M1 floats and one E8M0 power-of-two scale per block) is read in
place like Q4_0: `qs` and the exponent bytes `e` are views of the file (4.25 bits per weight).

Expert stacks. GGUF stores a mixture-of-experts layer's experts as one 3-D tensor (E, N, K) (torch order): E
matrices of N rows back to back. `pack(raw, ggml_type, (E, N, K))` returns a `PackedExperts`, one packed matrix
of E * N rows viewing the file (no copy), and

    experts.expert(e) -> PackedWeight    # expert e's (N, K) matrix: rows e N..(e + 1) N of the stack, a view
    experts.n_experts, experts.shape     # E; (E, N, K)
    experts.stack                        # the (E * N, K) PackedWeight itself (e.g. for a kernel that takes ids)

`expert(e)` is a 2-D PackedWeight like any other (kernels.matmul, native.format_of, row_slice all take it); the
objects are made once and kept, so a decode step asking for its routed experts pays nothing, and the native
kernels' per-matrix state (a repacked copy) is made once per expert. Experts that meet the same x (one token's
routed gate/up projections) can go to the native kernels in one call: `kernels.matmul_many(x, [experts.expert(e)
for e in ids])`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from pellucid.errors import UnsupportedError
from pellucid.quant.dequant import IQ4_LEVELS, as_blocks, e8m0_to_fp32_half, k_scales_mins, unpack
from pellucid.quant.types import GGMLType


class PackedWeight(nn.Module):
    """A (N, K) matrix in a block format: tensors as parameters (so `.to(device)` moves them), plus `parts()`.

    Subclasses give `x_layout(fields)`: the trailing shape (..., P, L) that x's last dimension is viewed as
    after the leading group dimension, so that x.view(-1, *x_layout) lines up with `weights(**fields)`.
    Both are static methods of the fields alone, so one compiled kernel serves every matrix of a format.
    """

    ggml_type: GGMLType | None = None  # the file's type (Q8G records which type it was re-laid-out from)

    def __init__(self, shape: tuple[int, int], fields: dict[str, torch.Tensor]):
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        for name, tensor in fields.items():
            # Parameters, not buffers, though they never train: torch.compile then trusts that they do not
            # change between calls instead of checking every one of them (and that the views of one file
            # region do not alias) on each call, which costs milliseconds for a whole model.
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def n_bytes(self) -> int:
        """Bytes the kernels read per pass over the matrix: fields that view one buffer count the bytes they span
        once (a row slice, such as one expert of a GGUF expert stack, only its own rows)."""
        spans: dict[int, tuple[int, int]] = {}
        for b in self.parameters():
            key = b.untyped_storage().data_ptr()
            start, end = _span(b)
            if key in spans:
                start, end = min(start, spans[key][0]), max(end, spans[key][1])
            spans[key] = (start, end)
        return sum(end - start for start, end in spans.values())

    def fields(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters(recurse=False))

    def parts(self, rows: torch.Tensor | slice | None = None) -> list[torch.Tensor]:
        """The weights as float32 parts (N, *groups, L); with `rows` (ids or a slice), only those rows."""
        if rows is None:
            return self.weights(**self.fields())
        if isinstance(rows, slice):
            return self.weights(**{k: v[rows] for k, v in self.fields().items()})
        return self.weights(**{k: v.index_select(0, rows) for k, v in self.fields().items()})

    def row_slice(self, start: int, end: int) -> PackedWeight:
        """Rows start..end as a matrix of the same format, viewing the same bytes (no copy).

        Rows are independent in every block format (blocks run along K), so a fused projection such as
        Phi-3's qkv splits into its parts this way.
        """
        part = object.__new__(type(self))
        PackedWeight.__init__(part, (end - start, self.shape[1]), {k: v[start:end] for k, v in self.fields().items()})
        part.ggml_type = self.ggml_type
        return part

    @staticmethod
    def x_layout(fields: dict[str, torch.Tensor]) -> tuple[int, ...]:
        raise NotImplementedError

    @staticmethod
    def weights(**fields: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{type(self).__name__}, out={self.shape[0]}, in={self.shape[1]}"


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte offsets in t's storage of its first element and just past its last (a field viewing a block spans the
    blocks; with positive strides, as every field has)."""
    if t.numel() == 0:
        return 0, 0
    first = t.storage_offset()
    last = first + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return first * t.element_size(), (last + 1) * t.element_size()


# -- the legacy formats: blocks of 32 weights, one float16 scale (and min) each, read straight from the file --


class Q4_0(PackedWeight):
    """block_q4_0 {f16 d; u8 qs[16]}: w = d * (q - 8), q in 0..15; low nibbles are weights 0-15."""

    ggml_type = GGMLType.Q4_0

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, shape) -> Q4_0:  # blocks (N, G, 18)
        return cls(shape, {"qs": blocks[..., 2:], "d": _half(blocks, 0)})

    @staticmethod
    def x_layout(fields):
        return (2, 16)

    @staticmethod
    def weights(qs, d):
        d = d.float().unsqueeze(-1)
        return [((qs & 15).to(torch.int32) - 8) * d, ((qs >> 4).to(torch.int32) - 8) * d]


class Q4_1(PackedWeight):
    """block_q4_1 {f16 d; f16 m; u8 qs[16]}: w = d * q + m."""

    ggml_type = GGMLType.Q4_1

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q4_1:  # (N, G, 20)
        return cls(shape, {"qs": blocks[..., 4:], "d": _half(blocks, 0), "m": _half(blocks, 1)})

    @staticmethod
    def x_layout(fields):
        return (2, 16)

    @staticmethod
    def weights(qs, d, m):
        d, m = d.float().unsqueeze(-1), m.float().unsqueeze(-1)
        return [d * (qs & 15) + m, d * (qs >> 4) + m]


class Q5_0(PackedWeight):
    """block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: w = d * (q - 16); bit j of the u32 qh is weight j's 5th bit."""

    ggml_type = GGMLType.Q5_0

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q5_0:  # (N, G, 22): qh sits at byte 2, too unaligned to view as u32
        return cls(shape, {"qs": blocks[..., 6:], "qh": _u32(blocks[..., 2:6]), "d": _half(blocks, 0)})

    @staticmethod
    def x_layout(fields):
        return (2, 16)

    @staticmethod
    def weights(qs, qh, d):
        lo, hi = _fifth_bits(qh)
        d = d.float().unsqueeze(-1)
        return [(((qs & 15).to(torch.int32) | lo) - 16) * d, (((qs >> 4).to(torch.int32) | hi) - 16) * d]


class Q5_1(PackedWeight):
    """block_q5_1 {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: w = d * q + m with a 5th bit from qh."""

    ggml_type = GGMLType.Q5_1

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q5_1:  # (N, G, 24)
        fields = {"qs": blocks[..., 8:], "qh": _u32(blocks[..., 4:8]), "d": _half(blocks, 0), "m": _half(blocks, 1)}
        return cls(shape, fields)

    @staticmethod
    def x_layout(fields):
        return (2, 16)

    @staticmethod
    def weights(qs, qh, d, m):
        lo, hi = _fifth_bits(qh)
        d, m = d.float().unsqueeze(-1), m.float().unsqueeze(-1)
        return [d * ((qs & 15).to(torch.int32) | lo) + m, d * ((qs >> 4).to(torch.int32) | hi) + m]


class Q8_0(PackedWeight):
    """block_q8_0 {f16 d; i8 qs[32]}: w = d * q."""

    ggml_type = GGMLType.Q8_0

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q8_0:  # (N, G, 34)
        return cls(shape, {"qs": blocks[..., 2:].view(torch.int8), "d": _half(blocks, 0)})

    @staticmethod
    def x_layout(fields):
        return (1, 32)

    @staticmethod
    def weights(qs, d):
        return [d.float().unsqueeze(-1) * qs]


class MXFP4(PackedWeight):
    """block_mxfp4 {u8 e; u8 qs[16]}: w = 2^(e - 127) / 2 * L[q], L the 16 E2M1 values doubled (MXFP4_LEVELS).

    Both fields are views of the file's blocks; nibbles as Q4_0 (low: weights 0-15, high: 16-31).
    """

    ggml_type = GGMLType.MXFP4

    @classmethod
    def from_blocks(cls, blocks, shape) -> MXFP4:  # (N, G, 17)
        return cls(shape, {"qs": blocks[..., 1:], "e": blocks[..., 0]})

    @staticmethod
    def x_layout(fields):
        return (2, 16)

    @staticmethod
    def weights(qs, e):
        d = e8m0_to_fp32_half(e).unsqueeze(-1)  # (N, G, 1), exact powers of two
        return [_e2m1_doubled(qs & 15) * d, _e2m1_doubled(qs >> 4) * d]


class Q4_K(PackedWeight):
    """block_q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 8 groups of 32, w = d*sc*q - dmin*m.

    The nibbles stay in the file; the 6-bit scales and mins are unpacked at load (16 bytes per 256 weights).
    Byte j of each 32-byte run holds weight j of group 2i (low nibble) and of group 2i + 1 (high nibble).
    """

    ggml_type = GGMLType.Q4_K

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q4_K:  # (N, S, 144)
        n, s = blocks.shape[:2]
        sc, mn = k_scales_mins(blocks[..., 4:16].reshape(-1, 12))  # (N * S, 8) six-bit integers
        fields = {
            "qs": blocks[..., 16:].unflatten(-1, (4, 32)),
            "d": _half(blocks, 0),
            "dmin": _half(blocks, 1),
            "sc": sc.to(torch.uint8).view(n, s, 4, 2),
            "mn": mn.to(torch.uint8).view(n, s, 4, 2),
        }
        return cls(shape, fields)

    @staticmethod
    def x_layout(fields):
        return (4, 2, 32)

    @staticmethod
    def weights(qs, d, dmin, sc, mn):
        scale = d.float()[..., None, None] * sc  # (N, S, 4, 2): groups 2i and 2i+1 of each super-block
        neg_min = -(dmin.float()[..., None, None] * mn)
        return [
            scale[..., 0:1] * (qs & 15) + neg_min[..., 0:1],
            scale[..., 1:2] * (qs >> 4) + neg_min[..., 1:2],
        ]


class Q5_K(PackedWeight):
    """block_q5_K {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus a fifth bit per weight.

    As Q4_K, the nibbles stay in the file (bytes 32 i..32 i + 31 hold groups 2 i and 2 i + 1); bit k of qh[l]
    is the fifth bit of weight 32 k + l. Scales and mins are unpacked at load (16 bytes per 256 weights).
    """

    ggml_type = GGMLType.Q5_K

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q5_K:  # (N, S, 176)
        n, s = blocks.shape[:2]
        sc, mn = k_scales_mins(blocks[..., 4:16].reshape(-1, 12))
        fields = {
            "qs": blocks[..., 48:].unflatten(-1, (4, 32)),
            "qh": blocks[..., 16:48],
            "d": _half(blocks, 0),
            "dmin": _half(blocks, 1),
            "sc": sc.to(torch.uint8).view(n, s, 4, 2),
            "mn": mn.to(torch.uint8).view(n, s, 4, 2),
        }
        return cls(shape, fields)

    @staticmethod
    def x_layout(fields):
        return (4, 2, 32)

    @staticmethod
    def weights(qs, qh, d, dmin, sc, mn):
        scale = d.float()[..., None, None] * sc  # (N, S, 4, 2)
        neg_min = -(dmin.float()[..., None, None] * mn)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=qh.device).view(4, 1)
        low_bit = ((qh.unsqueeze(-2) >> shifts) & 1) << 4  # (N, S, 4, 32): group 2 i's fifth bits
        high_bit = ((qh.unsqueeze(-2) >> (shifts + 1)) & 1) << 4  # group 2 i + 1's
        return [
            scale[..., 0:1] * ((qs & 15) | low_bit) + neg_min[..., 0:1],
            scale[..., 1:2] * ((qs >> 4) | high_bit) + neg_min[..., 1:2],
        ]


class Q6_K(PackedWeight):
    """block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 6-bit weights in 16 groups of 16, read in place.

    In half h (128 weights), weight 32 k + l takes nibble k // 2 of ql[64 h + 32 (k % 2) + l] and bits 2 k of
    qh[32 h + l], minus 32; its scale is d * scales[8 h + 2 k + l // 16]. Every field is a view of the file's
    blocks (0.82 bytes per weight).
    """

    ggml_type = GGMLType.Q6_K

    @classmethod
    def from_blocks(cls, blocks, shape) -> Q6_K:  # (N, S, 210)
        fields = {
            "ql": blocks[..., :128].unflatten(-1, (2, 2, 32)),  # (N, S, h, k % 2, l)
            "qh": blocks[..., 128:192].unflatten(-1, (2, 32)),  # (N, S, h, l)
            "scales": blocks[..., 192:208].view(torch.int8).unflatten(-1, (2, 4, 2)),  # (N, S, h, k, l // 16)
            "d": _half(blocks, 104),  # bytes 208-209
        }
        return cls(shape, fields)

    @staticmethod
    def x_layout(fields):
        return (2, 4, 32)

    @staticmethod
    def weights(ql, qh, scales, d):
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=qh.device).view(4, 1)
        high = ((qh.unsqueeze(-2) >> shifts) & 3) << 4  # (N, S, 2, 4, 32): bits 2 k of qh
        low = torch.cat((ql & 15, ql >> 4), dim=-2)  # (N, S, 2, 4, 32): k = 0, 1 low nibbles; 2, 3 high ones
        q = (low | high).to(torch.int8) - 32
        scale = (d.float()[..., None, None, None] * scales).repeat_interleave(16, dim=-1)  # (N, S, 2, 4, 32)
        w = scale * q
        return [w[..., k, :] for k in range(4)]


# -- re-laid-out formats: int8 values with a float32 scale (and min) per group ---------------------------------


class IQ4_XS(PackedWeight):
    """block_iq4_xs {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 groups of 32, w = d * (ls - 32) * L[q].

    L is the 16 non-uniform levels (`dequant.IQ4_LEVELS`) a 4-bit index q selects. The nibbles stay in the file
    (group g's 16 bytes: low nibbles are its weights 0-15, high 16-31, as Q4_0); the 6-bit group scales are
    unpacked at load into int8 ls - 32 (8 bytes per 256 weights): 4.5 bits per weight read, not 9 as int8.
    """

    ggml_type = GGMLType.IQ4_XS

    @classmethod
    def from_blocks(cls, blocks, shape) -> IQ4_XS:  # (N, S, 136)
        from pellucid.quant.dequant import iq4_xs_group_scales  # noqa: PLC0415 - next to its one use

        n, s = blocks.shape[:2]
        fields = {
            "qs": blocks[..., 8:].unflatten(-1, (8, 16)),
            "d": _half(blocks, 0),
            "ls": iq4_xs_group_scales(blocks.reshape(n * s, -1)).view(n, s, 8),
        }
        return cls(shape, fields)

    @staticmethod
    def x_layout(fields):
        return (8, 2, 16)

    @staticmethod
    def weights(qs, d, ls):
        levels = torch.tensor(IQ4_LEVELS, dtype=torch.float32, device=qs.device)
        scale = (d.float()[..., None] * ls)[..., None]  # (N, S, 8, 1)
        return [levels[(qs & 15).long()] * scale, levels[(qs >> 4).long()] * scale]


class Q8G(PackedWeight):
    """int8 q with float32 scale (and min) per group of 16 or 32: w = scale * q (+ min).

    The at-load layout for the rarer formats whose bit fields are scattered across a block (Q3_K, Q2_K, IQ4): each
    of them is exactly scale * q + min with small integers q, which int8 holds.
    """

    def __init__(self, shape, fields, source: GGMLType):
        super().__init__(shape, fields)
        self.ggml_type = source

    @staticmethod
    def x_layout(fields):
        return (1, fields["q"].shape[-1])

    @staticmethod
    def weights(q, scale, min=None):  # noqa: A002 - the field's name in the formats
        w = scale.unsqueeze(-1) * q
        return [w if min is None else w + min.unsqueeze(-1)]


class Dense(PackedWeight):
    """A float16 / bfloat16 / float32 matrix as stored; the kernels convert it to float32 as they read it."""

    def __init__(self, shape, fields, source: GGMLType):
        super().__init__(shape, fields)
        self.ggml_type = source

    @staticmethod
    def x_layout(fields):
        return (1, fields["w"].shape[-1])

    @staticmethod
    def weights(w):
        return [w.float().unsqueeze(-2)]


# -- building one ----------------------------------------------------------------------------------------------

VIEWED = {
    GGMLType.Q4_0: Q4_0,
    GGMLType.Q4_1: Q4_1,
    GGMLType.Q5_0: Q5_0,
    GGMLType.Q5_1: Q5_1,
    GGMLType.Q8_0: Q8_0,
    GGMLType.MXFP4: MXFP4,
}
IN_PLACE_K = {GGMLType.Q4_K: Q4_K, GGMLType.Q5_K: Q5_K, GGMLType.Q6_K: Q6_K, GGMLType.IQ4_XS: IQ4_XS}
DENSE = {GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16, GGMLType.F32: torch.float32}


def pack(raw: np.ndarray | torch.Tensor, ggml_type: GGMLType, shape: tuple[int, ...]) -> PackedWeight | PackedExperts:
    """The matrix `shape` (N, K) stored as `ggml_type` in `raw` (e.g. `GGUFFile.raw(name)`), ready for kernels;
    for an expert stack (E, N, K), a `PackedExperts`.

    `raw` is not copied for the viewed formats: keep the file mapped while the weight is in use (a torch
    tensor made from it keeps the mapping alive).
    """
    ggml_type = GGMLType(ggml_type)
    if len(shape) == 3:
        n_experts, n, k = shape
        return PackedExperts(pack(raw, ggml_type, (n_experts * n, k)), n_experts)
    if len(shape) != 2:
        raise ValueError(
            f"pack() takes a matrix (out_features, in_features) or an expert stack (experts, out_features, "
            f"in_features), not shape {tuple(shape)}"
        )
    n, k = shape
    if ggml_type in DENSE:
        w = _as_tensor(raw).view(DENSE[ggml_type]).view(n, k)
        return Dense(shape, {"w": w}, ggml_type)
    blocks = as_blocks(raw, ggml_type, shape)  # (N * blocks per row, type_size), checked against the shape
    blocks = blocks.view(n, -1, blocks.shape[-1])
    if ggml_type in VIEWED:
        return VIEWED[ggml_type].from_blocks(blocks, shape)
    if ggml_type in IN_PLACE_K:
        return IN_PLACE_K[ggml_type].from_blocks(blocks, shape)
    return _as_q8g(raw, ggml_type, shape)


class PackedExperts(nn.Module):
    """A stack of E expert matrices (N, K) in one format, as GGUF stores them: one (E * N, K) PackedWeight (`stack`,
    viewing the file) whose rows e N..(e + 1) N are expert e. See the module's docstring."""

    def __init__(self, stack: PackedWeight, n_experts: int):
        super().__init__()
        if n_experts < 1 or stack.shape[0] % n_experts:
            raise ValueError(f"cannot split {stack.shape[0]} rows into {n_experts} experts")
        self.stack = stack
        self.n_experts = n_experts
        self.shape = (n_experts, stack.shape[0] // n_experts, stack.shape[1])
        self._experts: tuple[tuple, list[PackedWeight | None]] | None = None  # (where the data was, views)

    @property
    def ggml_type(self) -> GGMLType | None:
        return self.stack.ggml_type

    @property
    def n_bytes(self) -> int:
        return self.stack.n_bytes

    def expert(self, e: int) -> PackedWeight:
        """Expert e's (N, K) matrix: a PackedWeight viewing the stack's bytes, made on first use and kept (a new one
        if the stack's tensors were replaced, e.g. by `.to(device)`)."""
        if not 0 <= e < self.n_experts:
            raise IndexError(f"expert {e} of a stack of {self.n_experts}")
        # Where the stack's data is now (a module's .to() may swap a parameter's data in place). The views made
        # from the old data hold its storage, so a new tensor cannot reuse an old address and pass for it.
        key = tuple((t.data_ptr(), t.dtype, t.device) for t in self.stack._parameters.values())
        if self._experts is None or self._experts[0] != key:
            self._experts = (key, [None] * self.n_experts)
        views = self._experts[1]
        if views[e] is None:
            n = self.shape[1]
            views[e] = self.stack.row_slice(e * n, (e + 1) * n)
        return views[e]

    def extra_repr(self) -> str:
        return f"{self.n_experts} experts of {type(self.stack).__name__}, out={self.shape[1]}, in={self.shape[2]}"


def _as_q8g(raw, ggml_type: GGMLType, shape) -> Q8G:
    """Re-lay-out a K-quant (or IQ4) as int8 values and per-group scales, checked to be exact."""
    try:
        g = unpack(raw, ggml_type, shape)
    except UnsupportedError:
        raise UnsupportedError(
            f"pellucid has no matrix kernel for {ggml_type.name} weights yet; use a GGUF with Q4_0, Q4_1, Q5_0, "
            f"Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS, MXFP4, F16 or BF16 matrices (e.g. a Q4_K_M or Q8_0 file)"
        ) from None
    n, k = shape
    fields = {"q": g.q.to(torch.int8).view(n, k // g.group_size, g.group_size), "scale": g.scales.float()}
    if g.mins is not None:
        fields["min"] = g.mins.float()
    return Q8G(shape, fields, ggml_type)


def _as_tensor(raw) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1))


def _half(blocks: torch.Tensor, index: int) -> torch.Tensor:
    """The `index`-th float16 of each block, as a strided (N, G) view: blocks start at even offsets."""
    return blocks.view(torch.float16)[..., index]


def _u32(field: torch.Tensor) -> torch.Tensor:
    """4 little-endian bytes per block -> int32 (a copy: 4 bytes per 32 weights)."""
    b = field.to(torch.int32)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _e2m1_doubled(q: torch.Tensor) -> torch.Tensor:
    """MXFP4_LEVELS[q] for nibbles q, float32, in few vectorizable ops. The nibble's bits s ee m, placed as a
    float32's sign, low exponent bits and top mantissa bit, are its doubled E2M1 value times 2^-127 (ee = 0: the
    subnormal m 2^-127), so one exact multiply by 2^127 gives the level. Nibble 8 (-0) gets no sign bit: the
    table's 0 is +0. Compiled 2048 x 2048 GEMV, one thread: 1.7-3.7 ms (Q4_0 1.0-1.5). A table lookup (an indirect
    load inductor does not vectorize) took 13 ms, and longer arithmetic made inductor write the products to
    memory before summing them (2-10 ms)."""
    q = q.to(torch.int32)
    return (((q & 7) << 22) | ((q > 8).to(torch.int32) << 31)).view(torch.float32) * 2.0**127


def _fifth_bits(qh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit j of qh, shifted to bit 4, for weights 0-15 (lo) and 16-31 (hi): each (..., G, 16) int32."""
    shifts = torch.arange(16, dtype=torch.int32, device=qh.device)
    qh = qh.unsqueeze(-1)
    return ((qh >> shifts) & 1) << 4, ((qh >> (shifts + 16)) & 1) << 4
