"""The ggml tensor types: one table naming every type, its block size and its bytes per block.

A quantized tensor is stored as a sequence of fixed-size blocks; each block packs `block_size` weights
into `type_size` bytes (scales, mins and packed integers). The numbers here come from ggml's
`ggml_type_traits` table and are the only place pellucid states them.
"""

from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class BlockLayout:
    block_size: int  # weights per block
    type_size: int  # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size


# (weights per block, bytes per block), as in ggml's type traits.
BLOCK_LAYOUT: dict[GGMLType, BlockLayout] = {
    GGMLType.F32: BlockLayout(1, 4),
    GGMLType.F16: BlockLayout(1, 2),
    GGMLType.Q4_0: BlockLayout(32, 18),
    GGMLType.Q4_1: BlockLayout(32, 20),
    GGMLType.Q5_0: BlockLayout(32, 22),
    GGMLType.Q5_1: BlockLayout(32, 24),
    GGMLType.Q8_0: BlockLayout(32, 34),
    GGMLType.Q8_1: BlockLayout(32, 40),
    GGMLType.Q2_K: BlockLayout(256, 84),
    GGMLType.Q3_K: BlockLayout(256, 110),
    GGMLType.Q4_K: BlockLayout(256, 144),
    GGMLType.Q5_K: BlockLayout(256, 176),
    GGMLType.Q6_K: BlockLayout(256, 210),
    GGMLType.Q8_K: BlockLayout(256, 292),
    GGMLType.IQ2_XXS: BlockLayout(256, 66),
    GGMLType.IQ2_XS: BlockLayout(256, 74),
    GGMLType.IQ3_XXS: BlockLayout(256, 98),
    GGMLType.IQ1_S: BlockLayout(256, 50),
    GGMLType.IQ4_NL: BlockLayout(32, 18),
    GGMLType.IQ3_S: BlockLayout(256, 110),
    GGMLType.IQ2_S: BlockLayout(256, 82),
    GGMLType.IQ4_XS: BlockLayout(256, 136),
    GGMLType.I8: BlockLayout(1, 1),
    GGMLType.I16: BlockLayout(1, 2),
    GGMLType.I32: BlockLayout(1, 4),
    GGMLType.I64: BlockLayout(1, 8),
    GGMLType.F64: BlockLayout(1, 8),
    GGMLType.IQ1_M: BlockLayout(256, 56),
    GGMLType.BF16: BlockLayout(1, 2),
    GGMLType.TQ1_0: BlockLayout(256, 54),
    GGMLType.TQ2_0: BlockLayout(256, 66),
    GGMLType.MXFP4: BlockLayout(32, 17),  # u8 E8M0 exponent, then 16 bytes of 4-bit E2M1 floats
}


# The types a KV cache can be stored in (llama.cpp's -ctk/-ctv names): name -> ggml type, whose BLOCK_LAYOUT gives
# the bytes. quant/kv_blocks.py encodes and decodes them; a row of head_dim values is head_dim / block_size blocks.
KV_CACHE_TYPES: dict[str, GGMLType] = {
    "f32": GGMLType.F32,
    "f16": GGMLType.F16,
    "bf16": GGMLType.BF16,
    "q8_0": GGMLType.Q8_0,
    "q4_0": GGMLType.Q4_0,
}
# The KV type the engine uses unless told otherwise: f16, as llama.cpp. Measured (`pellucid ppl`, ctx 512, 3 windows
# of English prose, default arithmetic): SmolLM2-135M f32 16.294, f16 16.298 (+0.02%), bf16 16.347 (+0.33%), q8_0
# 16.355 (+0.37%); Gemma 3 270M f32 13.714, f16 13.728 (+0.10%), bf16 13.735 (+0.15%), q8_0 13.800 (+0.62%). f16
# keeps the f32 cache's quality for half its bytes (the smallest move of the halving types: 3 more mantissa bits
# than bf16, and keys/values need no more range than its 65k);
# teacher-forced top-1 against llama.cpp's references (made with its f16 cache) stays >= 90% for f16, bf16 and q8_0
# (tests/test_model_kv_types.py). q8_0 halves the bytes again at a measurable cost: opt-in. Exact mode (--exact,
# the tests) keeps float32 everywhere, the cache included, so a cached forward still equals an uncached one.
DEFAULT_KV_TYPE = "f16"


def default_kv_type() -> str:
    """The KV type when none is asked for: f32 in exact mode, else DEFAULT_KV_TYPE."""
    from pellucid.arithmetic import exact_requested

    return "f32" if exact_requested() else DEFAULT_KV_TYPE


def check_kv_type(name: str | None) -> str:
    """`name` as a KV type (None = the default); a clear error naming the choices otherwise."""
    from pellucid.errors import PellucidError

    if name is None:
        return default_kv_type()
    key = str(name).lower()
    if key not in KV_CACHE_TYPES:
        raise PellucidError(f"unknown KV cache type {name!r}: choose one of {', '.join(KV_CACHE_TYPES)}")
    return key


def kv_row_bytes(kv_type: str, dim: int) -> int:
    """Bytes one cached row of `dim` values (a head's key or value) takes in `kv_type`; the block types need dim to
    be a multiple of their block (a clear error otherwise, as llama.cpp refuses it)."""
    layout = BLOCK_LAYOUT[KV_CACHE_TYPES[kv_type]]
    if dim % layout.block_size:
        from pellucid.errors import UnsupportedError

        raise UnsupportedError(
            f"a {kv_type} KV cache needs a head dimension that is a multiple of {layout.block_size}; this model's "
            f"is {dim} (llama.cpp refuses it too): use --kv-type (or -ctk/-ctv) f16, bf16 or f32"
        )
    return dim // layout.block_size * layout.type_size


def tensor_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    """Bytes a tensor of `n_elements` weights occupies; the caller checks divisibility first."""
    layout = BLOCK_LAYOUT[ggml_type]
    return n_elements // layout.block_size * layout.type_size


# general.file_type: what llama.cpp's quantizer calls the file's "mostly" precision.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
