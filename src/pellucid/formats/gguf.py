"""Read GGUF files: metadata, tensor infos and zero-copy views of tensor data.

Layout of a GGUF file (v2/v3, little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv   x  (key: string, value_type: u32, value)
    n_tensors x (name: string, n_dims: u32, dims: u64[n_dims], ggml_type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data (each tensor at data_offset + offset)

A string is a u64 byte length followed by UTF-8 bytes; an array is (elem_type u32, count u64, elems).

The file is memory-mapped: opening it reads only the header, and `raw()` returns a numpy view of a
tensor's bytes without copying them. Every length and count in the header is checked against the file
size before anything is allocated, so a corrupt or hostile header fails with a `ModelFileError` that says
where and why, never with a MemoryError or a traceback.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from pellucid.errors import ModelFileError
from pellucid.quant.types import BLOCK_LAYOUT, GGMLType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most 4 dimensions
MAX_ARRAY_NESTING = 8


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype of each fixed-size value type (little-endian).
_SCALAR_DTYPES: dict[ValueType, np.dtype] = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}

# Smallest possible encodings, used to reject absurd counts before allocating anything.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims=0, type, offset


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how it is encoded."""

    name: str
    shape: tuple[int, ...]  # PyTorch order: ggml's dims reversed, so a weight is (out_features, in_features)
    ggml_type: GGMLType
    offset: int  # absolute byte offset of the first block in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class GGUFFile:
    """An open, memory-mapped GGUF file. Use as a context manager or call `close()`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self.file_size = self.path.stat().st_size
        except FileNotFoundError:
            raise ModelFileError(f"no such file: {self.path}") from None
        if self.path.is_dir():
            raise ModelFileError(f"{self.path} is a folder, not a GGUF file")
        if self.file_size == 0:
            raise ModelFileError(f"{self.path} is empty (0 bytes); re-download it")
        try:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: private copy-on-write mapping, so tensors can be wrapped by torch without the
                # "non-writable buffer" warning; nothing is ever written back to the file.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise ModelFileError(f"cannot read {self.path}: {e.strerror or e}") from None
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, str] = {}  # key -> "uint32", "string", "array[string]", ...
        # key -> (start, end) bytes of its whole entry (key, type, value), for `inspect --map`
        self.metadata_spans: dict[str, tuple[int, int]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            _Parser(self).parse()
        except BaseException:
            self.close()
            raise

    # -- metadata helpers -------------------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """`{architecture}.{suffix}`, e.g. arch_get("block_count")."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    # -- tensor data ------------------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's encoded bytes as a uint8 numpy view into the mapped file (no copy)."""
        info = self._info(name)
        if self._bytes is None:
            raise ValueError(f"{self.path.name} is closed; open it again to read tensor {name!r}")
        return self._bytes[info.offset : info.offset + info.n_bytes]

    def tensor(self, name: str, dtype=None, device=None):
        """The tensor dequantized to a new torch tensor of `info.shape` (float32 unless `dtype` says).

        With `device` (e.g. "cuda") the packed bytes are moved there first and decoded on that device.
        """
        from pellucid.quant.dequant import dequantize  # torch is imported only when tensors are needed

        info = self._info(name)
        return dequantize(self.raw(name), info.ggml_type, info.shape, dtype=dtype, device=device)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.path.name} has no tensor named {name!r}") from None

    # -- layout facts (for `inspect`) -------------------------------------------------------------------
    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    def close(self) -> None:
        self._bytes = None  # drop the numpy view first so the mmap has no exported buffers
        if getattr(self, "_mmap", None) is not None:
            # If a caller still holds a view of the data (e.g. a tensor made with torch.from_numpy),
            # close() raises BufferError; the mapping is then released when the last view dies.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, arch={self.architecture!r}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors)"
        )

    # Filled in by _Parser
    version: int
    alignment: int
    tensor_info_offset: int  # where the tensor-info table starts (the end of the metadata)
    header_size: int  # bytes of magic + counts + metadata + tensor infos (before padding)
    data_offset: int  # absolute offset where tensor data starts (aligned)


class _Parser:
    """Walks the header once, checking every length against the bytes that remain."""

    def __init__(self, gguf: GGUFFile):
        self.g = gguf
        self.buf = gguf._mmap
        self.size = gguf.file_size
        self.pos = 0

    # -- primitive reads --------------------------------------------------------------------------------
    def _fail_truncated(self, what: str, need: int) -> None:
        raise ModelFileError(
            f"{self.g.path.name} is truncated: reading {what} at byte {self.pos:,} needs {need:,} more "
            f"bytes but the file ends at byte {self.size:,}. The download was probably cut short; "
            f"re-download it (for a catalog model: `pellucid pull NAME --force`)."
        )

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            self._fail_truncated(what, n)

    def _unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self._need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value[0] if len(value) == 1 else value

    def _string(self, what: str) -> str:
        length = self._unpack("<Q", f"the length of {what}")
        self._need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    # -- header -----------------------------------------------------------------------------------------
    def parse(self) -> None:
        g = self.g
        if self.size < 4:
            self._fail_truncated("the magic bytes", 4)
        magic = bytes(self.buf[0:4])
        if magic != GGUF_MAGIC:
            raise ModelFileError(_not_gguf_message(g.path, magic))
        self.pos = 4
        version = self._unpack("<I", "the format version")
        if version not in SUPPORTED_VERSIONS:
            raise ModelFileError(_version_message(g.path, version))
        g.version = version
        n_tensors = self._unpack("<Q", "the tensor count")
        n_kv = self._unpack("<Q", "the metadata count")
        remaining = self.size - self.pos
        for count, what, min_bytes in (
            (n_kv, "metadata entries", _MIN_KV_BYTES),
            (n_tensors, "tensors", _MIN_TENSOR_INFO_BYTES),
        ):
            if count * min_bytes > remaining:
                raise ModelFileError(
                    f"{g.path.name} is truncated or corrupt: its header claims {count:,} {what}, which cannot "
                    f"fit in the {remaining:,} bytes left after byte {self.pos:,} (the file ends at byte "
                    f"{self.size:,}). If it was downloaded, re-download it (for a catalog model: "
                    f"`pellucid pull NAME --force`)."
                )
        for _ in range(n_kv):
            self._read_kv()
        g.tensor_info_offset = self.pos
        infos = [self._read_tensor_info() for _ in range(n_tensors)]
        g.header_size = self.pos
        g.alignment = self._alignment()
        g.data_offset = _align_up(self.pos, g.alignment)
        self._place_tensors(infos)

    def _read_kv(self) -> None:
        start = self.pos
        key = self._string("a metadata key")
        vtype = self._value_type(f"the type of metadata {key!r}")
        value, type_name = self._value(vtype, key, depth=0)
        if key in self.g.metadata:
            raise ModelFileError(f"{self.g.path.name} is corrupt: metadata key {key!r} appears twice")
        self.g.metadata[key] = value
        self.g.metadata_types[key] = type_name
        self.g.metadata_spans[key] = (start, self.pos)

    def _value_type(self, what: str) -> ValueType:
        raw = self._unpack("<I", what)
        try:
            return ValueType(raw)
        except ValueError:
            raise ModelFileError(
                f"{self.g.path.name} is corrupt: {what} is {raw}, not a GGUF value type (0-12), "
                f"at byte {self.pos - 4:,}"
            ) from None

    def _value(self, vtype: ValueType, key: str, depth: int) -> tuple[Any, str]:
        if vtype == ValueType.STRING:
            return self._string(f"metadata {key!r}"), "string"
        if vtype == ValueType.ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise ModelFileError(f"{self.g.path.name} is corrupt: metadata {key!r} nests arrays too deeply")
            elem_type = self._value_type(f"the element type of metadata {key!r}")
            count = self._unpack("<Q", f"the length of metadata {key!r}")
            return self._array(elem_type, count, key, depth)
        dtype = _SCALAR_DTYPES[vtype]
        self._need(dtype.itemsize, f"metadata {key!r}")
        value = np.frombuffer(self.buf, dtype=dtype, count=1, offset=self.pos)[0].item()
        self.pos += dtype.itemsize
        if vtype == ValueType.BOOL:
            value = bool(value)
        return value, vtype.name.lower()

    def _array(self, elem_type: ValueType, count: int, key: str, depth: int) -> tuple[Any, str]:
        remaining = self.size - self.pos
        if elem_type in _SCALAR_DTYPES:
            dtype = _SCALAR_DTYPES[elem_type]
            if count * dtype.itemsize > remaining:
                self._fail_truncated(f"metadata array {key!r} ({count:,} x {elem_type.name})", count * dtype.itemsize)
            # A copy (at most a few MB, e.g. token scores), so metadata outlives the mapping and close()
            # can unmap the file.
            values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            if elem_type == ValueType.BOOL:
                values = values.astype(bool)
            return values, f"array[{elem_type.name.lower()}]"
        # Strings and nested arrays take at least 8 bytes each (their length).
        if count * 8 > remaining:
            self._fail_truncated(f"metadata array {key!r} ({count:,} x {elem_type.name})", count * 8)
        if elem_type == ValueType.STRING:
            return self._string_array(count, key), "array[string]"
        items = [self._value(elem_type, key, depth + 1)[0] for _ in range(count)]
        return items, "array[array]"

    def _string_array(self, count: int, key: str) -> list[str]:
        # A hot loop on big vocabularies (262k tokens for Gemma), so it avoids per-item method calls.
        buf, size, pos = self.buf, self.size, self.pos
        unpack_len = struct.Struct("<Q").unpack_from
        out = [""] * count
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self._fail_truncated(f"item {i:,} of metadata array {key!r}", 8)
            (length,) = unpack_len(buf, pos)
            pos += 8
            if pos + length > size:
                self.pos = pos
                self._fail_truncated(f"item {i:,} of metadata array {key!r}", length)
            out[i] = buf[pos : pos + length].decode("utf-8", errors="replace")
            pos += length
        self.pos = pos
        return out

    # -- tensor infos -----------------------------------------------------------------------------------
    def _read_tensor_info(self) -> tuple[str, tuple[int, ...], GGMLType, int]:
        name = self._string("a tensor name")
        n_dims = self._unpack("<I", f"the rank of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise ModelFileError(
                f"{self.g.path.name} is corrupt: tensor {name!r} claims {n_dims} dimensions (ggml allows {MAX_DIMS})"
            )
        dims = tuple(self._unpack("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        raw_type = self._unpack("<I", f"the type of tensor {name!r}")
        offset = self._unpack("<Q", f"the data offset of tensor {name!r}")
        try:
            ggml_type = GGMLType(raw_type)
        except ValueError:
            raise ModelFileError(
                f"{self.g.path.name}: tensor {name!r} has ggml type {raw_type}, which pellucid does not know. "
                f"The file may be newer than this pellucid or corrupt."
            ) from None
        return name, dims, ggml_type, offset

    def _alignment(self) -> int:
        alignment = self.g.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelFileError(
                f"{self.g.path.name} is corrupt: general.alignment is {alignment!r}, not a power of two"
            )
        return alignment

    def _place_tensors(self, infos: list[tuple[str, tuple[int, ...], GGMLType, int]]) -> None:
        g = self.g
        end_of_data = g.data_offset
        for name, dims, ggml_type, rel_offset in infos:
            if name in g.tensors:
                raise ModelFileError(f"{g.path.name} is corrupt: tensor {name!r} appears twice")
            n_elements = 1
            for d in dims:
                n_elements *= d
            layout = BLOCK_LAYOUT[ggml_type]
            if dims and dims[0] % layout.block_size:
                raise ModelFileError(
                    f"{g.path.name} is corrupt: tensor {name!r} has rows of {dims[0]} weights, not a multiple "
                    f"of the {ggml_type.name} block size {layout.block_size}"
                )
            if rel_offset % g.alignment:
                raise ModelFileError(
                    f"{g.path.name} is corrupt: tensor {name!r} starts at offset {rel_offset}, not aligned to "
                    f"{g.alignment} bytes"
                )
            n_bytes = n_elements // layout.block_size * layout.type_size
            offset = g.data_offset + rel_offset
            g.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, offset, n_bytes)
            end_of_data = max(end_of_data, offset + n_bytes)
        if g.tensors and end_of_data > self.size:
            last = max(g.tensors.values(), key=lambda t: t.offset + t.n_bytes)
            raise ModelFileError(
                f"{g.path.name} is truncated: its tensors need {end_of_data:,} bytes (tensor {last.name!r} "
                f"ends there) but the file has only {self.size:,}. The download was probably cut short; "
                f"re-download it (for a catalog model: `pellucid pull NAME --force`)."
            )


def _align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _not_gguf_message(path: Path, magic: bytes) -> str:
    hint = ""
    if magic[:2] == b"PK" or magic[:1] == b"\x80":
        hint = (
            " It looks like a PyTorch pickle checkpoint; pellucid refuses those because unpickling can run "
            "arbitrary code. Use the model's .safetensors or .gguf release instead."
        )
    elif magic == b"FUGG":
        hint = " It looks like a big-endian GGUF file; pellucid reads little-endian GGUF only."
    elif magic[:1] == b"{":
        hint = " It looks like JSON; point pellucid at the model folder or the .gguf file instead."
    elif magic in (b"ggml", b"ggmf", b"ggjt", b"lmgg", b"fmgg", b"tjgg"):
        hint = " It is a pre-GGUF ggml file; convert it to GGUF with llama.cpp's conversion scripts."
    return f"{path.name} is not a GGUF file: it starts with {magic!r}, a GGUF file starts with b'GGUF'.{hint}"


def _version_message(path: Path, version: int) -> str:
    if version == 1:
        return (
            f"{path.name} is GGUF version 1, an early format that pellucid does not read (v2 and v3 only). "
            f"Re-convert the model with a current llama.cpp."
        )
    if version > 0xFFFF:
        return f"{path.name} has GGUF version {version:#x}; it may be a big-endian GGUF file, which pellucid does not read."
    return (
        f"{path.name} is GGUF version {version}; pellucid reads versions "
        f"{', '.join(map(str, SUPPORTED_VERSIONS))}. It may be newer than this pellucid."
    )


def open_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    return GGUFFile(path)
