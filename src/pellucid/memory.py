"""The fit planner: how many bytes running a model takes, and whether that fits in this machine.

The whole formula lives here, in `estimate()`, so `inspect`, `fit` and the benchmarks that check it
against measured peak memory all use the same numbers:

    total = runtime + weights + max(kv_cache + compute, loading)

runtime    a Python process after `import torch` (measured), or the CUDA context on a GPU (assumed); the
           tokenizer's vocabulary and the rest of the file header as Python objects; and the heap the
           allocator keeps after dequantizing weights at load (measured).
weights    every tensor at the chosen precision: the file's own, or converted to f32 / f16 / q8_0 / q4_0
           (1-D tensors such as norms stay f32, as llama.cpp's quantizer keeps them). pellucid's engine
           keeps the file's matrices packed (`ENGINE_WEIGHTS` = "file"), counted as its kernels hold them:
           a few rarer formats are re-laid-out at load (Q3_K as int8 + scales: 1.1 bytes per weight, not 0.43).
kv_cache   K and V for n_ctx tokens in every layer at --kv-type, allocated up front; sliding-window layers
           stop at the window. Encoder-only models (BERT) read their input in one pass and keep no cache.
compute    the activations alive at once while prefilling the last PREFILL_BATCH tokens of the context,
           one layer at a time (see `compute_buffers()` for each term and what it assumes).
loading    what only the load needs: weights dequantized to f32 / f16 are built while the file is still
           memory-mapped, so for a moment both are resident. The KV cache comes after loading: the max().

Sizes are printed in binary units (1 GiB = 1024^3 bytes), the units RAM is sold and reported in.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pellucid.arithmetic import engine_compiles_on_cpu
from pellucid.errors import PellucidError
from pellucid.model.config import ModelConfig
from pellucid.quant.types import BLOCK_LAYOUT, KV_CACHE_TYPES, GGMLType, check_kv_type, kv_row_bytes

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# RSS of `python -c "import torch, numpy, tokenizers, jinja2, safetensors"` after a first matmul and a
# scaled_dot_product_attention call: 239 MiB, measured with torch 2.13.0+cpu, CPython 3, Linux x86_64.
FRAMEWORK_CPU_BYTES = 240 * MiB
# What torch.compile adds to a process running pellucid's compiled kernels (inductor, its generated modules,
# guards): RSS after a short generation minus framework, weights, KV cache, buffers and metadata measured
# 179 MiB (SmolLM2) and 233 MiB (Gemma 3: more block kinds and formats), torch 2.13 CPU. Only where decode is
# compiled: exact mode, or a CPU without the native kernels (arithmetic.engine_compiles_on_cpu).
COMPILER_CPU_BYTES = 210 * MiB
# GPU memory the CUDA context and cuBLAS workspaces take before any tensor is allocated. Not measured here
# (the build machine has no GPU): a typical figure for recent drivers, to be replaced by a measurement.
FRAMEWORK_CUDA_BYTES = 500 * MiB
# Python objects for the tokenizer vocabulary and the rest of the GGUF header, as a multiple of the
# header's bytes: parsing alone measured 3.4x (Gemma 3, 262k tokens) and 6.5x (SmolLM2, 49k tokens).
METADATA_FACTOR = 6
# Heap the allocator keeps after weights are dequantized at load, as a fraction of those weights: RSS after
# loading exceeded framework + f32 weights + parsed metadata by 4.7% (SmolLM2) and 4.6% (Gemma 3).
ALLOCATOR_SLACK = 0.05
# Prompt tokens processed in one forward pass (llama.cpp's default micro-batch); longer prompts are chunked.
PREFILL_BATCH = 512

# Precisions weights can be converted to and the KV cache stored in: name -> ggml type (for its bytes).
PRECISIONS: dict[str, GGMLType] = {
    "f32": GGMLType.F32,
    "f16": GGMLType.F16,
    "q8_0": GGMLType.Q8_0,
    "q4_0": GGMLType.Q4_0,
}
WEIGHTS_AS = ("file", *PRECISIONS)  # "file" = as stored in the model file
# How pellucid's engine holds weights: model/loader.py keeps the file's matrices packed (quant/packed.py).
ENGINE_WEIGHTS = "file"
# Precisions the loader produces by dequantizing the file (`load_model(dtype=...)`), not by mapping it as is.
CONVERTED_AT_LOAD = ("f32", "f16")
# Architectures that encode a whole input at once: no KV cache, no next-token logits.
ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "nomic-bert", "nomic_bert", "jina-bert-v2"}
# Activation functions whose FFN is gated (act(x W_gate) * x W_up): three (T, ffn) tensors instead of two.
GATED_ACTIVATIONS = {"silu", "gelu_tanh", "swiglu_oai"}


# -- sizes in, sizes out --------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_UNITS.update({f"{p}ib": v for p, v in (("k", KiB), ("m", MiB), ("g", GiB), ("t", TiB))})
_UNITS.update({"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12})


def parse_size(text: str) -> int:
    """'8GiB', '8GB', '512MiB', '1.5G', '4096' -> bytes. KiB/MiB/GiB and a bare K/M/G are powers of 1024
    (as `free -h` and Docker mean them); kB/MB/GB are powers of 1000 (as disk makers mean them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise PellucidError(f"cannot read {text!r} as a memory size; write it like 8GiB, 8GB, 512MiB or 1.5G")
    n = float(match.group(1)) * _UNITS[unit]
    if n < 1:
        raise PellucidError(f"memory size {text!r} is zero; write it like 8GiB, 8GB, 512MiB or 1.5G")
    return int(n)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; three significant figures, binary units."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


# -- what the planner needs to know about a model -------------------------------------------------------


@dataclass(frozen=True)
class TensorSize:
    name: str
    shape: tuple[int, ...]  # PyTorch order: a weight is (out_features, in_features)
    n_bytes: int  # as stored in the file
    is_parameter: bool = True  # False for integer buffers (BERT's position_ids)
    ggml_type: GGMLType | None = None  # GGUF tensors: the storage type (how the engine packs it)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Footprint:
    """A model as the planner sees it: its shape, its tensors and how much header it carries."""

    config: ModelConfig
    tensors: tuple[TensorSize, ...]
    metadata_bytes: int = 0  # GGUF header (vocabulary, merges, template) or config/tokenizer JSON
    file_precision: str = "?"  # e.g. "Q4_1", "F32": what "file" means in the tables

    @property
    def encoder_only(self) -> bool:
        return is_encoder_only(self.config)

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors if t.is_parameter)

    def _share_read(self, t: TensorSize) -> float:
        """The share of a tensor one token's forward reads: k of E for a routed expert stack, else all of it."""
        c = self.config
        return c.n_experts_used / c.n_experts if c.n_experts and is_routed_expert(t.name) else 1.0

    @property
    def n_active_parameters(self) -> int:
        """Parameters one token passes through: a mixture-of-experts layer's k routed experts of E, all the rest."""
        return round(sum(t.n_elements * self._share_read(t) for t in self.tensors if t.is_parameter))

    @property
    def decode_bytes(self) -> int:
        """Bytes of weights a decode step reads, as stored: the active parameters, of the token embedding only
        a row (unless the output head is that table: then all of it, as the head)."""
        total = 0.0
        for t in self.tensors:
            if not t.is_parameter:
                continue
            if is_embedding(t.name) and not self.config.tie_embeddings and len(t.shape) == 2:
                total += t.n_bytes / t.shape[0]
            else:
                total += t.n_bytes * self._share_read(t)
        return round(total)


def is_routed_expert(name: str) -> bool:
    """A routed expert's weights (GGUF `blk.N.ffn_up_exps.weight` stacks, HF `mlp.experts.E.up_proj.weight`), which
    a token reads k of E of; shared experts (`_shexp`, `shared_experts`) every token reads."""
    return "_exps." in name or ".experts." in name


def is_embedding(name: str) -> bool:
    return name.endswith(("token_embd.weight", "embed_tokens.weight"))


def quantized_at_load(fp: Footprint, target: GGMLType) -> Footprint:
    """The model as `--quantize` holds it: float matrices packed into `target` (or llama-quantize's fallback
    for rows that are not whole blocks), as model/loader.py does; the rest as stored."""
    from pellucid.quant.quantize import type_for_rows

    def at_load(t: TensorSize) -> TensorSize:
        floats = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, None)
        if len(t.shape) != 2 or not t.is_parameter or t.ggml_type not in floats:
            return t
        chosen = type_for_rows(target, t.shape[1])
        if chosen is None:
            return t
        block = BLOCK_LAYOUT[chosen]
        return dataclasses.replace(t, ggml_type=chosen, n_bytes=t.n_elements // block.block_size * block.type_size)

    tensors = tuple(at_load(t) for t in fp.tensors)
    return dataclasses.replace(fp, tensors=tensors, file_precision=f"{target.name} at load")


def requantized_type(shape: tuple[int, ...], target: GGMLType) -> GGMLType:
    """The type a tensor gets when a file is re-quantized to `target` (llama.cpp's rules, simplified)."""
    if len(shape) < 2:
        return GGMLType.F32  # norms and biases: tiny, and precision-sensitive
    if shape[-1] % BLOCK_LAYOUT[target].block_size:
        return GGMLType.F16  # rows that are not a whole number of blocks cannot be block-quantized
    return target


def stored_bytes(t: TensorSize, weights_as: str = "file") -> int:
    """Bytes of one tensor as stored in the file ("file") or after re-quantizing to a precision."""
    if weights_as == "file":
        return engine_bytes(t)
    layout = BLOCK_LAYOUT[requantized_type(t.shape, _precision(weights_as))]
    return t.n_elements * layout.type_size // layout.block_size


def engine_bytes(t: TensorSize) -> int:
    """Bytes of a file's tensor as pellucid's engine holds it: packed matrices as quant/packed.py lays them out
    (mostly views of the file's bytes; some formats re-laid-out at load), everything else as stored."""
    if t.ggml_type is None or len(t.shape) != 2 or t.ggml_type == GGMLType.F32:
        return t.n_bytes
    return round(_packed_bytes_per_row(t.ggml_type, t.shape[1]) * t.shape[0])


@functools.cache
def _packed_bytes_per_row(ggml_type: GGMLType, k: int) -> float:
    # Pack a few all-zero rows and ask the packed weight what it holds: exact, and never out of step with
    # quant/packed.py's layouts. (numpy is imported here, not at the top: the command line's parser reads
    # this module's PRECISIONS, and `pellucid run` should not pay for numpy.)
    import numpy as np

    from pellucid.quant.packed import pack

    layout = BLOCK_LAYOUT[ggml_type]
    rows = 4
    raw = np.zeros(rows * k // layout.block_size * layout.type_size, dtype=np.uint8)
    try:
        return pack(raw, ggml_type, (rows, k)).n_bytes / rows
    except Exception:  # a type the engine cannot pack: it cannot run either; count the file's bytes
        return k / layout.block_size * layout.type_size


def weight_bytes(tensors: tuple[TensorSize, ...], weights_as: str = "file") -> int:
    return sum(stored_bytes(t, weights_as) for t in tensors)


def bytes_per_element(kv_type: str) -> float:
    layout = BLOCK_LAYOUT[KV_CACHE_TYPES[check_kv_type(kv_type)]]
    return layout.type_size / layout.block_size


def kv_pair(kv_type: str | None = None) -> tuple[str, str]:
    """A KV type as (keys' type, values' type): "f16" for both, "q8_0/f16" for keys q8_0 and values f16;
    None is the engine's default (quant/types.default_kv_type)."""
    if kv_type is None:
        return check_kv_type(None), check_kv_type(None)
    k, _, v = str(kv_type).partition("/")
    return check_kv_type(k), check_kv_type(v or k)


def kv_label(kv_k: str, kv_v: str) -> str:
    """The pair as `kv_pair` reads it back: "f16", or "q8_0/f16" when the halves differ."""
    return kv_k if kv_k == kv_v else f"{kv_k}/{kv_v}"


def is_encoder_only(config: ModelConfig) -> bool:
    return config.architecture.lower() in ENCODER_ONLY


def kv_cache_bytes(config: ModelConfig, n_ctx: int, kv_type: str | None = None) -> int:
    """K and V for n_ctx tokens, exactly what `engine.kv_cache.make_cache` allocates (tests/test_memory_kv.py):
    a row of each head's key and value per position in `kv_type` (`kv_pair`'s forms), ModelConfig knowing which
    layers are sliding-window rings and how many positions each holds."""
    if is_encoder_only(config):
        return 0
    kv_k, kv_v = kv_pair(kv_type)
    heads, key_dim, value_dim = config.kv_cache_shape
    per_position = heads * (kv_row_bytes(kv_k, key_dim) + kv_row_bytes(kv_v, value_dim))
    return config.kv_cache_positions(n_ctx) * per_position


def _precision(name: str) -> GGMLType:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise PellucidError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}") from None


# -- the formula ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputeBuffers:
    """Activations of one prefill batch, in bytes. The engine runs layer by layer, and the attention, FFN
    and logits steps come one after another, so the peak is `hidden + dequant + max(attention, ffn,
    logits)`, not the sum of all five."""

    hidden: int  # the residual stream, its normalized copy and a sublayer's output: 3 x (T, hidden)
    attention: int  # q, k, v and output for T tokens + one layer's K and V over n_ctx, per query head + mask
    ffn: int  # gate, up and their product (3 x (T, ffn)); 2 x for an ungated MLP
    logits: int  # (rows, vocab) floats: generation needs the last position only; perplexity needs all T
    dequant: int  # the largest weight matrix unpacked to the compute dtype for its matmul

    @property
    def peak(self) -> int:
        return self.hidden + self.dequant + max(self.attention, self.ffn, self.logits)


def compute_buffers(
    fp: Footprint,
    n_ctx: int,
    weights_as: str = "file",
    compute_bytes: int = 4,
    batch: int = PREFILL_BATCH,
    logits_rows: int = 1,
) -> ComputeBuffers:
    """What the activations take at their worst: the last prefill batch of a full context. Assumes the
    engine pellucid has (model/layers/): it computes in `compute_bytes` floats (4 = float32 on CPU);
    it calls `scaled_dot_product_attention`, whose fused kernels never hold the (n_heads, T, n_ctx) score
    matrix (a hand-written softmax(q k^T) would add that much per layer) but turn the boolean mask into
    floats; and it repeats each layer's cached K and V to every query head (grouped-query attention)."""
    c = fp.config
    t = min(batch, n_ctx)
    q_width = c.n_heads * c.head_dim
    kv_width = c.n_kv_heads * (c.head_dim + c.value_head_dim)
    hidden = 3 * t * c.hidden_size * compute_bytes
    every_layer_local = bool(c.sliding_window and c.sliding_layers and all(c.sliding_layers))
    longest_cache = min(n_ctx, c.sliding_window) if every_layer_local else n_ctx
    cache_per_head = longest_cache * c.n_heads * (c.head_dim + c.value_head_dim) * compute_bytes
    mask = t * n_ctx * compute_bytes
    attention = t * (2 * q_width + kv_width) * compute_bytes + cache_per_head + mask
    n_ffn = 3 if c.activation in GATED_ACTIVATIONS else 2
    ffn = n_ffn * t * c.ffn_size * compute_bytes
    logits = 0 if fp.encoder_only else min(logits_rows, t) * c.vocab_size * compute_bytes
    return ComputeBuffers(hidden, attention, ffn, logits, _dequant_bytes(fp, weights_as, compute_bytes))


def _dequant_bytes(fp: Footprint, weights_as: str, compute_bytes: int) -> int:
    """A matrix held in another type than the compute dtype is unpacked whole for its matmul, one at a time
    (as gpt-fast's weight-only quantization does); the biggest sets the peak. Exact for a tied output head,
    an upper bound for an embedding that is only looked up. Zero when weights are held as compute floats."""
    packed = [
        t.n_elements * compute_bytes
        for t in fp.tensors
        if len(t.shape) >= 2 and t.is_parameter and stored_bytes(t, weights_as) != t.n_elements * compute_bytes
    ]
    if weights_as == ENGINE_WEIGHTS:
        # pellucid's kernels unpack a big matrix (Gemma 3's 262k-row output head) a slice of rows at a time.
        from pellucid.quant.kernels import GEMM_TILE_WEIGHTS

        return min(max(packed, default=0), GEMM_TILE_WEIGHTS * compute_bytes)
    return max(packed, default=0)


def loading_bytes(fp: Footprint, weights_as: str) -> int:
    """Weights converted to plain floats at load are built from the memory-mapped file, whose pages stay
    resident until the load ends: at that moment the process holds both. (Chunked dequantization keeps
    other temporaries small.) Packed rows (the file's own, q8_0, q4_0) describe a file already at that
    precision, mapped and used as it is."""
    return sum(t.n_bytes for t in fp.tensors) if weights_as in CONVERTED_AT_LOAD else 0


@dataclass(frozen=True)
class MemoryEstimate:
    n_ctx: int
    weights_as: str
    kv_type: str
    device: str  # "cpu" or "cuda"
    weights: int
    kv_cache: int
    compute: ComputeBuffers
    loading: int  # held only while loading, before the KV cache exists
    metadata: int
    framework: int
    compiler: int  # torch.compile's runtime and generated kernels (pellucid's engine on CPU)
    allocator: int  # heap kept by the allocator after dequantizing at load

    @property
    def runtime(self) -> int:
        """The process itself: Python, PyTorch (or the CUDA context), tokenizer, metadata, allocator slack."""
        return self.framework + self.compiler + self.metadata + self.allocator

    @property
    def total(self) -> int:
        return self.runtime + self.weights + max(self.kv_cache + self.compute.peak, self.loading)


def estimate(
    fp: Footprint,
    n_ctx: int,
    *,
    weights_as: str = ENGINE_WEIGHTS,
    kv_type: str | None = None,
    device: str = "cpu",
    logits_rows: int = 1,
) -> MemoryEstimate:
    """The one formula: peak bytes to run `fp` with a context of n_ctx tokens (see the module docstring)."""
    if n_ctx < 1:
        raise PellucidError(f"a context of {n_ctx} tokens is not possible; use at least 1")
    # Activations are float32 on CPU, half precision on a GPU or when the weights themselves are f16.
    compute_bytes = 2 if device != "cpu" or weights_as == "f16" else 4
    weights = weight_bytes(fp.tensors, weights_as)
    return MemoryEstimate(
        n_ctx=n_ctx,
        weights_as=weights_as,
        kv_type=kv_label(*kv_pair(kv_type)),
        device=device,
        weights=weights,
        kv_cache=kv_cache_bytes(fp.config, n_ctx, kv_type),
        compute=compute_buffers(fp, n_ctx, weights_as, compute_bytes, logits_rows=logits_rows),
        loading=loading_bytes(fp, weights_as),
        metadata=METADATA_FACTOR * fp.metadata_bytes if device == "cpu" else 0,
        framework=FRAMEWORK_CPU_BYTES if device == "cpu" else FRAMEWORK_CUDA_BYTES,
        compiler=COMPILER_CPU_BYTES
        if device == "cpu" and weights_as == ENGINE_WEIGHTS and engine_compiles_on_cpu()
        else 0,
        allocator=int(ALLOCATOR_SLACK * weights) if weights_as in CONVERTED_AT_LOAD and device == "cpu" else 0,
    )


def max_context(
    fp: Footprint, budget: int, *, weights_as: str = ENGINE_WEIGHTS, kv_type: str | None = None, device: str = "cpu"
) -> int:
    """The longest context (up to the model's own) whose estimate fits in `budget` bytes; 0 if none does.
    A binary search, since the total only grows with n_ctx (sliding-window layers just stop adding)."""

    def fits(n: int) -> bool:
        return estimate(fp, n, weights_as=weights_as, kv_type=kv_type, device=device).total <= budget

    lo, hi = 0, max(fp.config.context_length, 1)
    if fits(hi):
        return hi
    while hi - lo > 1:  # invariant: lo == 0 or fits(lo); not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# -- what this machine has ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    label: str  # "RAM available", "--memory", "GPU 0 (NVIDIA H100 80GB HBM3) free"
    device: str  # "cpu" or "cuda"
    bytes: int
    total: int | None = None  # the whole RAM / GPU, when known


def detect_budgets() -> list[Budget]:
    """Available RAM (capped by a container's memory limit) and, where an NVIDIA driver is loaded, each
    GPU's free memory."""
    return [ram_budget(), *gpu_budgets()]


def ram_budget() -> Budget:
    meminfo = _read_meminfo()
    if "MemAvailable" in meminfo:
        available, total, label = meminfo["MemAvailable"], meminfo.get("MemTotal"), "RAM available"
    else:  # not Linux: the physical RAM is all we can know without extra packages
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        available, label = total, "RAM (total)"
    limit = _cgroup_limit()
    if limit is not None and limit < available:
        available, label = limit, "RAM available (container limit)"
    return Budget(label, "cpu", available, total)


def _read_meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (KiB if parts[1:] == ["kB"] else 1)
    return out


def _cgroup_limit() -> int | None:
    """cgroup v2 memory.max minus what the group already uses; None when unlimited or not in a cgroup."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def gpu_budgets() -> list[Budget]:
    # Importing torch costs a second; do it only when an NVIDIA driver is there to be asked.
    if not Path("/proc/driver/nvidia/version").exists():
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    budgets = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        budgets.append(Budget(f"GPU {i} ({torch.cuda.get_device_name(i)}) free", "cuda", free, total))
    return budgets


# -- the decision ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitRow:
    weights_as: str
    estimate: MemoryEstimate
    fits: bool
    max_context: int  # longest context that fits, up to the model's own; 0 = not even one token


@dataclass(frozen=True)
class FitTarget:
    budget: Budget
    rows: list[FitRow]
    # the longest context that fits with the engine's weights, for each KV type (a block type this model's head
    # dimension cannot hold is left out)
    max_context_by_kv_type: dict[str, int] = field(default_factory=dict)


@dataclass
class FitPlan:
    model: str
    n_ctx: int
    context_length: int  # what the model was trained for
    kv_type: str
    file_precision: str
    encoder_only: bool
    targets: list[FitTarget] = field(default_factory=list)
    n_parameters: int = 0
    n_active_parameters: int = 0  # k of E routed experts counted (== n_parameters for a dense model)
    decode_bytes: int = 0  # bytes of weights one decode step reads, as stored
    weight_bytes: int = 0  # all the weights, as stored (what memory-mapping pages in)


def plan_fit(fp: Footprint, model: str, n_ctx: int, budgets: list[Budget], kv_type: str | None = None) -> FitPlan:
    """`kv_type`: the KV cache's type (`kv_pair`'s forms; None = the engine's default)."""
    kv_type = kv_label(*kv_pair(kv_type))
    plan = FitPlan(model, n_ctx, fp.config.context_length, kv_type, fp.file_precision, fp.encoder_only)
    plan.n_parameters, plan.n_active_parameters = fp.n_parameters, fp.n_active_parameters
    plan.decode_bytes, plan.weight_bytes = fp.decode_bytes, sum(t.n_bytes for t in fp.tensors)
    for budget in budgets:
        rows = []
        for weights_as in WEIGHTS_AS:
            kw = {"weights_as": weights_as, "kv_type": kv_type, "device": budget.device}
            est = estimate(fp, n_ctx, **kw)
            rows.append(FitRow(weights_as, est, est.total <= budget.bytes, max_context(fp, budget.bytes, **kw)))
        by_type = {}
        if not fp.encoder_only:
            for name in KV_CACHE_TYPES:
                try:
                    by_type[name] = max_context(fp, budget.bytes, kv_type=name, device=budget.device)
                except PellucidError:  # a block type the head dimension does not divide
                    continue
        plan.targets.append(FitTarget(budget, rows, by_type))
    return plan


def plan_json(plan: FitPlan) -> dict:
    """The plan as plain data, with each estimate's derived totals spelled out."""
    data = dataclasses.asdict(plan)
    for target_data, target in zip(data["targets"], plan.targets):
        for row_data, row in zip(target_data["rows"], target.rows):
            e = row.estimate
            row_data["estimate"].update(compute_peak=e.compute.peak, runtime=e.runtime, total=e.total)
    return data


def render_fit(plan: FitPlan) -> str:
    ctx_note = f"{plan.n_ctx:,} tokens of context"
    if plan.n_ctx > plan.context_length:
        ctx_note += f" (more than the {plan.context_length:,} the model was trained for; pellucid refuses that)"
    kv = "no KV cache (encoder-only)" if plan.encoder_only else f"KV cache in {plan.kv_type}"
    lines = [f"{plan.model} at {ctx_note}, {kv}"]
    from pellucid.inspect import format_count

    if plan.n_active_parameters and plan.n_active_parameters != plan.n_parameters:
        lines.append(
            f"mixture of experts: {format_count(plan.n_active_parameters)} of {format_count(plan.n_parameters)} "
            f"parameters active per token; a decode step reads about {format_bytes(plan.decode_bytes)} of the "
            f"{format_bytes(plan.weight_bytes)} of weights, so it decodes about as fast as a dense model of that size"
        )
    elif plan.decode_bytes and not plan.encoder_only:
        lines.append(f"a decode step reads about {format_bytes(plan.decode_bytes)} of weights")
    lines.append("")
    header = ("weights as", "weights", "KV cache", "compute", "loading", "runtime", "total", "fits?", "longest context")
    for target in plan.targets:
        b = target.budget
        of_total = f" of {format_bytes(b.total)}" if b.total else ""
        lines.append(f"{b.label}: {format_bytes(b.bytes)}{of_total}")
        table = [header]
        for row in target.rows:
            e = row.estimate
            table.append(
                (
                    _row_name(row.weights_as, plan.file_precision),
                    format_bytes(e.weights),
                    format_bytes(e.kv_cache),
                    format_bytes(e.compute.peak),
                    format_bytes(e.loading),
                    format_bytes(e.runtime),
                    format_bytes(e.total),
                    "yes" if row.fits else "NO",
                    _describe_max(row.max_context, plan.context_length),
                )
            )
        lines += _table(table)
        lines.append("  " + _verdict(target, plan))
        if target.max_context_by_kv_type:
            by_type = ", ".join(
                f"{name} {_describe_max(n, plan.context_length)}" for name, n in target.max_context_by_kv_type.items()
            )
            lines.append(
                f"  longest context by KV type (--kv-type, -ctk/-ctv; weights as pellucid holds them): {by_type}"
            )
        lines.append("")
    lines += _assumptions(plan)
    return "\n".join(lines)


def _row_name(weights_as: str, file_precision: str) -> str:
    name = f"file ({file_precision})" if weights_as == "file" else weights_as
    return f"{name}, pellucid" if weights_as == ENGINE_WEIGHTS else name


def _verdict(target: FitTarget, plan: FitPlan) -> str:
    today = next(r for r in target.rows if r.weights_as == ENGINE_WEIGHTS)
    need, have = format_bytes(today.estimate.total), format_bytes(target.budget.bytes)
    if today.fits:
        return f"=> fits: pellucid needs about {need} of the {have} here at {plan.n_ctx:,} tokens."
    if target.budget.device == "cpu" and plan.decode_bytes:
        disk = disk_note(plan.weight_bytes, plan.decode_bytes, today.estimate.total, target.budget.bytes)
        return f"=> does not fit in RAM at {plan.n_ctx:,} tokens (needs about {need}, {have} here). {disk}"
    if today.max_context:
        return (
            f"=> does not fit at {plan.n_ctx:,} tokens (needs about {need}, {have} here); "
            f"use at most --ctx {today.max_context:,}."
        )
    smaller = [r for r in target.rows if r.max_context and r.weights_as != "file"]
    hint = f" {smaller[-1].weights_as} weights would fit {smaller[-1].max_context:,} tokens." if smaller else ""
    return f"=> does not fit: even one token needs more than the {have} here.{hint}"


# What reading from disk is assumed to cost, for the advice when a model does not fit in RAM: a fast NVMe SSD
# reads ~2 GB/s in the random 4-16 MiB chunks a decode step asks for (a SATA SSD ~0.5, a hard disk ~0.1).
DISK_BYTES_PER_S = 2e9


def disk_note(weight_bytes: int, decode_bytes: int, need: int, have: int) -> str:
    """How slow a model that does not fit in RAM would be run from disk, memory-mapped: the part of each decode
    step's reads that the page cache cannot hold comes from disk (experts are chosen all over the file, so
    about that share of every step's bytes), at DISK_BYTES_PER_S."""
    short = max(0, need - have)
    from_disk = decode_bytes * min(1.0, short / max(weight_bytes, 1))
    seconds = from_disk / DISK_BYTES_PER_S
    per_token = f"{seconds:.2g} s" if seconds >= 1 else f"{seconds * 1e3:.2g} ms"
    return (
        f"Memory-mapped, it can still run from disk: about {format_bytes(from_disk)} of the {format_bytes(decode_bytes)} "
        f"a token reads would come from disk, ~{per_token} per token on a fast NVMe SSD "
        f"({DISK_BYTES_PER_S / 1e9:g} GB/s; several times that on a SATA SSD). run/chat/serve/bench do that "
        f"only with --allow-disk."
    )


def check_ram(
    fp: Footprint, n_ctx: int, model: str, allow_disk: bool = False, kv_type: str | None = None
) -> str | None:
    """Before loading on the CPU: an error when the model needs more than the RAM available (unless the user
    allowed running from disk, then the same numbers as a warning to print); None when it fits."""
    budget = ram_budget()
    need = estimate(fp, n_ctx, weights_as=ENGINE_WEIGHTS, device="cpu", kv_type=kv_type).total
    if need <= budget.bytes:
        return None
    weight_bytes = sum(t.n_bytes for t in fp.tensors)
    message = (
        f"{model} needs about {format_bytes(need)} at {n_ctx:,} tokens of context; the {budget.label} here is "
        f"{format_bytes(budget.bytes)}. " + disk_note(weight_bytes, fp.decode_bytes, need, budget.bytes)
    )
    if allow_disk:
        return message
    raise PellucidError(message + " Or use a smaller context (--ctx) or a smaller quantization.")


def _describe_max(n: int, context_length: int) -> str:
    if n == 0:
        return "none"
    return f"all {n:,}" if n >= context_length else f"{n:,}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(r[1:], widths[1:])]
        out.append("  " + "  ".join(cells))
    return out


def _assumptions(plan: FitPlan) -> list[str]:
    devices = {t.budget.device for t in plan.targets}
    lines = [
        "How this is counted (pellucid.memory.estimate): total = runtime + weights + the larger of",
        "(KV cache + compute) and loading.",
        "  weights   every tensor at that precision; converting keeps norms f32, as llama.cpp does. pellucid's",
        "            engine keeps the file's matrices packed (the 'pellucid' row); the other rows are for other",
        "            precisions (llama.cpp's quantize, or an engine that converts at load)",
    ]
    if not plan.encoder_only:
        lines.append("  KV cache  K and V for every token in every layer; sliding-window layers stop at the window")
    lines += [
        f"  compute   activations of the last {PREFILL_BATCH}-token prefill batch (float32 on CPU), one layer at a",
        "            time, logits of the last position, and the largest matrix unpacked for its matmul when",
        f"            weights are packed (`ppl` scores every position: add {PREFILL_BATCH} x vocab x 4 bytes)",
        "  loading   the memory-mapped file, resident while converted weights are built from it",
    ]
    if "cpu" in devices:
        lines += [
            f"  runtime   Python + PyTorch after import ({format_bytes(FRAMEWORK_CPU_BYTES)}, measured) + the "
            f"tokenizer and metadata ({METADATA_FACTOR}x the header)",
            f"            + torch.compile's runtime and kernels where decode is compiled ({format_bytes(COMPILER_CPU_BYTES)}, "
            "measured; not with the native kernels, which run eagerly)",
            f"            + what the allocator keeps after dequantizing at load ({ALLOCATOR_SLACK:.0%} of those "
            "weights, measured)",
        ]
    if "cuda" in devices:
        lines.append(
            f"  runtime   on a GPU: the CUDA context, assumed {format_bytes(FRAMEWORK_CUDA_BYTES)} (not measured)"
        )
    lines.append("  'longest context' is the most tokens that fit, up to what the model was trained for.")
    return lines
