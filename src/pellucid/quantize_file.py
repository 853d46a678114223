"""`pellucid quantize`: a GGUF file re-encoded as Q8_0, Q4_0, ..., Q4_K_M, ..., F16 or BF16, as llama-quantize does it.

Three steps, each a function below:

1. `plan`: the type of every tensor. A plain type (Q8_0, Q4_0, ...) is not one type for the whole file: llama.cpp's
   `llama_tensor_get_type` (src/llama-quant.cpp) keeps norms and other 1-D tensors as they are, gives the output
   projection (or the token embedding, when the head is tied to it) Q6_K, and in the mixed `_M` / `_S` types gives
   more bits to the tensors that hurt most when squeezed (attn_v, ffn_down) in some layers. Its rules go by tensor
   name and layer, so they are written here by name, each with a comment pointing at the rule; a row that does not
   divide into the type's blocks falls back as `tensor_type_fallback` says (quant/quantize.type_for_rows).
2. `_tensor_bytes`: each tensor's new bytes. A tensor already in its planned type is copied as is (as llama.cpp
   does); any other is decoded to float32 (quant/dequant.py) and encoded by quant/quantize.py, whose blocks are
   byte for byte llama.cpp's reference quantizers'.
3. `quantize_file`: the file, through gguf-py's GGUFWriter: every metadata key of the source in its order (the
   tokenizer included), `general.quantization_version` 2 and `general.file_type` moved to the end as llama.cpp's
   `gguf_set_val_u32` does, split keys dropped, tensors in llama.cpp's order (by layer, then name). Written under a
   temporary name in DST's folder and renamed at the end, so DST is never a half-written file.

The source may also be a Hugging Face folder of the llama, qwen2, qwen3, olmo2 or smollm3 family: hf_source.py reads
it as the GGUF file llama.cpp's converter would write. Not here yet: an importance matrix (`--imatrix`,
llama-quantize's option; its blocks differ), HF folders of the other families, mixture-of-experts models, and the
IQ / Q2_K / Q3_K types.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pellucid.errors import ModelFileError, PellucidError, UnsupportedError
from pellucid.formats.gguf import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT, GGUFFile, TensorInfo
from pellucid.quant.types import BLOCK_LAYOUT, FILE_TYPE_NAMES, GGMLType, tensor_nbytes

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts of today's ggml (Q4_0 .. Q8_0 changed in v2)
FILE_TYPE_KEY = "general.file_type"
QUANTIZATION_VERSION_KEY = "general.quantization_version"
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


@dataclass(frozen=True)
class FileType:
    """One `--type`: llama.cpp's LLAMA_FTYPE_MOSTLY_* number (stored as general.file_type) and its base type."""

    name: str
    ftype: int
    base: GGMLType


# llama.h's llama_ftype numbers and llama_ftype_get_default_type's base type for each.
FILE_TYPES: dict[str, FileType] = {
    t.name: t
    for t in (
        FileType("Q8_0", 7, GGMLType.Q8_0),
        FileType("Q4_0", 2, GGMLType.Q4_0),
        FileType("Q4_1", 3, GGMLType.Q4_1),
        FileType("Q5_0", 8, GGMLType.Q5_0),
        FileType("Q5_1", 9, GGMLType.Q5_1),
        FileType("Q4_K_M", 15, GGMLType.Q4_K),
        FileType("Q4_K_S", 14, GGMLType.Q4_K),
        FileType("Q5_K_M", 17, GGMLType.Q5_K),
        FileType("Q5_K_S", 16, GGMLType.Q5_K),
        FileType("Q6_K", 18, GGMLType.Q6_K),
        FileType("F16", 1, GGMLType.F16),
        FileType("BF16", 32, GGMLType.BF16),
    )
}


def file_type(name: str) -> FileType:
    """The FileType called `name` (any case), or an UnsupportedError that lists the ones pellucid writes."""
    found = FILE_TYPES.get(name.strip().upper())
    if found is None:
        raise UnsupportedError(
            f"pellucid cannot quantize to {name!r}; pick one of {', '.join(FILE_TYPES)} "
            f"(Q4_K_M is the usual choice: about 4.9 bits per weight, close to the original's quality)"
        )
    return found


# -- 1. the type of each tensor (llama-quant.cpp's llama_tensor_get_type, for dense models, without an imatrix) ----


@dataclass(frozen=True)
class Hparams:
    """What llama_tensor_get_type reads besides the names: the layer count and whether llama.cpp calls it a 70B."""

    n_layer: int
    is_70b: bool = False


def hparams_of(metadata: dict[str, Any]) -> Hparams:
    arch = metadata.get("general.architecture")
    n_layer = metadata.get(f"{arch}.block_count")
    if not isinstance(n_layer, int) or n_layer < 1:
        raise ModelFileError(f"the file has no {arch}.block_count (the layer count), which the type choices need")
    n_head = metadata.get(f"{arch}.attention.head_count")
    n_head_kv = metadata.get(f"{arch}.attention.head_count_kv", n_head)
    # llama-model.cpp's load_hparams: an 80-layer llama with grouped-query attention is LLM_TYPE_70B (65B without
    # it), and so is an 80-layer qwen2 (Qwen2-72B); llama-quant.cpp gives their attn_v one step more (below).
    is_70b = n_layer == 80 and ((arch == "llama" and n_head != n_head_kv) or arch == "qwen2")
    return Hparams(n_layer, is_70b)


def layer_of(name: str) -> int:
    """The N of `blk.N.`, -1 for tensors outside the layers (what llama.cpp's weight_name_comparer reads)."""
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match[1]) if match else -1


def llama_order(names) -> list[str]:
    """Names as llama-quantize visits (and writes) them: by layer (others first), then by name."""
    return sorted(names, key=lambda n: (layer_of(n), n))


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama-quant.cpp's tensor_allows_quantization, for the tensors of the families pellucid runs: matrices
    named *weight, except norms (and the MoE router, positional and token-type embeddings of other families)."""
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    keep = ("_norm.weight", "ffn_gate_inp.weight", "position_embd.weight", "token_types.weight", "attn_rel_b.weight")
    return not any(part in name for part in keep)


def category(name: str) -> str:
    """llama-quant.cpp's tensor_get_category: the kind of tensor, by name, in its order of tests."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (
        ("attn_qkv.weight", "attn_v"),  # category_is_attn_v: fused qkv and MLA's kv_b follow attn_v's rules
        ("attn_kv_b.weight", "attn_v"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return cat
    return "other"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama-quant.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def plan(tensors: dict[str, tuple[tuple[int, ...], GGMLType]], target: FileType, hp: Hparams) -> dict[str, GGMLType]:
    """The type each tensor gets: {name: (shape in PyTorch order, its type now)} -> {name: new type}."""
    from pellucid.quant.quantize import type_for_rows  # here: it imports torch, which `pellucid --help` need not

    tied = "output.weight" not in tensors  # has_tied_embeddings: the token embedding is also the output head
    n_attn_v = sum(category(n) == "attn_v" for n in tensors)
    counters = {"attn_v": 0, "ffn_down": 0}
    types = {}
    for name in llama_order(tensors):
        shape, current = tensors[name]
        if not allows_quantization(name, shape):
            types[name] = current  # norms, biases, RoPE factors: copied as they are
        elif target.base in (GGMLType.F16, GGMLType.BF16):
            types[name] = target.base  # not a quantized type: no per-tensor rules, no fallback
        else:
            chosen = _mixture_type(name, shape[-1], target, hp, tied, n_attn_v, counters)
            # tensor_type_fallback: rows that are not whole blocks of the type (F16 if not whole 32-blocks either)
            types[name] = type_for_rows(chosen, shape[-1]) or GGMLType.F16
    return types


def _mixture_type(name, k: int, target: FileType, hp: Hparams, tied: bool, n_attn_v: int, counters) -> GGMLType:
    """llama_tensor_get_type_impl's choice for one matrix with rows of k weights (dense model, no imatrix)."""
    cat, new = category(name), target.base
    if cat == "output" or (tied and cat == "token_embd"):
        # The output head is the most sensitive matrix: Q6_K unless the file is Q8_0 (or its rows are not whole
        # blocks of the base type: Q8_0). A tied head is the token embedding, so that gets the rule.
        if k % BLOCK_LAYOUT[new].block_size:
            return GGMLType.Q8_0
        return new if new == GGMLType.Q8_0 else GGMLType.Q6_K
    if cat == "attn_v":
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if target.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_attn_v):
            new = GGMLType.Q6_K
        elif target.name == "Q4_K_S" and i < 4:
            new = GGMLType.Q5_K
        if hp.is_70b and new == GGMLType.Q4_K:
            new = GGMLType.Q5_K  # 70B: 8 heads share attn_v, so it is 8x smaller than attn_q; more bits are cheap
        return new
    if cat == "ffn_down":
        i, n = counters["ffn_down"], hp.n_layer
        counters["ffn_down"] += 1
        if target.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            return GGMLType.Q6_K
        if target.name == "Q4_K_S" and i < n // 8:
            return GGMLType.Q5_K
    return new  # attn_q, attn_k, attn_output, ffn_gate, ffn_up, an untied token_embd: the base type


# -- 2. each tensor's bytes ------------------------------------------------------------------------------------


def _tensor_bytes(src: GGUFFile, info: TensorInfo, new: GGMLType) -> np.ndarray:
    """The tensor's bytes in type `new`: a copy of the stored bytes when it is already that type."""
    import torch

    from pellucid.quant.quantize import quantize

    if info.ggml_type == new:
        return src.raw(info.name)
    weights = src.tensor(info.name)  # float32, exactly the stored values (dequantized, for a quantized source)
    if new == GGMLType.F32:
        out = weights
    elif new == GGMLType.F16:
        out = weights.half()  # round to nearest even, as ggml's fp32 -> fp16
    elif new == GGMLType.BF16:
        out = weights.bfloat16()  # round to nearest even, as ggml_compute_fp32_to_bf16
    else:
        out = quantize(weights.reshape(-1, info.shape[-1]), new)
    return out.contiguous().view(torch.uint8).numpy().reshape(-1)


# -- 3. the file -----------------------------------------------------------------------------------------------


@dataclass
class Result:
    path: Path
    source_bytes: int
    written_bytes: int  # the whole file
    tensor_bytes: int  # its tensors' (what bits per weight counts, as `inspect` does)
    n_weights: int
    types: dict[str, GGMLType]  # each tensor's type in the new file
    requantized_from: str | None = None  # the source's type (general.file_type's name), when it was quantized

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.n_weights, 1)


def default_name(metadata: dict[str, Any], source: Path, target: FileType) -> str:
    """The file name the GGUF naming convention gives the output: <BaseName>-<SizeLabel>-<FineTune>-<Version>-<TYPE>,
    from the general.* keys (as llama.cpp's converter names its files), or the source's name with its encoding
    replaced when the file has none of them."""
    from gguf.utility import naming_convention

    from pellucid.formats.naming import parse_gguf_name

    get = metadata.get
    if get("general.basename") or get("general.name"):
        stem = naming_convention(
            get("general.name"),
            get("general.basename"),
            get("general.finetune"),
            get("general.version"),
            get("general.size_label"),
            target.name,
        )
    else:
        parsed = parse_gguf_name(source)
        parts = [parsed.base_name, parsed.size_label, parsed.fine_tune, parsed.version, target.name]
        stem = "-".join(p for p in parts if p)
    return f"{stem}.gguf"


def output_path(src: GGUFFile, dst: str | os.PathLike[str], target: FileType) -> Path:
    dst = Path(dst).expanduser()
    if dst.is_dir():
        return dst / default_name(src.metadata, src.path, target)
    if dst.suffix.lower() != ".gguf":
        raise PellucidError(f"{dst} is neither a folder nor a .gguf file name; name the output NAME.gguf")
    return dst


def quantize_file(
    src_path: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    type_name: str,
    *,
    force: bool = False,
    threads: int = 1,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> Result:
    """Write the model at `src_path` (a GGUF file, any part of a split one; or an HF folder, see hf_source.py)
    re-encoded as `type_name` to `dst` (a .gguf path, or a folder: the naming convention picks the name).
    `on_plan(total_bytes)` is called once the work is known, `progress(n)` after each tensor with the bytes it read.

    `threads`: torch's intra-op threads while quantizing. One by default: the quantizers are thousands of small
    ops, and on cores that other work also uses, threads stall each other at every op (SmolLM2 to Q4_K_M on the
    2-core machine under load: 2 threads 2 min 13 s, 1 thread 14 s); on an idle many-core machine more may help."""
    target = file_type(type_name)
    src_path = Path(src_path).expanduser()
    if src_path.is_dir():
        from pellucid.hf_source import HFSource  # a llama-family HF folder, read as the converter's GGUF

        opened = HFSource(src_path)
    else:
        opened = GGUFFile(src_path)
    with opened as src:
        out = output_path(src, dst, target)
        if out.exists() and not force:
            raise PellucidError(f"{out} exists; pass --force to overwrite it, or choose another name")
        if out.resolve() in {p.path.resolve() for p in src.parts}:
            raise PellucidError(f"{out} is the source file; write the quantized model under another name")
        _check_architecture(src)
        shapes = {name: (info.shape, info.ggml_type) for name, info in src.tensors.items()}
        types = plan(shapes, target, hparams_of(src.metadata))
        _check_decodable(src, types)
        mostly = _check_not_below(src, target)
        written = sum(tensor_nbytes(types[n], info.n_elements) for n, info in src.tensors.items())
        _check_free_space(out.parent, written)
        if on_plan:
            on_plan(src.tensor_data_bytes)
        with _torch_threads(threads):
            _write(src, out, target, types, written, progress)
        n_weights = sum(info.n_elements for info in src.tensors.values())
        requantized = None
        if mostly not in FLOAT_TYPES:
            requantized = FILE_TYPE_NAMES.get(src.get(FILE_TYPE_KEY), mostly.name)
        return Result(out, src.file_size, out.stat().st_size, written, n_weights, types, requantized)


def _check_architecture(src: GGUFFile) -> None:
    """The type rules here are llama.cpp's for the dense families pellucid runs; llama-quant.cpp has other rules for
    mixture-of-experts models (attn_v and attn_k to Q8_0 with 8 experts, ...) and for some architectures (Falcon)."""
    from pellucid.model.families import supported_architectures

    arch = src.architecture
    if arch not in supported_architectures():
        raise UnsupportedError(
            f"pellucid quantizes the architectures it runs ({', '.join(supported_architectures())}), not {arch!r}: "
            f"llama.cpp chooses some tensors' types by architecture. Use llama.cpp's llama-quantize for this file"
        )
    dense_layers = src.arch_get("leading_dense_block_count") or 0
    if (src.arch_get("expert_count") or 0) > 1 and dense_layers < (src.arch_get("block_count") or 0):
        raise UnsupportedError(
            f"{src.path.name} is a mixture-of-experts model, whose per-tensor types pellucid does not choose yet; "
            f"use llama.cpp's llama-quantize"
        )


def _check_decodable(src: GGUFFile, types: dict[str, GGMLType]) -> None:
    """Every tensor that changes type must be decoded first: say which cannot be before writing anything."""
    from pellucid.quant.dequant import DECODERS

    stuck = sorted(
        {i.ggml_type.name for n, i in src.tensors.items() if i.ggml_type != types[n]} - {t.name for t in DECODERS}
    )
    if stuck:
        raise UnsupportedError(
            f"{src.path.name} holds {', '.join(stuck)} tensors, which pellucid cannot decode to re-encode them; "
            f"quantize from the model's F16/BF16 original instead"
        )


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_not_below(src: GGUFFile, target: FileType) -> GGMLType:
    """Refuse to 'quantize' a file to more bits than it has: the file would grow and keep the quality it has.
    Returns the type that holds most of the source's layer matrices (the embedding and head, which every mixture
    treats apart, are left out: Gemma 3's Q8_0 embedding outweighs its Q4_K layers)."""
    counts: dict[GGMLType, int] = {}
    for name, info in src.tensors.items():
        if allows_quantization(name, info.shape) and category(name) not in ("token_embd", "output"):
            counts[info.ggml_type] = counts.get(info.ggml_type, 0) + info.n_elements
    mostly = max(counts, key=counts.__getitem__, default=GGMLType.F32)
    if mostly in FLOAT_TYPES:
        return mostly
    have, want = BLOCK_LAYOUT[mostly].bits_per_weight, BLOCK_LAYOUT[target.base].bits_per_weight
    if have < want:
        raise PellucidError(
            f"{src.path.name} is already quantized, mostly to {mostly.name} ({have:g} bits per weight): {target.name} "
            f"({want:g} bits) would make a larger file of the same quality. Quantize from the original float "
            f"model (an F16/BF16/F32 GGUF) instead"
        )
    return mostly


def _check_free_space(folder: Path, needed: int) -> None:
    if not folder.is_dir():
        raise PellucidError(f"no such folder: {folder}; create it first")
    free = shutil.disk_usage(folder).free
    if free < needed + (64 << 20):  # plus the header and some room for everything else on the disk
        raise PellucidError(_disk_full_message(folder, needed, free))


def _disk_full_message(folder: Path, needed: int, free: int) -> str:
    from pellucid.memory import format_bytes

    return (
        f"not enough disk space in {folder}: the quantized file needs about {format_bytes(needed)} and "
        f"{format_bytes(free)} is free; free some space or write it elsewhere"
    )


def _write(src: GGUFFile, out: Path, target: FileType, types: dict[str, GGMLType], needed: int, progress) -> None:
    """Write the new file under a temporary name next to `out`, then rename it: `out` is whole or absent."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        writer = _writer(src, tmp, target, types)
        try:
            for name in llama_order(src.tensors):
                info = src.tensors[name]
                writer.write_tensor_data(_tensor_bytes(src, info, types[name]))
                if progress:
                    progress(info.n_bytes)
        finally:
            writer.close()
        os.replace(tmp, out)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(out.parent).free
            raise PellucidError(
                _disk_full_message(out.parent, needed, free) + " (the disk filled while writing)"
            ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _writer(src: GGUFFile, path: Path, target: FileType, types: dict[str, GGMLType]):
    """A GGUFWriter with the header written: metadata as llama-quantize copies it, then the tensor infos."""
    import gguf

    writer = gguf.GGUFWriter(path, src.architecture)
    writer.data_alignment = src.alignment  # general.alignment, if the source sets one, is copied below
    for key, value in src.metadata.items():
        if key in ("general.architecture", SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT, FILE_TYPE_KEY):
            continue
        if key == QUANTIZATION_VERSION_KEY:
            continue
        writer.add_key_value(key, *_gguf_value(key, value, src.metadata_types[key]))
    writer.add_uint32(QUANTIZATION_VERSION_KEY, QUANTIZATION_VERSION)
    writer.add_uint32(FILE_TYPE_KEY, target.ftype)
    for name in llama_order(src.tensors):
        info, new = src.tensors[name], types[name]
        writer.add_tensor_info(name, info.shape, np.dtype(np.float32), tensor_nbytes(new, info.n_elements), new)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def _gguf_value(key: str, value: Any, type_name: str) -> tuple:
    """(value, GGUFValueType, sub_type) for GGUFWriter.add_key_value, from pellucid's reading of the key."""
    from gguf import GGUFValueType

    if type_name.startswith("array["):
        inner = type_name[len("array[") : -1]
        if inner == "array":
            raise UnsupportedError(f"metadata {key!r} is an array of arrays, which pellucid cannot copy yet")
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        if not items:
            raise UnsupportedError(f"metadata {key!r} is an empty array, which gguf-py's writer cannot write")
        return items, GGUFValueType.ARRAY, GGUFValueType[inner.upper()]
    return value, GGUFValueType[type_name.upper()], None
