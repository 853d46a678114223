"""Hand-written CPU kernels, the default arithmetic's engine on the CPU: decode's matrix-vector products and
prefill's unpacking of weights to bfloat16 (gemv.cpp), and the small steps between the products (ops.cpp:
RMSNorm, RoPE, one query's attention, the gated activation). With them a decode step runs eagerly at ~10 ops per
layer and nothing is traced or compiled (model/compiled.py), so a fresh process answers at once.

What they do (the C++ file says how): x's rows are rounded to int8 as llama.cpp does (in blocks of 32 for the
32-weight formats, of 256 for the K-quants), and the dot products are AVX512-VNNI integer instructions, the
weights' unpacking shared by all rows of a batched decode step. MXFP4 is one of the 32-weight formats: its
nibbles become int8 E2M1 values (doubled) by one table lookup, its E8M0 byte a power-of-two scale, as llama.cpp's
`ggml_vec_dot_mxfp4_q8_0`. Q4_K, Q5_K and Q6_K are read in place, a
256-weight super-block at a time, as llama.cpp's own kernels do. Inductor's float32 loops (quant/kernels.py)
unpack each weight to float32 and spend an FMA per weight per row. They run in the default arithmetic
(`kernels.fast_mode`), which also runs prefill's GEMMs in bfloat16; `--exact` (PELLUCID_EXACT=1) does not use
them.

What the rounding costs: a rounding of x that flips on a float32-ulp difference upstream moves a logit by ~1e-2,
so a token computed by a decode step and the same token computed inside a prefill no longer agree to float32
rounding (0.2-1.5 on hidden states of magnitude 50-300 after 18-30 layers), and a greedy reply can change with
the KV cache's state (a reused prompt prefix). llama.cpp has the same property (its server documents it for
cache_prompt); exact mode keeps the float32 agreement (test_model_llamacpp.py, test_engine_generate.py). With
the rounding the llama.cpp reference tests still pass and perplexity stays within 0.1-1.3% of llama.cpp's
(tests/test_quant_native.py). A float32 variant of these kernels (exact, so it could
be on by default) was measured too: no faster than inductor's loops (decode 10.2 vs 10.6 ms, B=8 22.8 vs
22.9 ms), so it is not kept.

Built with torch.utils.cpp_extension (g++, which torch.compile needs anyway) the first time a process asks,
~15 s once per machine and version of the kernels (the two files compile in parallel; cached under
~/.cache/torch_extensions, one folder per version: `_build_directory`), then loaded in milliseconds. Used only when
the CPU has AVX512-VNNI and the tensors are on the CPU; anywhere else, or if the build fails (logged once),
the products run as in the default mode. `gemv()` is an op (`torch.ops.pellucid.gemv`), so the compiled
decode graphs call it like any ATen kernel; it releases the GIL while it runs.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import torch

from pellucid.quant.kv_blocks import TYPE_IDS as KV_TYPE_IDS

log = logging.getLogger("pellucid.native")

SOURCES = [Path(__file__).with_name("gemv.cpp"), Path(__file__).with_name("ops.cpp")]
CFLAGS = ["-O3", "-fopenmp", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
MAX_ROWS = 8  # the kernels are specialized for 1..8 rows of x

_lock = threading.Lock()


@functools.cache
def available() -> bool:
    """Whether the native kernels are built, loaded and runnable on this CPU (builds them on first call)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    with _lock:
        try:
            _build_and_load()
        except Exception as e:  # no compiler, no headers, a compile error: the inductor kernels still work
            log.warning("pellucid's native CPU kernels could not be built (%s); using the compiled ones", e)
            return False
    return bool(torch.ops.pellucid.supported())


def _build_and_load() -> None:
    from torch.utils import cpp_extension

    if not hasattr(torch.ops.pellucid, "rms_norm"):
        build = _build_directory()
        build.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name="pellucid_native",
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],  # at::parallel_for splits the rows over threads only with OpenMP on
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )

    @torch.library.register_fake("pellucid::gemv")
    def _(x, formats, fields):  # shapes for torch.compile's tracing: (M, K) @ [W_1; W_2; ...].T
        n, i = 0, 0
        for name in formats.split(","):
            n += fields[i].shape[0]
            i += FIELD_COUNTS[name]
        return x.new_empty((x.shape[0], n))


def _build_directory() -> Path:
    """Where the kernels are built: torch's extension folder (TORCH_EXTENSIONS_DIR, or ~/.cache/torch_extensions),
    in a subfolder named by a hash of the sources and flags. One folder per version of the kernels, so two
    installs or checkouts of different versions never rebuild over each other's library (which let a process
    load the other's library, without the ops its Python calls). The sources' folder is part of the name too:
    torch's ninja file records absolute source paths, so two checkouts of the same version sharing one folder
    rebuilt it each time the other one had built last."""
    import hashlib
    import os

    digest = hashlib.sha256(" ".join(CFLAGS).encode())
    digest.update(str(SOURCES[0].parent.resolve()).encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions").expanduser()
    return root / f"pellucid_native-{torch.__version__}-{digest.hexdigest()[:12]}"


# How many field tensors each kernel format takes (format_of's lists).
FIELD_COUNTS = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 3,
    "Q5_1": 4,
    "Q8_0": 2,
    "MXFP4": 2,
    "Q4_K": 5,
    "Q5_K": 6,
    "Q6_K": 4,
    "IQ4_XS": 3,
    "Q4_Kx8": 1,
    "Q4_0x8": 1,
    "Q4_1x8": 1,
    "Q5_0x8": 1,
    "Q5_1x8": 1,
    "MXFP4x8": 1,
    "Q8G16": 2,
    "Q8G32": 2,
    "Q8G32M": 3,
}


def format_of(packed) -> tuple[str, list[torch.Tensor]] | None:
    """The kernel's name for this matrix's format and its fields in the kernel's order; None: no kernel."""
    from pellucid.quant import packed as P

    f = packed.fields()
    kind = type(packed)
    if kind is P.Q4_0:
        return "Q4_0", [f["qs"], f["d"]]
    if kind is P.Q4_1:
        return "Q4_1", [f["qs"], f["d"], f["m"]]
    if kind is P.Q5_0:
        return "Q5_0", [f["qs"], f["qh"], f["d"]]
    if kind is P.Q5_1:
        return "Q5_1", [f["qs"], f["qh"], f["d"], f["m"]]
    if kind is P.Q8_0:
        return "Q8_0", [f["qs"], f["d"]]
    if kind is P.MXFP4:
        return "MXFP4", [f["qs"], f["e"]]
    if kind is P.Q4_K:
        return "Q4_K", [f["qs"], f["d"], f["dmin"], f["sc"], f["mn"]]
    if kind is P.Q5_K:
        return "Q5_K", [f["qs"], f["qh"], f["d"], f["dmin"], f["sc"], f["mn"]]
    if kind is P.Q6_K:
        return "Q6_K", [f["ql"], f["qh"], f["scales"], f["d"]]
    if kind is P.IQ4_XS:
        return "IQ4_XS", [f["qs"], f["d"], f["ls"]]
    if kind is P.Q8G:
        group = f["q"].shape[-1]
        if group == 32:
            return ("Q8G32M", [f["q"], f["scale"], f["min"]]) if "min" in f else ("Q8G32", [f["q"], f["scale"]])
        if group == 16 and "min" not in f:
            return "Q8G16", [f["q"], f["scale"]]
    return None


def repacked(packed):
    """The kernels' spec of `packed` in the repacked layout (8 rows interleaved, as llama.cpp repacks for its CPU
    kernels: gemv.cpp's Q4KX8), built now (~0.2 s per GB), or None for a format or shape that is not repacked.
    Q4_K (the bulk of Q4_K_M files), Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4 are: their products run 1.3-2x faster so, where
    the other formats already stream at or near the memory's speed. The file's pages of the matrix are handed back to the OS afterwards,
    so the copy replaces them in memory."""
    spec = format_of(packed)
    if spec is None or spec[0] not in ("Q4_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4") or packed.shape[0] % 8:
        return None
    return spec[0] + "x8", [torch.ops.pellucid.repack(spec[0], spec[1])]


def gemv(x: torch.Tensor, specs: list[tuple[str, list[torch.Tensor]]]) -> torch.Tensor:
    """x (M, K) float32 @ [W_1; W_2; ...].T -> (M, N_1 + N_2 + ...) float32, for 1 <= M <= MAX_ROWS.

    Each W is given by `format_of`'s answer. Matrices that multiply the same x (q, k, v) go in one call: x is
    quantized once (to int8 per 32-block, see the module's docstring) and one parallel region covers them all.
    """
    names = ",".join(name for name, _ in specs)
    return torch.ops.pellucid.gemv(x, names, [t for _, fields in specs for t in fields])


def gemv_parts(x: torch.Tensor, specs: list[tuple[str, list[torch.Tensor]]]) -> list[torch.Tensor]:
    """`gemv`, each matrix's product in its own (M, N_i) tensor (q, k, v apart, with no split in Python)."""
    names = ",".join(name for name, _ in specs)
    return torch.ops.pellucid.gemv_parts(x, names, [t for _, fields in specs for t in fields])


def gemv_grouped(x: torch.Tensor, counts: list[int], specs: list[tuple[str, list[torch.Tensor]]]) -> torch.Tensor:
    """Matrix j times its own rows of x (R, K) float32, the next counts[j] (1 to MAX_ROWS) -> (R, N) float32, all
    matrices N rows each: a MoE layer's experts, each on the rows routed to it, in one parallel region."""
    names = ",".join(name for name, _ in specs)
    return torch.ops.pellucid.gemv_grouped(x, counts, names, [t for _, fields in specs for t in fields])


GATING_IDS = {"softmax": 0, "sigmoid": 1}


def moe_route(
    x: torch.Tensor, router: torch.Tensor, k: int, gating: str, normalize: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MoE router in one op: x (T, K) float32, router (E, K) float32 -> (weights (T, k) float32, expert ids
    (T, k) int64), the best first: `model.layers.moe.route` without its selection bias and expert groups."""
    return torch.ops.pellucid.moe_route(x, router, k, GATING_IDS[gating], normalize, scale)


def expert_spec(gate, up, down) -> tuple[str, list[torch.Tensor]]:
    """One expert's three matrices (`format_of`'s answers) as `moe_experts` takes them: their formats joined, their
    fields in order. Built once per expert by the caller, so a decode step only concatenates k of them."""
    return ",".join(name for name, _ in (gate, up, down)), [t for _, fields in (gate, up, down) for t in fields]


def moe_experts(
    x: torch.Tensor, weights: torch.Tensor, experts: list[tuple[str, list[torch.Tensor]]], activation: str
) -> torch.Tensor:
    """One token's k chosen experts in one op: x (1, K) float32, weights (k,), experts[j] = `expert_spec` of
    expert j -> sum_j weights[j] * down_j(act(gate_j x) * up_j x), (1, hidden) float32. `activation` is one of
    ACTIVATION_IDS (what `glu` computes)."""
    names = ",".join(name for name, _ in experts)
    return torch.ops.pellucid.moe_experts(x, weights, names, [t for _, fields in experts for t in fields],
                                          ACTIVATION_IDS[activation])  # fmt: skip


def dequantize(
    spec: tuple[str, list[torch.Tensor]], k: int, start: int, end: int, dtype: torch.dtype, into=None
) -> torch.Tensor:
    """Rows start..end of the matrix `spec` (`format_of`'s answer; K = k columns) as float32 or bfloat16: what
    prefill's GEMMs multiply, unpacked in one parallel pass with no tracing (the compiled unpacking took a
    fresh process seconds to load). `into`: a contiguous buffer of that dtype to write into (and view) instead
    of a new tensor."""
    name, fields = spec
    return torch.ops.pellucid.dequantize(name, fields, k, start, end, dtype == torch.bfloat16, into)


# -- the small steps between the products (ops.cpp): used eagerly, in the default arithmetic, on float32 CPU tensors


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, one op."""
    return torch.ops.pellucid.rms_norm(x, weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dim: int, interleaved: bool) -> torch.Tensor:
    """x (B, T, H, D) with its first rope_dim dims of each head rotated; cos/sin (B, T, rope_dim/2)."""
    return torch.ops.pellucid.rope(x, cos, sin, rope_dim, interleaved)


def attend_one(
    q, k, v, visible, scale: float, softcap: float | None, kv_types=("f32", "f32"), sinks=None
) -> torch.Tensor:
    """One query per sequence: q (B, 1, H, D) over k (B, Hkv, S, D), v (B, Hkv, S, Dv) -> (B, 1, H * Dv); k and v
    are cache rows of the KV types `kv_types` (quant/kv_blocks.py), read in place. `sinks` (H,): a logit per head
    that joins the softmax's denominator (GPT-OSS), or None."""
    kt, vt = (KV_TYPE_IDS[t] for t in kv_types)
    return torch.ops.pellucid.attend_one(q, k, v, visible, scale, softcap or 0.0, kt, vt, sinks)


def store_attend(
    q, k, v, keys, values, slots, lengths, scale: float, softcap: float | None, kv_types=("f32", "f32"), sinks=None
) -> torch.Tensor:
    """The decode step of B sequences with a cache each: k/v (B, 1, Hkv, D) written into slot slots[b] of
    keys[b]/values[b] (1, Hkv, capacity, row), rounded to the KV types `kv_types`, then q[b] (B, 1, H, D) attends
    over their first lengths[b] slots (`sinks` as in attend_one). Returns (B, 1, H * Dv)."""
    kt, vt = (KV_TYPE_IDS[t] for t in kv_types)
    return torch.ops.pellucid.store_attend(q, k, v, keys, values, slots, lengths, scale, softcap or 0.0, kt, vt, sinks)


def kv_encode(x: torch.Tensor, kv_type: str) -> torch.Tensor:
    """Rows x (N, D) float32 as the decode step stores them in a cache of `kv_type` -> (N, row bytes) uint8."""
    return torch.ops.pellucid.kv_encode(x, KV_TYPE_IDS[kv_type])


ACTIVATION_IDS = {"silu": 0, "gelu_tanh": 1}


def glu(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """activation(gate) * up, one op ('silu' or 'gelu_tanh')."""
    return torch.ops.pellucid.glu(gate, up, ACTIVATION_IDS[activation])
