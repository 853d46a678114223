"""Read Hugging Face model folders: config.json, tokenizer config, chat template, and safetensors weights.

A folder holds `config.json`, the weights as one `model.safetensors` or as shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> file), and tokenizer files. A safetensors file is

    header length N: u64 little-endian | N bytes of JSON | the tensor bytes

where the JSON maps each tensor name to {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}
(offsets relative to the end of the JSON) plus an optional "__metadata__" of strings. Opening a folder
reads only these headers and checks every one against its file, so a truncated or corrupt file fails here
with a ModelFileError that names it; tensors are read on demand through the `safetensors` library's
memory-mapped `safe_open`, one tensor at a time.

What pellucid refuses, and why: pickle checkpoints (`pytorch_model.bin`, `*.pt`), because loading them
runs code from the file; and `auto_map` in config.json, which asks the loader to import Python code
shipped with the model. pellucid only ever runs its own code.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.store import PICKLE_SUFFIXES, refuse_pickle_message

SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

# safetensors dtype name -> torch dtype
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class SafetensorInfo:
    """Where one tensor lives and how it is stored."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # as written in the file: "F32", "BF16", ...
    file: Path
    offset: int  # absolute byte offset in `file`
    n_bytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class SafetensorsHeader:
    """The parsed header of one .safetensors file."""

    path: Path
    data_offset: int  # 8 + header length: where tensor bytes start
    tensors: dict[str, SafetensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and check a safetensors header without touching tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"it is {size} bytes long, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise _corrupt(path, f"its header claims {header_len:,} bytes (at most {MAX_HEADER_BYTES:,} allowed)")
            if 8 + header_len > size:
                raise _corrupt(
                    path, f"its header claims {header_len:,} bytes but only {size - 8:,} follow; it is truncated"
                )
            raw_header = f.read(header_len)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"its JSON header does not parse ({e})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its JSON header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _corrupt(path, "its __metadata__ is not an object")
    data_offset = 8 + header_len
    tensors = {name: _tensor_info(path, name, entry, data_offset, size) for name, entry in header.items()}
    _check_no_overlap(path, tensors)
    return SafetensorsHeader(path=path, data_offset=data_offset, tensors=tensors, metadata=metadata)


def _tensor_info(path: Path, name: str, entry: Any, data_offset: int, file_size: int) -> SafetensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _corrupt(path, f"the header entry for {name!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise UnsupportedError(
            f"{path.name}: tensor {name!r} has dtype {dtype!r}, which pellucid does not read "
            f"(it reads {', '.join(DTYPES)})"
        )
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _corrupt(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _corrupt(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    n_elements = 1
    for d in shape:
        n_elements *= d
    n_bytes = n_elements * DTYPES[dtype].itemsize
    if not 0 <= begin <= end or end - begin != n_bytes:
        raise _corrupt(
            path, f"tensor {name!r} ({dtype} {shape}) needs {n_bytes:,} bytes but its data_offsets are {offsets}"
        )
    if data_offset + end > file_size:
        raise _corrupt(
            path,
            f"tensor {name!r} ends at byte {data_offset + end:,} but the file has only {file_size:,}; "
            f"it is truncated (re-download it)",
        )
    return SafetensorInfo(name, tuple(shape), dtype, path, data_offset + begin, n_bytes)


def _check_no_overlap(path: Path, tensors: dict[str, SafetensorInfo]) -> None:
    previous = None
    for info in sorted(tensors.values(), key=lambda t: (t.offset, t.n_bytes)):
        if previous is not None and info.offset < previous.offset + previous.n_bytes:
            raise _corrupt(path, f"tensors {previous.name!r} and {info.name!r} overlap")
        previous = info


def _corrupt(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path.name} is not a valid safetensors file: {why}")


# -- the folder -------------------------------------------------------------------------------------------


class HFFolder:
    """An open Hugging Face model folder. Use as a context manager or call `close()`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelFileError(f"{self.path} is not a folder; a Hugging Face model is a folder with config.json")
        self.config: dict[str, Any] = _read_json(self.path / "config.json", required=True)
        _refuse_remote_code(self.path, self.config)
        self.tokenizer_config: dict[str, Any] | None = _read_json(self.path / "tokenizer_config.json")
        self.chat_templates: dict[str, str] = _chat_templates(self.path, self.tokenizer_config)
        self.files: list[Path] = _weight_files(self.path)
        self.headers: dict[Path, SafetensorsHeader] = {f: read_safetensors_header(f) for f in self.files}
        self.tensors: dict[str, SafetensorInfo] = _collect_tensors(self.path, self.headers)
        self._handles: dict[Path, Any] = {}
        self._maps: dict[Path, np.ndarray] = {}

    @property
    def tokenizer_json(self) -> Path | None:
        path = self.path / "tokenizer.json"
        return path if path.is_file() else None

    @property
    def chat_template(self) -> str | None:
        """The default chat template (a folder may name several, e.g. "default" and "tool_use")."""
        return self.chat_templates.get("default")

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def tensor(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """The tensor as a new torch tensor (never a view of the mapped file, so it may be modified)."""
        info = self._info(name)
        handle = self._handle(info.file)
        try:
            stored = handle.get_tensor(name)
        except Exception as e:  # the library's SafetensorError and friends: the file changed or is corrupt
            raise ModelFileError(f"{info.file.name}: cannot read tensor {name!r}: {e}") from None
        converted = stored.to(device=device, dtype=dtype)
        return converted.clone() if converted.data_ptr() == stored.data_ptr() else converted

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 numpy view into the memory-mapped file (no copy; copy-on-write, so
        the file is never modified). The mapping lives as long as a view of it does."""
        info = self._info(name)
        if self._handles is None:
            raise ValueError(f"{self.path.name} is closed; open it again to read tensors")
        if info.file not in self._maps:
            with open(info.file, "rb") as f:
                self._maps[info.file] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), np.uint8)
        return self._maps[info.file][info.offset : info.offset + info.n_bytes]

    def _info(self, name: str) -> SafetensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.path.name} has no tensor named {name!r}") from None

    def _handle(self, file: Path):
        if self._handles is None:
            raise ValueError(f"{self.path.name} is closed; open it again to read tensors")
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file]

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    def close(self) -> None:
        self._handles = None  # the library unmaps a file when its handle is dropped
        self._maps = {}  # ours are unmapped when the last tensor viewing them is gone

    def __enter__(self) -> HFFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HFFolder({str(self.path)!r}, model_type={self.model_type!r}, {len(self.tensors)} tensors in {len(self.files)} files)"


def open_hf_folder(path: str | os.PathLike[str]) -> HFFolder:
    return HFFolder(path)


def _read_json(path: Path, required: bool = False) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise ModelFileError(
                f"{path.parent} has no {path.name}, so it is not a Hugging Face model folder. Point pellucid at "
                f"a .gguf file or a folder with config.json, tokenizer.json and *.safetensors."
            )
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path} is not valid JSON ({e}); re-download the model folder") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} should hold a JSON object, not {type(value).__name__}")
    return value


def _refuse_remote_code(folder: Path, config: dict[str, Any]) -> None:
    auto_map = config.get("auto_map")
    if auto_map:
        classes = ", ".join(f"{k} -> {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else auto_map
        raise ModelFileError(
            f"{folder.name} needs Python code shipped with the model (config.json auto_map: {classes}). "
            f"pellucid never runs code that comes with a model, the way `trust_remote_code=True` would in "
            f"transformers. Use a GGUF conversion of this model, or a model whose architecture pellucid "
            f"implements itself."
        )


def _chat_templates(folder: Path, tokenizer_config: dict[str, Any] | None) -> dict[str, str]:
    """Chat templates by name, from chat_template.jinja (preferred, as transformers does), chat_template.json
    or tokenizer_config.json (a string, or a list of {"name", "template"})."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return {"default": jinja.read_text(encoding="utf-8")}
    sources = [_read_json(folder / "chat_template.json"), tokenizer_config]
    for source in sources:
        value = (source or {}).get("chat_template")
        if isinstance(value, str):
            return {"default": value}
        if isinstance(value, list):
            templates = {
                t["name"]: t["template"] for t in value if isinstance(t, dict) and {"name", "template"} <= t.keys()
            }
            if templates:
                return templates
    return {}


def _weight_files(folder: Path) -> list[Path]:
    """The .safetensors files that hold the model: the index's shards, model.safetensors, or all of them."""
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(f"{index_path} has no weight_map; re-download the model folder")
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            path = folder / str(shard)
            if Path(str(shard)).is_absolute() or ".." in Path(str(shard)).parts:
                raise ModelFileError(f"{index_path.name} points outside the folder ({shard!r}); refusing it")
            if not path.is_file():
                raise ModelFileError(
                    f"{folder.name} is incomplete: {index_path.name} lists {shard}, which is missing. "
                    f"Re-download the model folder."
                )
            files.append(path)
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFileError(refuse_pickle_message(pickles[0]))
    raise ModelFileError(f"{folder} has a config.json but no *.safetensors weights")


def _collect_tensors(folder: Path, headers: dict[Path, SafetensorsHeader]) -> dict[str, SafetensorInfo]:
    tensors: dict[str, SafetensorInfo] = {}
    for header in headers.values():
        for name, info in header.tensors.items():
            if name in tensors:
                raise ModelFileError(
                    f"{folder.name}: tensor {name!r} is in both {tensors[name].file.name} and {info.file.name}"
                )
            tensors[name] = info
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        weight_map = _read_json(index_path)["weight_map"]
        for name, shard in weight_map.items():
            if name not in tensors or tensors[name].file != folder / str(shard):
                raise ModelFileError(
                    f"{folder.name}: {index_path.name} says tensor {name!r} is in {shard}, but it is not there. "
                    f"Re-download the model folder."
                )
    return tensors
