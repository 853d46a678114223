"""Latent attention's per-head decompression matrices in a decode step: dense (as the loader keeps them) or packed.

    .venv/bin/python benchmarks/mla_kb_packed_bench.py              # V2-Lite's and V3's shapes, 2 threads
    .venv/bin/python benchmarks/mla_kb_packed_bench.py --threads 1 --steps 50

An absorbed decode step (layers/latent_attention.py) multiplies each head's query by its K_b (q_abs = K_b^T q_nope)
and each head's weighted latent by its V_b. The loader dequantizes both (GGUF `attn_k_b`, `attn_v_b`) to dense
float32 at load: DeepSeek-V3 holds 61 x 128 heads x 2 x 128 x 512 of them, 4.1 GB in float32 against 1.1 GB as
Q8_0. Per layer, one token, random weights:

- "dense f32": the einsums of `_attend_absorbed` on float32 matrices (today);
- "dense bf16": the same matrices kept in bfloat16, cast to float32 each step;
- "packed q8_0": the file's Q8_0 bytes, one native grouped product per matrix (each head's row against its own
  slice of the stack, `kernels.matmul_grouped`, as a MoE layer runs its experts);
- "dequantize per step": the packed bytes unpacked to float32 on every step (what an arithmetic without the
  native kernels, e.g. exact mode, would pay if nothing dense were kept).

Median of --repeats timings of --steps steps. Packed Q8_0 also rounds the query to 8 bits (llama.cpp's
arithmetic): its max error against dense float32 is printed.

Measured on the shared 2-core development machine (load ~20, so only ratios side by side mean anything), 1 thread,
ms per layer and token: V2-Lite dense f32 1.19, dense bf16 1.94, packed Q8_0 0.39, dequantize per step 27.8;
V3 18.9, 133.5, 5.26, 435. Packed is 3-3.6x faster than dense float32 (it reads 3.8x fewer bytes) and saves
V3 ~3 GB; unpacking per step is 20-25x slower, so a packed K_b / V_b needs a dense copy (or the native grouped
product) wherever the native kernels do not apply. The loader still keeps them dense (not changed yet).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pellucid.quant import kernels
from pellucid.quant.quantize import quantize_to_packed
from pellucid.quant.types import GGMLType

SHAPES = {"DeepSeek-V2-Lite": (16, 128, 512, 128), "DeepSeek-V3": (128, 128, 512, 128)}  # heads, nope, rank, v


def timed(step, steps: int, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def bench_shape(heads: int, nope: int, rank: int, v: int, steps: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    k_b = torch.randn(heads, nope, rank, generator=g) * nope**-0.5  # (H, nope, rank), as LatentAttention holds it
    v_b = torch.randn(heads, v, rank, generator=g) * rank**-0.5
    q_nope = torch.randn(1, 1, heads, nope, generator=g)
    out = torch.randn(1, heads, 1, rank, generator=g)
    # the GGUF layouts: attn_k_b (H, rank, nope), attn_v_b (H, v, rank), packed as (H * rows, K)
    k_packed = quantize_to_packed(k_b.transpose(1, 2).reshape(heads * rank, nope).contiguous(), GGMLType.Q8_0)
    v_packed = quantize_to_packed(v_b.reshape(heads * v, rank).contiguous(), GGMLType.Q8_0)
    k_heads = [k_packed.row_slice(h * rank, (h + 1) * rank) for h in range(heads)]
    v_heads = [v_packed.row_slice(h * v, (h + 1) * v) for h in range(heads)]

    def dense(dtype):
        k, vv = k_b.to(dtype), v_b.to(dtype)

        def step():
            torch.einsum("bthn,hnr->bhtr", q_nope, k.float())
            return torch.einsum("bhtr,hvr->bthv", out, vv.float())

        return step

    def packed():
        q_abs = kernels.matmul_grouped(q_nope.view(heads, nope), [1] * heads, k_heads)
        return q_abs, kernels.matmul_grouped(out.view(heads, rank), [1] * heads, v_heads)

    def dequantized():
        k = kernels.dequantize(k_packed).view(heads, rank, nope)
        vv = kernels.dequantize(v_packed).view(heads, v, rank)
        torch.einsum("bthn,hrn->bhtr", q_nope, k)
        return torch.einsum("bhtr,hvr->bthv", out, vv)

    q_abs = packed()[0]
    if q_abs is None:
        raise SystemExit("the native kernels do not apply here (exact mode or no AVX512-VNNI): nothing to compare")
    expected = torch.einsum("bthn,hnr->bhtr", q_nope, k_b).reshape(heads, rank)
    error = float((q_abs - expected).abs().max() / expected.abs().max())
    mib = (k_b.numel() + v_b.numel()) * 4 / 2**20
    print(f"{heads} heads: K_b + V_b per layer {mib:.1f} MiB f32, {mib / 2:.1f} bf16, {mib * 34 / 128:.1f} Q8_0; "
          f"packed max rel error {error:.1e}")  # fmt: skip
    for label, step in (
        ("dense f32", dense(torch.float32)),
        ("dense bf16", dense(torch.bfloat16)),
        ("packed q8_0", packed),
        ("dequantize per step", dequantized),
    ):
        print(f"  {label:22s} {timed(step, steps, repeats):8.3f} ms per layer and token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, shape in SHAPES.items():
        print(f"== {name}")
        bench_shape(*shape, args.steps, args.repeats)


if __name__ == "__main__":
    main()
