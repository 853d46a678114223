"""What this process holds in memory, and how: resident memory, its peak, and which tensors are file pages.

`explain` uses these to split the process's memory into runtime / weights / KV cache / activations with
numbers the kernel itself reports (Linux /proc; elsewhere the functions return None and the report says
"not measured"):

- `rss_bytes()`: resident memory now (VmRSS).
- `reset_peak()` + `peak_bytes()`: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the
  current RSS, so the peak read after a run is that run's own, not the load's.
- `tensor_storage(model, files)`: every weight tensor's bytes by storage type (Q4_K, F32, ...), and whether
  it is a view of the memory-mapped model file (its pages come from the file and cost no copy) or was
  converted into process memory at load (dequantized, re-laid-out, unpacked scales). A tensor counts as
  mapped when its address lies inside a mapping of one of the model's files, as /proc/self/maps lists them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch


def _status_field(name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """The process's resident memory now (Linux /proc), or None where that cannot be read."""
    return _status_field("VmRSS")


def peak_bytes() -> int | None:
    """The highest resident memory since the process started or since `reset_peak()`."""
    return _status_field("VmHWM")


def reset_peak() -> bool:
    """Start the peak over from the current RSS (Linux 4.0+); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def file_mappings(files: list[Path]) -> list[tuple[int, int]]:
    """The address ranges at which `files` are memory-mapped in this process."""
    wanted = {str(Path(f).resolve()) for f in files}
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() in wanted:
                    start, end = fields[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return ranges


def mapped_resident_bytes(files: list[Path], model: torch.nn.Module | None = None) -> int | None:
    """How many bytes of `files`' memory mappings are resident in this process now (Rss in /proc/self/smaps);
    with `model`, only the mappings its tensors lie in (a process may have the same file mapped more than once,
    e.g. by two loaded copies of a model)."""
    wanted = {str(Path(f).resolve()) for f in files}
    addresses = None
    if model is not None:
        addresses = [t.data_ptr() for t in model.parameters() if t.device.type == "cpu" and t.numel()]
    total, current = 0, None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                    current = None
                    if len(fields) > 5 and fields[5] in wanted:
                        lo, hi = (int(x, 16) for x in fields[0].split("-"))
                        if addresses is None or any(lo <= a < hi for a in addresses):
                            current = fields[5]
                elif fields[:1] == ["Rss:"] and current is not None:
                    total += int(fields[1]) * 1024
    except OSError:
        return None
    return total


def repacked_bytes(model: torch.nn.Module) -> int:
    """Bytes of the copies the native kernels made of matrices, repacked 8 rows interleaved at their first
    product (quant/kernels._native_spec remembers them on the matrix)."""
    total = 0
    for module in model.modules():
        cached = module.__dict__.get("_native_spec")
        if cached and cached[1] and cached[1][0].endswith("x8"):
            total += sum(t.numel() * t.element_size() for t in cached[1][1])
    return total


def _storage_label(owner: torch.nn.Module, tensor: torch.Tensor) -> str:
    ggml_type = getattr(owner, "ggml_type", None)
    if ggml_type is not None:
        name = ggml_type.name
        return name if type(owner).__name__ != "Q8G" else f"{name} as int8 groups"
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}.get(tensor.dtype, str(tensor.dtype))


def model_files(path: Path) -> list[Path]:
    """The files a model's weights are read from: the GGUF file (every part of a gguf-split model, by name),
    or a Hugging Face folder's safetensors shards."""
    from pellucid.formats.gguf import parse_split_path, split_part_path

    path = Path(path)
    if path.is_dir():
        return sorted(path.glob("*.safetensors"))
    split = parse_split_path(path)
    if split is not None:
        prefix, _, count = split
        return [split_part_path(prefix, i + 1, count) for i in range(count)]
    return [path]


def tensor_storage(model: torch.nn.Module, files: list[Path]) -> list[dict]:
    """Weight bytes by storage type: [{"type", "tensors", "bytes", "mapped_bytes", "converted_bytes"}], largest
    first. Each tensor is counted once (a tied output head shares the embedding's)."""
    mapped_ranges = file_mappings(files)
    seen: set[tuple[int, int]] = set()
    rows: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "mapped_bytes": 0, "converted_bytes": 0})
    for owner in model.modules():
        for tensor in owner.parameters(recurse=False):  # weights; buffers (RoPE tables) are not from the file
            if tensor.numel() == 0:
                continue
            size = tensor.numel() * tensor.element_size()
            key = (tensor.data_ptr(), size)
            if key in seen:
                continue
            seen.add(key)
            row = rows[_storage_label(owner, tensor)]
            row["tensors"] += 1
            row["bytes"] += size
            address = tensor.data_ptr()
            mapped = tensor.device.type == "cpu" and any(lo <= address < hi for lo, hi in mapped_ranges)
            row["mapped_bytes" if mapped else "converted_bytes"] += size
    return sorted(({"type": t, **r} for t, r in rows.items()), key=lambda r: -r["bytes"])


__all__ = [
    "file_mappings",
    "mapped_resident_bytes",
    "model_files",
    "repacked_bytes",
    "peak_bytes",
    "reset_peak",
    "rss_bytes",
    "tensor_storage",
]
