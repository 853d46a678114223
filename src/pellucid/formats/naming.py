"""The GGUF file-naming convention: what a name like `Mixtral-8x7B-v0.1-KQ2.gguf` says about the model.

The convention (ggml docs/gguf.md, "GGUF Naming Convention") is

    [<Sidecar>-]<BaseName>-<SizeLabel>[-<FineTune>]-<Version>[-<Encoding>][-<Type>][-<Shard>].gguf

e.g. `Grok-100B-v1.0-Q4_0-00003-of-00009.gguf`. The spec gives a regular expression that *validates* a
name (it requires BaseName, SizeLabel and Version); a name that passes is `conforming`. Most files in the
wild do not (`gemma-3-270m-q4_k_m.gguf` has no version; `SmolLM2-135M-Instruct.Q4_1.gguf` puts a '.'
before the encoding), so other names are parsed leniently, component by component from the right, and
marked `conforming=False`. The name is a hint for display; the file's metadata is the authority.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePath

# The spec's validation regex, in Python's named-group syntax.
CONFORMING_NAME = re.compile(
    r"^(?:(?P<sidecar>mmproj|mtp)-)?"
    r"(?P<base_name>[A-Za-z0-9\s]*(?:(?:-(?:(?:[A-Za-z\s][A-Za-z0-9\s]*)|(?:[0-9\s]*)))*))"
    r"-(?:(?P<size_label>(?:\d+x)?(?:\d+\.)?\d+[A-Za-z](?:-[A-Za-z]+(\d+\.)?\d+[A-Za-z]+)?)"
    r"(?:-(?P<fine_tune>[A-Za-z0-9\s-]+))?)?"
    r"-(?:(?P<version>v\d+(?:\.\d+)*))"
    r"(?:-(?P<encoding>(?!LoRA|vocab)[\w_]+))?"
    r"(?:-(?P<type>LoRA|vocab))?"
    r"(?:-(?P<shard>\d{5}-of-\d{5}))?\.gguf$"
)

SIDECARS = ("mmproj", "mtp")
FILE_TYPES = ("LoRA", "vocab")
# One component each, matched whole and case-insensitively by the lenient parser.
SIZE_LABEL = re.compile(r"(?:\d+x)?(?:\d+\.)?\d+[QTBMK]", re.IGNORECASE)
SIZE_ATTRIBUTE = re.compile(r"[A-Za-z]+(?:\d+\.)?\d+[A-Za-z]+")  # e.g. ContextLength4k, after the size
VERSION = re.compile(r"v\d+(?:\.\d+)*", re.IGNORECASE)
ENCODING = re.compile(r"(?:[IT]?Q\d+(?:_[A-Z0-9]+)*|KQ\d+|B?F(?:16|32|64)|FP(?:8|16|32)|MXFP4(?:_MOE)?)", re.IGNORECASE)
SHARD = re.compile(r"(\d+)-of-(\d+)$")
SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "Q": 1e15}


@dataclass(frozen=True)
class GGUFName:
    """The components of a GGUF file name; None where the name does not say."""

    base_name: str
    size_label: str | None = None  # "8x7B", "135M", "3.8B-ContextLength4k"
    fine_tune: str | None = None  # "Instruct", "Chat"
    version: str | None = None  # "v0.1"; the spec says to assume v1.0 when absent (see effective_version)
    encoding: str | None = None  # "Q4_K_M", "F16", "KQ2", as written
    type: str | None = None  # "LoRA" or "vocab"; None means an ordinary model file
    shard: int | None = None  # 3 in "00003-of-00009"
    shard_count: int | None = None
    sidecar: str | None = None  # "mmproj" or "mtp": a module loaded alongside a base model
    conforming: bool = False  # passes the spec's validation regex

    @property
    def effective_version(self) -> str:
        return self.version or "v1.0"

    @property
    def expert_count(self) -> int | None:
        """8 for "8x7B"; None for a dense model's label."""
        match = re.match(r"(\d+)x", self.size_label or "")
        return int(match.group(1)) if match else None

    @property
    def parameters(self) -> float | None:
        """The count the size label states (per expert for "8x7B": 7e9), e.g. 1.35e8 for "135M"."""
        match = re.match(r"(?:\d+x)?(\d+(?:\.\d+)?)([QTBMK])", self.size_label or "", re.IGNORECASE)
        return float(match.group(1)) * SCALE[match.group(2).upper()] if match else None


def parse_gguf_name(name: str | os.PathLike[str]) -> GGUFName:
    """Split a GGUF file name (or path) into its naming-convention components."""
    filename = PurePath(name).name
    match = CONFORMING_NAME.match(filename)
    if match:
        shard, shard_count = _shard_numbers(match["shard"])
        return GGUFName(
            base_name=match["base_name"],
            size_label=match["size_label"],
            fine_tune=match["fine_tune"],
            version=match["version"],
            encoding=match["encoding"],
            type=match["type"],
            shard=shard,
            shard_count=shard_count,
            sidecar=match["sidecar"],
            conforming=True,
        )
    return _parse_leniently(filename)


def _shard_numbers(shard: str | None) -> tuple[int | None, int | None]:
    if not shard:
        return None, None
    index, count = SHARD.search(shard).groups()
    return int(index), int(count)


def _parse_leniently(filename: str) -> GGUFName:
    """Peel components off the right end (shard, type, encoding, version), then find the size label."""
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    sidecar = None
    for prefix in SIDECARS:
        if stem.lower().startswith(prefix + "-"):
            sidecar, stem = prefix, stem[len(prefix) + 1 :]
            break
    shard = shard_count = None
    if match := re.search(r"[-.](\d+)-of-(\d+)$", stem):
        shard, shard_count = int(match[1]), int(match[2])
        stem = stem[: match.start()]
    parts = _split_components(stem)

    def take_last(pattern: re.Pattern[str] | None, words: tuple[str, ...] = ()) -> str | None:
        if len(parts) > 1 and (
            (pattern is not None and pattern.fullmatch(parts[-1])) or parts[-1].lower() in (w.lower() for w in words)
        ):
            return parts.pop()
        return None

    file_type = take_last(None, FILE_TYPES)
    encoding = take_last(ENCODING)
    version = take_last(VERSION)
    size_at = next((i for i in range(1, len(parts)) if SIZE_LABEL.fullmatch(parts[i])), None)
    if size_at is None:
        return GGUFName(
            base_name="-".join(parts),
            version=version,
            encoding=encoding,
            type=file_type,
            shard=shard,
            shard_count=shard_count,
            sidecar=sidecar,
        )
    size_end = size_at + 1
    while size_end < len(parts) and SIZE_ATTRIBUTE.fullmatch(parts[size_end]):
        size_end += 1
    return GGUFName(
        base_name="-".join(parts[:size_at]),
        size_label="-".join(parts[size_at:size_end]),
        fine_tune="-".join(parts[size_end:]) or None,
        version=version,
        encoding=encoding,
        type=file_type,
        shard=shard,
        shard_count=shard_count,
        sidecar=sidecar,
    )


def _split_components(stem: str) -> list[str]:
    """Split on '-', and also on a '.' that introduces an encoding or file type ("Instruct.Q4_1"), but not
    on the dots inside "3.8B" or "v0.1"."""
    parts = []
    for part in stem.split("-"):
        tails = []
        while "." in part:
            head, _, tail = part.rpartition(".")
            if not (ENCODING.fullmatch(tail) or tail.lower() in (t.lower() for t in FILE_TYPES)):
                break
            tails.insert(0, tail)
            part = head
        parts.extend([part, *tails])
    return [p for p in parts if p]
