"""MXFP4 against Q4_0: one row of x times a packed matrix, per kernel path, microseconds per product.

    .venv/bin/python benchmarks/mxfp4_gemv_bench.py                          # 2048 x 2048, 1 thread
    .venv/bin/python benchmarks/mxfp4_gemv_bench.py --shape 5760 2880 --threads 2

The same N(0, 0.02) matrix is quantized to each type (pellucid's quantizers, byte-identical to llama.cpp's),
then timed through the native kernels in the layout decode uses by default (repacked 8 rows at a time), in the
file's layout, and through the compiled float32 kernel of exact mode. Each number is the best of 7 runs of
`--steps` products, after 20 untimed ones.

Measured on the project's 2-core EPYC (AVX512-VNNI) while other work kept it busy (load average 6-9), so each
number moved 20-50% between runs; the ranges are three runs, one thread:

    shape           path                          Q4_0            MXFP4
    2048 x 2048     native, repacked (default)    86-165 us       131-232 us
    2048 x 2048     native, file layout           255-452 us      211-399 us
    2048 x 2048     compiled float32 (--exact)    1.0-1.2 ms      1.7-3.7 ms
    16384 x 4096    native, repacked (default)    3.5-4.1 ms      3.7-4.2 ms
    16384 x 4096    compiled float32 (--exact)    12-14 ms        51-64 ms

A 2048 x 2048 matrix (2.2-2.4 MB) sits in cache, so there the kernels' arithmetic counts: MXFP4's nibbles take
one more instruction (a vpshufb table lookup) than Q4_0's, 1.3-1.5x the time. At 16384 x 4096 (35 MB) both
stream from memory and MXFP4 (4.25 bits per weight) is within 3-7% of Q4_0 (4.5). Two threads on the busy
machine stalled each other (0.2-1.3 ms at 2048 x 2048): not a measurement.
"""

from __future__ import annotations

import argparse
import time

import torch

from pellucid.quant import kernels, native
from pellucid.quant.packed import pack
from pellucid.quant.quantize import quantize
from pellucid.quant.types import GGMLType


def best_of(f, steps: int, runs: int = 7) -> float:
    """Microseconds per call of f: the best of `runs` timed runs of `steps` calls."""
    for _ in range(20):
        f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            f()
        times.append((time.perf_counter() - start) / steps)
    return min(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("N", "K"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native.available():
        raise SystemExit("the native kernels are not available on this CPU (AVX512-VNNI) or did not build")
    shape = tuple(args.shape)
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
    x = torch.randn(1, shape[1], generator=torch.Generator().manual_seed(1))
    types = (GGMLType.Q4_0, GGMLType.MXFP4)
    packed = {t: pack(quantize(w, t), t, shape) for t in types}
    rows = {"native, repacked (default)": {}, "native, file layout": {}, "compiled float32 (--exact)": {}}
    for t, p in packed.items():
        repacked, in_file = native.repacked(p), native.format_of(p)
        rows["native, repacked (default)"][t] = best_of(lambda spec=repacked: native.gemv(x, [spec]), args.steps)
        rows["native, file layout"][t] = best_of(lambda spec=in_file: native.gemv(x, [spec]), args.steps)
    kernels._fast = False  # exact mode: the compiled float32 kernel
    with torch.inference_mode():
        for t, p in packed.items():
            rows["compiled float32 (--exact)"][t] = best_of(lambda w=p: kernels.matmul(x, w), args.steps)
    print(f"{shape[0]} x {shape[1]}, {args.threads} thread(s), microseconds per product")
    print(f"  {'path':30s}" + "".join(f"{t.name:>10s}" for t in types))
    for path, by_type in rows.items():
        print(f"  {path:30s}" + "".join(f"{by_type[t]:10.1f}" for t in types))


if __name__ == "__main__":
    main()
