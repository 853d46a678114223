"""Read GGUF files: metadata, tensor infos and zero-copy views of tensor data.

Layout of a GGUF file (v2/v3, little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv   x  (key: string, value_type: u32, value)
    n_tensors x (name: string, n_dims: u32, dims: u64[n_dims], ggml_type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data (each tensor at data_offset + offset)

A string is a u64 byte length followed by UTF-8 bytes; an array is (elem_type u32, count u64, elems).

A model may also be split across files by llama.cpp's `gguf-split` (or gguf-py's writer with
`split_max_tensors`): NAME-00001-of-00003.gguf .. NAME-00003-of-00003.gguf. Each part is a complete GGUF
file holding some of the tensors; the first part carries all the metadata plus `split.no`, `split.count`
and `split.tensors.count`, and each later part carries only those three keys and its own tensor infos (a
tensor's offset counts from the start of its own part's data section). `GGUFFile` opens any part and reads
the whole model as if it were one file.

Each file is memory-mapped: opening it reads only the header, and `raw()` returns a numpy view of a
tensor's bytes without copying them. Every length and count in the header is checked against the file
size before anything is allocated, so a corrupt or hostile header fails with a `ModelFileError` that says
where and why, never with a MemoryError or a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import os
import re
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

# The keys gguf-split writes into every part (llama.cpp's LLM_KV_SPLIT_*).
SPLIT_NO = "split.no"  # uint16: this part's index, counting from 0
SPLIT_COUNT = "split.count"  # uint16: how many parts; 0 in a file that `gguf-split --merge` joined back
SPLIT_TENSORS_COUNT = "split.tensors.count"  # int32: the tensors of the whole model, all parts together
# How gguf-split names the parts (llama_split_path's "%s-%05d-of-%05d.gguf"), numbered from 1.
SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<part_no>\d{5})-of-(?P<count>\d{5})\.gguf$")


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
    offset: int  # absolute byte offset of the first block in the file (in its part, for a split model)
    n_bytes: int
    part: int = 0  # which file holds it: an index into GGUFFile.parts (always 0 unless the model is split)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class GGUFPart:
    """One memory-mapped .gguf file: its header and its tensors' bytes.

    A model is one part, or several written by gguf-split; `GGUFFile` is what callers open, and it opens its
    parts. `tensors` here are this file's only, each with `part` 0 and an offset into this file."""

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

    @property
    def split_count(self) -> int:
        """How many parts the model has, by this file's `split.count` (1 when it is not split)."""
        return max(self._split_key(SPLIT_COUNT, 1), 1)

    @property
    def split_no(self) -> int:
        """This file's place among the parts, counting from 0 (0 when the model is not split)."""
        return self._split_key(SPLIT_NO, 0)

    def _split_key(self, key: str, default: int) -> int:
        value = self.metadata.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelFileError(f"{self.path.name} is corrupt: {key} is {value!r}, not a part number or count")
        return value

    def raw(self, info: TensorInfo) -> np.ndarray:
        if self._bytes is None:
            raise ValueError(f"{self.path.name} is closed; open it again to read tensor {info.name!r}")
        return self._bytes[info.offset : info.offset + info.n_bytes]

    @property
    def trailing_bytes(self) -> int:
        """Bytes after the end of the last tensor (where the data starts, if the file holds no tensor)."""
        data_end = max((t.offset + t.n_bytes for t in self.tensors.values()), default=self.data_offset)
        return self.file_size - data_end

    def close(self) -> None:
        self._bytes = None  # drop the numpy view first so the mmap has no exported buffers
        if getattr(self, "_mmap", None) is not None:
            # If a caller still holds a view of the data (e.g. a tensor made with torch.from_numpy),
            # close() raises BufferError; the mapping is then released when the last view dies.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    # Filled in by _Parser
    version: int
    alignment: int
    tensor_info_offset: int  # where the tensor-info table starts (the end of the metadata)
    header_size: int  # bytes of magic + counts + metadata + tensor infos (before padding)
    data_offset: int  # absolute offset where tensor data starts (aligned)


class GGUFFile:
    """An open GGUF model, memory-mapped: one file, or every part of a split one. Use as a context manager or
    call `close()`.

    A split model opens from the path of any of its parts and reads as one file: `metadata` comes from the
    first part (the only one that carries it), `tensors` holds the tensors of every part, and `raw()` reads
    each from the part that holds it. `path` is the first part's; `parts` lists every file, in order.
    """

    def __init__(self, path: str | os.PathLike[str]):
        given = GGUFPart(path)
        try:
            self.parts: list[GGUFPart] = _open_parts(given)
            first = self.parts[0]
            self.path = first.path
            self.metadata: dict[str, Any] = first.metadata
            self.metadata_types: dict[str, str] = first.metadata_types
            self.version: int = first.version
            self.alignment: int = first.alignment
            self.data_offset: int = first.data_offset  # where the first part's tensor data starts
            self.tensors: dict[str, TensorInfo] = _all_tensors(self.parts)
        except BaseException:
            for part in getattr(self, "parts", [given]):
                part.close()
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
        return self.parts[info.part].raw(info)

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
    def file_size(self) -> int:
        """Bytes on disk, every part together."""
        return sum(p.file_size for p in self.parts)

    @property
    def header_size(self) -> int:
        """Bytes of every part's header (magic, counts, metadata and tensor infos), before padding."""
        return sum(p.header_size for p in self.parts)

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = f", {len(self.parts)} parts" if len(self.parts) > 1 else ""
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, arch={self.architecture!r}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors{parts})"
        )


# -- split models (gguf-split) --------------------------------------------------------------------------


def split_part_path(prefix: str | os.PathLike[str], part_no: int, count: int) -> Path:
    """The path gguf-split gives part `part_no` (from 1) of `count`: PREFIX-00002-of-00003.gguf."""
    return Path(f"{os.fspath(prefix)}-{part_no:05d}-of-{count:05d}.gguf")


def parse_split_path(path: str | os.PathLike[str]) -> tuple[Path, int, int] | None:
    """(prefix, part_no from 1, count) from a name like PREFIX-00002-of-00003.gguf; None for other names.

    The name alone does not make a file a part: the file's split.* keys decide (see `GGUFFile`)."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    if not match:
        return None
    return path.with_name(match["prefix"]), int(match["part_no"]), int(match["count"])


def gguf_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files that make up the GGUF model at `path`, first part first: [path] for a single file, every
    part for a split model (from the path of any part). Raises ModelFileError if a part is missing."""
    with GGUFFile(path) as g:
        return [part.path for part in g.parts]


def _open_parts(given: GGUFPart) -> list[GGUFPart]:
    """Every part of the model `given` belongs to, in order, `given` among them; [given] if it is not split."""
    count, index = given.split_count, given.split_no
    if count == 1:
        return [given]
    paths = _part_paths(given, index, count)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ModelFileError(_missing_parts_message(given, paths, missing))
    parts: list[GGUFPart] = []
    try:
        for i, part_path in enumerate(paths):
            part = given if i == index else GGUFPart(part_path)
            parts.append(part)
            if (part.split_no, part.split_count) != (i, count):
                raise ModelFileError(_stray_part_message(part, i, count, given))
    except BaseException:
        for part in parts:
            if part is not given:
                part.close()
        raise
    return parts


def _part_paths(given: GGUFPart, index: int, count: int) -> list[Path]:
    # As llama.cpp does (llama_split_prefix), the other parts are found by name: the file must be called
    # PREFIX-0000i-of-0000n.gguf with the i and n its own split.* keys state.
    if index >= count:
        raise ModelFileError(
            f"{given.path.name} is corrupt: its split.no is {index} but split.count is {count} (parts count from 0)"
        )
    parsed = parse_split_path(given.path)
    if parsed is None or parsed[1:] != (index + 1, count):
        raise ModelFileError(
            f"{given.path.name} is part {index + 1} of a model split into {count} files (its split.no and "
            f"split.count say so), but its name does not end in -{index + 1:05d}-of-{count:05d}.gguf, so pellucid "
            f"cannot tell which files are the other parts. Give the parts back the names gguf-split wrote "
            f"(NAME-00001-of-{count:05d}.gguf to NAME-{count:05d}-of-{count:05d}.gguf), all in one folder, and "
            f"pass the first part."
        )
    return [split_part_path(parsed[0], i + 1, count) for i in range(count)]


def _missing_parts_message(given: GGUFPart, paths: list[Path], missing: list[Path]) -> str:
    names = ", ".join(p.name for p in missing)
    return (
        f"{given.path.name} is part {given.split_no + 1} of a model split into {len(paths)} files, and "
        f"{len(missing)} of them {'is' if len(missing) == 1 else 'are'} missing from {given.path.parent}: "
        f"{names}. Put every part in that folder under the name gguf-split gave it (download the missing "
        f"ones from where the others came from), then pass the first part, {paths[0].name}."
    )


def _stray_part_message(part: GGUFPart, index: int, count: int, given: GGUFPart) -> str:
    if part.split_count == 1:
        says = "it is not a part of a split model (it has no split.count)"
    else:
        says = f"it says it is part {part.split_no + 1} of {part.split_count}"
    return (
        f"{part.path.name} does not belong with {given.path.name}: its name makes it part {index + 1} of "
        f"{count}, but {says}. The parts must all come from one gguf-split run; re-download the parts that "
        f"do not match (in {part.path.parent})."
    )


def _all_tensors(parts: list[GGUFPart]) -> dict[str, TensorInfo]:
    """Every part's tensors in one dict, each marked with the part that holds it."""
    tensors: dict[str, TensorInfo] = {}
    for i, part in enumerate(parts):
        for name, info in part.tensors.items():
            if name in tensors:
                other = parts[tensors[name].part].path.name
                raise ModelFileError(
                    f"tensor {name!r} is in both {other} and {part.path.name}: these files are parts of "
                    f"different splits. Re-download the parts so that all come from one gguf-split run."
                )
            tensors[name] = info if i == 0 else dataclasses.replace(info, part=i)
    expected = parts[0].metadata.get(SPLIT_TENSORS_COUNT)
    if len(parts) > 1 and expected != len(tensors):
        raise ModelFileError(
            f"{parts[0].path.name} says the model has {expected} tensors ({SPLIT_TENSORS_COUNT}), but its "
            f"{len(parts)} parts hold {len(tensors)}: some parts come from a different split of the model. "
            f"Re-download the parts so that all come from one gguf-split run."
        )
    return tensors


class _Parser:
    """Walks the header once, checking every length against the bytes that remain."""

    def __init__(self, gguf: GGUFPart):
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
