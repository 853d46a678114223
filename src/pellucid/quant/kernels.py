"""Matrix products with packed weights, written as PyTorch expressions that torch.compile turns into kernels.

Two products, chosen by how many rows x has:

- `gemv` (decode: a few rows). Each part of the weights (see `PackedWeight.parts`) is multiplied by its slice
  of x and everything is summed. Run eagerly this would materialise the float32 matrix; compiled, inductor
  fuses unpacking, scaling, multiplying and summing into one loop that reads each packed byte once and keeps
  its float32 accumulators in vector registers. That loop is the whole point: decode is bound by memory
  bandwidth, and the packed bytes are 4-8x fewer than float32 ones. With 2-8 rows (the batched decode step,
  compiled or not) it runs as `_gemv_rows`, whose loop unpacks each weight once for all the rows.
- `dequantize` + a dense matmul (prefill: many rows). Arithmetic dominates there, so the weights are unpacked
  once per call into a float32 (or bfloat16) matrix and the BLAS GEMM does the rest.

Both are float32 arithmetic on exactly the weights `dequant.dequantize` decodes, so they agree with
dequantize-then-matmul to float32 rounding (summation order); see tests/test_quant_kernels.py.

By default, on a CPU with AVX512-VNNI (`fast_mode`), few-row products go to hand-written int8 kernels
(quant/native: llama.cpp's arithmetic) and GEMMs run in bfloat16: faster, at the cost of float32
reproducibility across paths; `--exact` (PELLUCID_EXACT=1) keeps everything in float32.

`matmul` is what `QuantizedLinear` calls. Inside a compiled graph (the decode step of
`pellucid.model.compiled`) it emits the expressions and inductor fuses them with their neighbours. Outside
one, it calls small compiled functions, one per format, shared by every layer and every model (shapes are
dynamic), so eager code is fast too. Without a working compiler (`PELLUCID_COMPILE=0`, or no C++ compiler for
inductor) it falls back to eager dequantize-then-matmul: correct, and tens of times slower in decode (SmolLM2:
0.6 instead of ~100 tok/s), since every product materialises its float32 matrix.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F

from pellucid.arithmetic import compile_requested, exact_requested
from pellucid.quant import native
from pellucid.quant.packed import Dense, PackedWeight
from pellucid.quant.types import GGMLType

# Up to this many rows, a product reads the packed weights directly (decode, batched decode of up to 8
# sequences); above it the weights are unpacked once and a GEMM runs (prefill), whose cost per row is far lower
# there. The compiled product for M rows unpacks each weight once and does M multiply-adds with it
# (`_gemv_rows`), so 8 rows cost ~2-4x one row, not 8x. SmolLM2, 1 thread, 8 rows: ffn_up (1536 x 576) 0.18 ms
# by it vs 0.38 ms by unpack + GEMM; the 49152-row output head 3.1 ms vs 40 ms (benchmarks/batch_decode_bench.py).
GEMV_MAX_ROWS = 8
# Matrices above this many weights are unpacked for a GEMM in slices of rows (4M weights: 16 MB of float32).
GEMM_TILE_WEIGHTS = 1 << 22


def gemv(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W.T -> (M, N) float32, reading W's packed fields once (when compiled)."""
    return _gemv(x, type(packed), packed.fields())


def dequantize(packed: PackedWeight, dtype: torch.dtype = torch.float32, start: int = 0, end: int | None = None):
    """Rows start..end of the (N, K) matrix in `dtype` (default: all of it)."""
    fields = packed.fields()
    if (start, end) != (0, None):
        fields = {name: t[start:end] for name, t in fields.items()}
    return _dequantize(type(packed), fields, dtype)


# The expressions, as functions of a format and its field tensors (not of the module), so that a compiled copy
# is shared by every matrix of that format: its sizes are dynamic, only the block layout is fixed.


def _gemv(x: torch.Tensor, fmt: type[PackedWeight], fields: dict[str, torch.Tensor]) -> torch.Tensor:
    x = _materialized(x.float())
    xv = x.reshape(x.shape[0], 1, -1, *fmt.x_layout(fields))  # (M, 1, groups, ..., P, L)
    acc = None
    for p, w in enumerate(fmt.weights(**fields)):  # w (N, groups, ..., L) broadcasts against x's part p
        term = w * xv[..., p, :]
        acc = term if acc is None else acc + term
    return acc.sum(dim=tuple(range(2, acc.dim())))


def _gemv_rows(x: torch.Tensor, fmt: type[PackedWeight], fields: dict[str, torch.Tensor]) -> torch.Tensor:
    """`_gemv` for a few rows (M <= GEMV_MAX_ROWS), written so that the unpacking is shared by the rows.

    One reduction per row over the same weight expressions: inductor puts the M reductions into one loop over
    the weights and computes each unpacked weight once (common subexpression) for all M multiply-adds. `_gemv`'s
    broadcast (M, N, K) form instead loops over rows outermost and unpacks the whole matrix again for each row.
    M is a Python int here (the compiled copy is specialized to it), so the loop unrolls at trace time.
    """
    x = _materialized(x.float())
    xv = x.reshape(x.shape[0], -1, *fmt.x_layout(fields))  # (M, groups, ..., P, L)
    weights = fmt.weights(**fields)  # each (N, groups, ..., L)
    outs = []
    for m in range(x.shape[0]):
        acc = None
        for p, w in enumerate(weights):
            term = w * xv[m, ..., p, :]
            acc = term if acc is None else acc + term
        outs.append(acc.sum(dim=tuple(range(1, acc.dim()))))
    return torch.stack(outs, dim=0)


def _materialized(x: torch.Tensor) -> torch.Tensor:
    """x, computed into a buffer before the product reads it.

    Left to itself, inductor inlines whatever produced x (the RMSNorm before a projection, the residual adds)
    into the product's inner loop, recomputing it for each of the N output rows: 2-3x slower per weight.
    Forcing x's layout makes it a realized buffer; outside a compiled graph this is a no-op.
    """
    if not torch.compiler.is_compiling():
        return x
    return torch.ops.prims.inductor_force_stride_order(x, x.stride())  # registered by prepare_compile()


def _dequantize(fmt: type[PackedWeight], fields: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    w = torch.stack(fmt.weights(**fields), dim=-2)  # (N, groups, ..., P, L)
    return w.reshape(w.shape[0], -1).to(dtype)


def matmul(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """x (..., K) @ W.T -> (..., N) in x's dtype: the kernel that fits the number of rows.

    In the default arithmetic (`fast_mode`) few rows go to the native int8 kernels and many rows to a
    bfloat16 GEMM.
    """
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, k)
    fast = rows.device.type == "cpu" and fast_mode()
    if fast and (specs := _native_specs(rows, [packed])) is not None:
        return native.gemv(rows.float(), specs).to(x.dtype).reshape(*lead, -1)
    fmt, fields = type(packed), packed.fields()
    half = fast and isinstance(packed, Dense) and packed.ggml_type in _HALF_TYPES
    if half:  # llama.cpp's F16 / BF16 products round x to the weight's type first; so does the default mode
        x = x.to(_HALF_TYPES[packed.ggml_type]).to(x.dtype)
        rows = x.reshape(-1, k)
    if rows.shape[0] > GEMV_MAX_ROWS and fast and not torch.compiler.is_compiling() and _native_spec(packed):
        eager = True  # the native unpacking below: no compiler needed (nor its 1.5 s import)
    else:
        eager = torch.compiler.is_compiling() or not compile_enabled()  # inside a graph, emit the expressions
    if not eager:
        _fix_block_layout(packed)
    if rows.shape[0] <= GEMV_MAX_ROWS:
        if not eager:
            kernel = _compiled("gemv_rows")
            if x.dim() == 3 and x.shape[0] == 1 and 1 < rows.shape[0] < GEMV_MAX_ROWS:
                return _padded_to_max_rows(kernel, rows, fmt, fields).to(x.dtype).reshape(*lead, -1)
        else:  # in a graph, several rows (the batched decode block) share the unpacking too
            kernel = _gemv if rows.shape[0] == 1 or not torch.compiler.is_compiling() else _gemv_rows
        y = kernel(rows, fmt, fields)
        return y.to(x.dtype).reshape(*lead, -1)
    # Fast mode multiplies in bfloat16 (float32 accumulation): ~2x the float32 GEMM on CPUs with AVX512-BF16.
    # Not float16 weights: bfloat16 would round them (and x) more coarsely than llama.cpp does.
    to_bf16 = fast and x.dtype == torch.float32 and _bf16_gemm() and packed.ggml_type != GGMLType.F16
    dtype = torch.bfloat16 if to_bf16 else x.dtype
    xd = x.to(dtype)
    n = packed.shape[0]
    spec = _native_spec(packed) if fast and not torch.compiler.is_compiling() else None
    if spec is not None and dtype in (torch.bfloat16, torch.float32):  # the native unpacking: no tracing

        def unpack_rows(start: int, end: int) -> torch.Tensor:
            return native.dequantize(spec, k, start, end, dtype, into=_scratch(dtype, (end - start) * k))
    else:
        unpack = _dequantize if eager else _compiled("dequantize")

        def unpack_rows(start: int, end: int) -> torch.Tensor:
            tile = fields if (start, end) == (0, n) else {name: t[start:end] for name, t in fields.items()}
            return unpack(fmt, tile, dtype)

    if n * k <= GEMM_TILE_WEIGHTS:
        return F.linear(xd, unpack_rows(0, n)).to(x.dtype)
    # A matrix as large as Gemma's 262k-row output head is unpacked a slice of rows at a time, so a
    # many-row product (perplexity's logits) never holds the whole float32 matrix (671 MB there).
    step = max(8, GEMM_TILE_WEIGHTS // k // 8 * 8)  # whole groups of 8 rows (repacked matrices unpack so)
    tiles = [F.linear(xd, unpack_rows(i, min(n, i + step))) for i in range(0, n, step)]
    return torch.cat(tiles, dim=-1).to(x.dtype)


_scratch_buffers = threading.local()


def _scratch(dtype: torch.dtype, numel: int) -> torch.Tensor:
    """This thread's reusable buffer for unpacked weights (at most GEMM_TILE_WEIGHTS of them): each product's
    weights are multiplied before the next product unpacks into it. A new buffer per product cost its page
    faults, more than the unpacking (8B model, 128-token prefill: ~2 s of 7)."""
    buffers = _scratch_buffers.__dict__
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[dtype] = torch.empty(max(numel, GEMM_TILE_WEIGHTS), dtype=dtype)
    return buffer


def _padded_to_max_rows(kernel, rows: torch.Tensor, fmt, fields) -> torch.Tensor:
    """`kernel` on rows padded with zeros to GEMV_MAX_ROWS, the real rows' results.

    The compiled few-row product is specialized to its row count, and each new count costs ~4 s to compile
    on a cold cache (0.3 s warm). A short prompt chunk (2-7 new tokens of one sequence: a next turn that
    mostly hit the prefix cache) can have any count, so it runs as GEMV_MAX_ROWS rows, the count every
    longer chunk's product already compiled: the zero rows cost ~10 ms, not a compile per count. The batched
    decode head (one row per sequence) keeps its own count; the server's warm-up compiles each one.
    """
    padded = rows.new_zeros(GEMV_MAX_ROWS, rows.shape[1])
    padded[: rows.shape[0]] = rows
    return kernel(padded, fmt, fields)[: rows.shape[0]]


def matmul_many(x: torch.Tensor, packed: list[PackedWeight]) -> list[torch.Tensor]:
    """[x @ W.T for W in packed]: the projections that read the same x (q, k, v; gate, up). In the default mode's
    decode the native kernels do them in one call (one quantization of x, one parallel region)."""
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, k)
    fast = len(packed) > 1 and rows.device.type == "cpu" and fast_mode()
    if fast and (specs := _native_specs(rows, packed)) is not None:
        return [part.to(x.dtype).view(*lead, -1) for part in native.gemv_parts(rows.float(), specs)]
    return [matmul(x, p) for p in packed]


def matmul_grouped(x: torch.Tensor, counts: list[int], packed: list[PackedWeight]) -> torch.Tensor | None:
    """x (R, K) -> (R, N): matrix j times its own counts[j] rows of x, in order (a MoE layer's experts, each on
    the rows routed to it). One native call in the default mode when every count is at most native.MAX_ROWS;
    None where that does not apply (the caller multiplies expert by expert)."""
    if x.device.type != "cpu" or not fast_mode() or max(counts) > native.MAX_ROWS:
        return None
    specs = [_native_spec(p) for p in packed]
    if any(spec is None for spec in specs):
        return None
    return native.gemv_grouped(x.float().contiguous(), counts, specs).to(x.dtype)


def _native_specs(rows: torch.Tensor, packed: list[PackedWeight]):
    """The native kernels' specs for these matrices when they can multiply `rows` (few rows), else None."""
    if rows.shape[0] > native.MAX_ROWS:
        return None
    specs = [_native_spec(p) for p in packed]
    return None if any(spec is None for spec in specs) else specs


def native_spec(packed: PackedWeight):
    """The native kernels' spec of a packed matrix (repacked where that helps), or None: what `native.gemv` and
    its kin take. For callers that keep specs of their own (a MoE layer's experts)."""
    return _native_spec(packed) if native.available() else None


def _native_spec(packed: PackedWeight):
    """`native.format_of(packed)`, remembered on the matrix: asking nn.Module for its parameters on every
    product cost ~10 us, 7 times per layer. Keyed by the field tensors, so a matrix moved by `.to()` (new
    tensors) is looked at again; the remembered spec holds its tensors, so their ids cannot be reused."""
    key = tuple(map(id, packed._parameters.values()))
    cached = packed.__dict__.get("_native_spec")
    if cached is None or cached[0] != key:
        spec = native.repacked(packed) if _repack_enabled() else None
        cached = (key, spec or native.format_of(packed))
        packed.__dict__["_native_spec"] = cached
    return cached[1]


@functools.cache
def _repack_enabled() -> bool:
    """PELLUCID_REPACK=0 keeps every matrix in the file's layout (to compare; the products are the same sums)."""
    import os

    return os.environ.get("PELLUCID_REPACK", "1") != "0"


def fused(x: torch.Tensor) -> bool:
    """Whether the layers' small steps (norms, RoPE, decode attention, gated activation) run as the native ops
    of quant/native/ops.cpp: in the default arithmetic (`fast_mode`), eagerly, on float32 CPU tensors."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and fast_mode() and not torch.compiler.is_compiling()


def rows(packed: PackedWeight, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows `ids` (T,) of the matrix as (T, K) `dtype`: an embedding lookup that unpacks only those rows."""
    return torch.stack(packed.parts(ids), dim=-2).reshape(ids.shape[0], packed.shape[1]).to(dtype)


_fast: bool | None = None
_HALF_TYPES = {GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}


@functools.cache
def _bf16_gemm() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 / AMX); elsewhere oneDNN emulates it slowly."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_mode() -> bool:
    """Whether products use llama.cpp's arithmetic (the default on a CPU with AVX512-VNNI): decode's few-row
    products in the native int8 kernels (quant/native), prefill's GEMMs in bfloat16, and float16/bfloat16
    matrices meeting x rounded to their type. Faster (docs/benchmarks.md); rounding x makes a result depend
    slightly on the path a token took (prefill or decode, batched or not), as llama.cpp's do.

    Exact mode (`--exact`, PELLUCID_EXACT=1; PELLUCID_FAST=0 too) computes every product in float32 instead:
    prefill and decode then agree to float32 rounding, and results reproduce whatever the KV cache holds.

    Resolved (and the kernels built) by the first eager call; a compiled graph reads the answer, so call this
    once before compiling (compiled.py does)."""
    global _fast
    if _fast is None:
        _fast = not exact_requested() and native.available()
    return _fast


# -- compiling --------------------------------------------------------------------------------------------------


def compile_enabled() -> bool:
    """Whether pellucid uses torch.compile: on unless PELLUCID_COMPILE=0 or inductor cannot build kernels here.

    Also applies `prepare_compile`'s settings in the calling thread (once per thread): dynamo's config is
    thread-local, so the server's worker thread would otherwise compile under the default limits.
    """
    enabled = compile_requested() and _compiler_works()
    if enabled and not getattr(_thread, "prepared", False):
        prepare_compile()
    return enabled


_thread = threading.local()


@functools.cache
def _compiler_works() -> bool:
    # Inductor builds CPU kernels with a C++ compiler; on CUDA it needs triton. Without them, stay eager.
    import shutil

    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _fix_block_layout(packed: PackedWeight) -> None:
    """Tell the compiler that a field's dims past (rows, groups) are the block layout, the same for every matrix
    of the format: the shared kernels are then generic in size but vectorized over those fixed inner dims."""
    if getattr(packed, "_layout_marked", False):
        return
    import torch._dynamo

    for t in packed.parameters():
        for dim in range(2, t.dim()):
            torch._dynamo.mark_static(t, dim)
    packed._layout_marked = True


def prepare_compile() -> None:
    """Import what the compiled graphs use: inductor's prims (for `_materialized`), and a higher recompile
    limit: one compiled function serves every format (a guard on the class picks the entry), and the GEMV
    is specialized to each matrix shape and row count 1-8: ~50 entries for SmolLM2 where the default limit is
    8. Past the limit dynamo runs the function eagerly, silently and many times slower. The limit on all
    entries of the process together is raised too: a process that loads several models (the tests) passes its
    default 256, and a fullgraph block compiled after that fails outright."""
    import torch._dynamo
    import torch._inductor.inductor_prims  # noqa: F401

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 256)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2048)
    _thread.prepared = True  # dynamo's config is per thread: see compile_enabled


@functools.cache
def _compiled(name: str):
    prepare_compile()
    if name == "gemv_rows":
        # Specialized to each matrix's shape: with symbolic sizes the product runs at a third of the speed
        # (the loop bounds and strides of the blocks are no longer constants). Eager code calls it only for
        # the output head and batched decode (each row count 1-8 is its own entry), so a model needs a few dozen.
        return torch.compile(_gemv_rows, dynamic=False)
    # Unpacking for a GEMM is cheap next to the GEMM itself: one kernel per format serves every size.
    return torch.compile(_dequantize, dynamic=True)
