"""The KV cache's storage types: how a row of keys or values (head_dim floats) is stored and read back.

llama.cpp's names and layouts (its -ctk/-ctv): `f32`, `f16`, `bf16` store each value as that float; `q8_0` and
`q4_0` store blocks of 32 values (quant/types.BLOCK_LAYOUT): q8_0 an f16 scale d and 32 int8 (34 bytes,
value = q * d), q4_0 an f16 d and 16 bytes of nibbles (18 bytes, value = (nibble - 8) * d, the low nibbles
holding values 0-15, the high ones 16-31). A cache of a block type holds uint8 rows of head_dim / 32 blocks.

`encode` rounds exactly as ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (and gguf-py's quantizer),
byte for byte, so the native decode step (quant/native/ops.cpp, which quantizes the token it stores with the same
arithmetic) and a prefill write the same bytes for the same keys. `decode` turns rows back into floats: what
prefill's attention reads, a tile of positions at a time (model/layers/attention.py).
"""

from __future__ import annotations

import torch

from pellucid.quant.types import (  # noqa: F401 (the KV types' names, default and checks live with the table)
    BLOCK_LAYOUT,
    DEFAULT_KV_TYPE,
    KV_CACHE_TYPES,
    check_kv_type,
    default_kv_type,
    kv_row_bytes,
)

FLOAT_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# The native kernels' numbering of the types (ops.cpp's KvType).
TYPE_IDS = {"f32": 0, "f16": 1, "bf16": 2, "q8_0": 3, "q4_0": 4}


def row_width(kv_type: str, dim: int) -> int:
    """Elements of the storage dtype one row of `dim` values takes (bytes for the block types)."""
    return kv_row_bytes(kv_type, dim) // storage_dtype(kv_type).itemsize


def storage_dtype(kv_type: str) -> torch.dtype:
    return FLOAT_TYPES.get(kv_type, torch.uint8)


def empty(kv_type: str, leading: tuple[int, ...], dim: int, device) -> torch.Tensor:
    """A zeroed buffer of rows: (*leading, row_width)."""
    return torch.zeros(*leading, row_width(kv_type, dim), device=device, dtype=storage_dtype(kv_type))


def encode(x: torch.Tensor, kv_type: str) -> torch.Tensor:
    """Rows x (..., dim) as stored in a cache of `kv_type`."""
    if kv_type in FLOAT_TYPES:
        return x.to(FLOAT_TYPES[kv_type])
    if kv_type == "q8_0":
        return _encode_q8_0(x)
    return _encode_q4_0(x)


def decode(rows: torch.Tensor, kv_type: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stored rows (..., row_width) back to values (..., dim) in `dtype`."""
    if kv_type in FLOAT_TYPES:
        return rows.to(dtype)
    size = BLOCK_LAYOUT[KV_CACHE_TYPES[kv_type]].type_size
    blocks = rows.reshape(*rows.shape[:-1], -1, size)
    d = blocks[..., :2].contiguous().view(torch.float16).float()  # (..., n_blocks, 1)
    if kv_type == "q8_0":
        q = blocks[..., 2:].view(torch.int8).float()
    else:
        qs = blocks[..., 2:]
        q = torch.cat((qs & 15, qs >> 4), dim=-1).float() - 8
    return (q * d).reshape(*rows.shape[:-1], -1).to(dtype)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (half away from zero) as gguf-py writes it: torch.round rounds half to even."""
    a = x.abs()
    floored = a.floor()
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


def _encode_q8_0(x: torch.Tensor) -> torch.Tensor:
    # quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d), d stored as f16
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = _roundf(blocks * inv).to(torch.int8)
    out = torch.cat((d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)), dim=-1)
    return out.reshape(*x.shape[:-1], -1)


def _encode_q4_0(x: torch.Tensor) -> torch.Tensor:
    # quantize_row_q4_0_ref: d = (the value of largest magnitude, first if tied) / -8, nibble = min(15, (int)(x / d
    # + 8.5)); the low nibbles hold values 0-15, the high ones 16-31
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)
    at = blocks.abs().argmax(-1, keepdim=True)
    d = blocks.gather(-1, at) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc(blocks * inv + 8.5).clamp(0, 15).to(torch.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    out = torch.cat((d.to(torch.float16).view(torch.uint8), qs), dim=-1)
    return out.reshape(*x.shape[:-1], -1)
