"""Which arithmetic the user asked for, read from the environment without importing torch.

The engine multiplies as llama.cpp does by default (activations rounded to int8 in decode, bfloat16 in prefill:
quant/kernels.fast_mode, on CPUs with the native kernels); `--exact` sets PELLUCID_EXACT=1 for float32
everywhere (PELLUCID_FAST=0 means the same). The server registry (servers.py) compares this between a client
and a server, so a client is never answered in another arithmetic than it would compute itself.
"""

from __future__ import annotations

import os


def exact_requested() -> bool:
    """Whether float32 arithmetic everywhere was asked for (--exact, PELLUCID_EXACT=1, PELLUCID_FAST=0)."""
    return os.environ.get("PELLUCID_EXACT", "0") not in ("", "0") or os.environ.get("PELLUCID_FAST") == "0"


def compile_requested() -> bool:
    """Whether torch.compile may be used (PELLUCID_COMPILE=0 runs eagerly, which rounds differently)."""
    return os.environ.get("PELLUCID_COMPILE", "1") != "0"


def cpu_runs_native_kernels() -> bool:
    """Whether this CPU has what pellucid's native kernels need (quant/native: AVX512-VNNI, -VL, -BW, F16C, FMA),
    read from /proc/cpuinfo without building them; False where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512_vnni", "avx512vl", "avx512bw", "f16c", "fma"} <= set(flags)


def engine_compiles_on_cpu() -> bool:
    """Whether a CPU decode step goes through torch.compile (model/compiled.py): not in the default arithmetic on a
    CPU with the native kernels (they run eagerly), yes in exact mode or without them, unless compiling is off."""
    return compile_requested() and (exact_requested() or not cpu_runs_native_kernels())
