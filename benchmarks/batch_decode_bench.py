"""Batched decode step in-process: ms per `Transformer.decode_batch` step and aggregate tok/s at B sequences.

    .venv/bin/python benchmarks/batch_decode_bench.py                    # smollm2-135m, B = 1 2 4 8, 30 steps
    .venv/bin/python benchmarks/batch_decode_bench.py --batch 1 8 --steps 50 --repeats 5

No server, no sampling: B sequences are prefilled with prompts of different lengths (so their caches sit at
different offsets, as in the server), then `--steps` decode steps feed each sequence a fixed token. "single"
is the engine's one-sequence decode step (`model(tok.view(1, 1), cache)`, the compiled block graphs), which
is what one stream of the server runs; the ratio column is B-sequence tok/s over it. Each row is the median
of `--repeats` timed runs after one untimed warm-up run (torch.compile's work at a new B).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pellucid.model.loader import load_model
from pellucid.store import resolve


def prefill(model, b: int, capacity: int):
    caches = []
    for i in range(b):
        cache = model.make_cache(capacity=capacity)
        ids = torch.arange(10 + 7 * i, dtype=torch.long).remainder(1000) + 100  # lengths 10, 17, 24, ...
        model.hidden(ids.view(1, -1), cache)
        caches.append(cache)
    return caches


def time_batch(model, b: int, steps: int, capacity: int) -> float:
    """Seconds per decode_batch step over `steps` steps, fresh caches."""
    caches = prefill(model, b, capacity)
    tokens = torch.full((b,), 42, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(steps):
        model.decode_batch(tokens, caches)
    return (time.perf_counter() - start) / steps


def time_single(model, steps: int, capacity: int) -> float:
    (cache,) = prefill(model, 1, capacity)
    token = torch.tensor([[42]], dtype=torch.long)
    start = time.perf_counter()
    for _ in range(steps):
        model(token, cache)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_model(resolve(args.model))
    capacity = 128 + args.steps * 2
    print(f"{args.model}, {torch.get_num_threads()} threads, {args.steps} steps, median of {args.repeats}")
    with torch.inference_mode():
        time_single(model, 5, capacity)
        single = statistics.median(time_single(model, args.steps, capacity) for _ in range(args.repeats))
        print(f"{'single':>8} {single * 1e3:8.2f} ms/step {1 / single:8.1f} tok/s   1.00x")
        for b in args.batch:
            time_batch(model, b, 5, capacity)
            step = statistics.median(time_batch(model, b, args.steps, capacity) for _ in range(args.repeats))
            print(f"{'B=' + str(b):>8} {step * 1e3:8.2f} ms/step {b / step:8.1f} tok/s {b / step * single:6.2f}x")


if __name__ == "__main__":
    main()
