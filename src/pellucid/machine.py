"""This machine's limits: how fast memory streams and how fast a matrix product runs, measured once and cached.

Decode is bound by memory bandwidth (each token reads every weight once) and prefill by matrix-multiply
throughput, so "how fast is pellucid here" means little without "how fast could it be". `pellucid bench
--machine` measures both and caches them in `$PELLUCID_HOME/machine.json`, keyed by the CPU and thread count,
for the reports that compare a run against them (`explain`, `bench`).

How each is measured (on `threads` threads, in this process, after a warm-up):
- **bandwidth_gb_s**: the best of 10 sums of a 1 GiB float32 buffer, far past every cache, already resident,
  over 3 buffers allocated one after another: bytes read / seconds. A plain streaming read, which is what a bandwidth-bound decode step approaches (the
  project's 2-core Zen 4 machine reads 38-48 GB/s this way, depending on the day and its neighbours).
- **matmul_gflops_f32** / **matmul_gflops_bf16**: the best of 5 products of two 2048 x 2048 matrices
  (torch.mm, oneDNN/MKL underneath), 2 * 2048^3 multiply-adds counted as 2 flops each / seconds. bfloat16 is
  what the default arithmetic's prefill multiplies in (on CPUs with AVX512-BF16), float32 what `--exact`
  does; `matmul_gflops` is the one this machine's default arithmetic uses.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass

from pellucid.paths import home

BANDWIDTH_BYTES = 1 << 30  # 1 GiB: far past any CPU cache
MATMUL_N = 2048


@dataclass(frozen=True)
class MachineLimits:
    cpu: str
    threads: int
    bandwidth_gb_s: float
    matmul_gflops_f32: float
    matmul_gflops_bf16: float | None  # None where bfloat16 products are not supported
    matmul_gflops: float  # the precision the default arithmetic's prefill uses here
    measured_at: str  # ISO date and time

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def measure_bandwidth(threads: int, buffers: int = 3) -> float:
    """GB/s of a plain streaming read (see the module docstring): the best of 10 sums over each of `buffers`
    freshly allocated buffers. Why several buffers: on the project's VM one 1 GiB buffer read at 42 GB/s and
    the next, allocated right after, at 29-30 (where its pages landed physically), reproducibly."""
    import torch

    torch.set_num_threads(threads)
    best = float("inf")
    for _ in range(buffers):
        buffer = torch.ones(BANDWIDTH_BYTES // 4)  # float32, touched (resident) before timing
        buffer.sum()
        for _ in range(10):
            started = time.perf_counter()
            buffer.sum()
            best = min(best, time.perf_counter() - started)
        del buffer
    return BANDWIDTH_BYTES / best / 1e9


def measure_matmul(threads: int, dtype_name: str) -> float | None:
    """GFLOP/s of a 2048 x 2048 product in float32 or bfloat16 (None if this build cannot multiply in it)."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
    b = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
    try:
        torch.mm(a, b)  # warm-up: the library picks its kernel
    except RuntimeError:
        return None
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * MATMUL_N**3 / best / 1e9


def measure(threads: int) -> MachineLimits:
    """Measure this machine's limits on `threads` threads (a few seconds) and cache them."""
    from pellucid.quant import kernels

    bandwidth = measure_bandwidth(threads)  # first: nothing else allocated yet
    f32 = measure_matmul(threads, "f32")
    bf16 = measure_matmul(threads, "bf16")
    limits = MachineLimits(
        cpu=cpu_name(),
        threads=threads,
        bandwidth_gb_s=round(bandwidth, 1),
        matmul_gflops_f32=round(f32, 1),
        matmul_gflops_bf16=round(bf16, 1) if bf16 is not None else None,
        matmul_gflops=round(bf16 if (kernels.fast_mode() and bf16 is not None) else f32, 1),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    save(limits)
    return limits


def _cache_path():
    return home() / "machine.json"


def _key(cpu: str, threads: int) -> str:
    return f"{cpu} / {threads} threads"


def save(limits: MachineLimits) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = _read_all()
    entries[_key(limits.cpu, limits.threads)] = limits.as_dict()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # whole or not at all: a reader never sees half a file


def _read_all() -> dict:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def cached(threads: int) -> MachineLimits | None:
    """The limits `bench --machine` measured for this CPU and thread count, or None if never measured."""
    entry = _read_all().get(_key(cpu_name(), threads))
    try:
        return MachineLimits(**entry) if isinstance(entry, dict) else None
    except TypeError:  # an entry from another version of this file
        return None


def describe(limits: MachineLimits) -> str:
    bf16 = f", bfloat16 {limits.matmul_gflops_bf16:.0f} GFLOP/s" if limits.matmul_gflops_bf16 else ""
    return (
        f"{limits.cpu}, {limits.threads} threads: memory streams {limits.bandwidth_gb_s:.1f} GB/s; a 2048 x 2048 "
        f"product runs at {limits.matmul_gflops_f32:.0f} GFLOP/s in float32{bf16} (measured {limits.measured_at})"
    )


__all__ = ["MachineLimits", "cached", "cpu_name", "describe", "measure", "measure_bandwidth", "measure_matmul"]
