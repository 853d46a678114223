"""The decode step (one new token per sequence through the model and its KV cache), compiled block by block.

Decode runs the whole model for a single token, so the work per layer is small and, run eagerly, Python's
dispatch of ~25 ops per layer costs as much as the arithmetic. Compiled, each block is one call: inductor fuses
each packed matrix-vector product (quant/kernels.py) with its neighbours, and norms, RoPE and residuals into a
handful of loops, and writes the KV cache in place.

We compile the block, not the whole model ("regional compilation"): every layer of a model has the same code
and the same shapes, so one graph serves all of them and tracing costs one layer instead of thirty (a model
whose layers differ, e.g. in quant types or sliding windows, gets one graph per kind). Shapes are dynamic, so
the growing number of cached tokens does not recompile it. The first call pays for compiling: about a minute
the first time on a machine, seconds afterwards (inductor's on-disk cache, ~/.cache/pellucid/compiled: see
pellucid.paths).
`PELLUCID_COMPILE=0` runs the same code eagerly.

The batched decode step (`Transformer.decode_batch`: B sequences, one cache each) runs the same compiled
function with a list of B layer caches: one graph per batch size, in which each matrix product unpacks its
weights once for all B rows (`kernels._gemv_rows`) and each sequence attends to its own cache at its own
offset (every offset is symbolic, so sequences at any positions share the graph). Compiled, a step of 8
sequences costs ~2.7x one sequence's step instead of ~3.6x eagerly (benchmarks/batch_decode_bench.py).
"""

from __future__ import annotations

import functools

import torch

from pellucid.quant.kernels import compile_enabled, fast_mode, prepare_compile


def decode_block_runner(device: torch.device | None = None):
    """`run(block, x, rope, cos, sin, layer_cache) -> x`: `Block.forward` compiled, or None to run it eagerly.

    Eagerly: when not compiling, and in the default arithmetic on the CPU, where the products are the native
    int8 kernels and the steps between them native ops too (quant/native/ops.cpp), so a layer is ~10 ops and a
    compiled graph would save nothing per token (Llama-3.2-1B Q4_K_M: 42 ms compiled vs 40 eager) while its
    tracing and guards cost a fresh process seconds before the first token and ~0.2 ms per layer per token.
    """
    if (device is None or device.type == "cpu") and fast_mode():
        return None
    if not compile_enabled() or torch.compiler.is_compiling():
        return None
    return _runner()


@functools.cache
def _runner():
    from pellucid.model.layers import Block

    prepare_compile()
    fast_mode()  # resolved (native kernels built) before tracing: the graphs call them in fast mode
    # dynamic=True: the cache offset (a Python int) is symbolic from the first call, so a block is traced
    # once, not once for the first position and again when automatic dynamic shapes notice the change.
    return _Runner(torch.compile(Block.forward, dynamic=True, fullgraph=True))


class _Runner:
    """Calls the compiled block, marking each new cache's fixed dims (batch, heads, head_dim) static first.

    Every call evaluates all of the compiled block's guards (~0.1 ms per layer on this CPU). Skipping most of
    them (`set_stance(skip_guard_eval_unsafe=True)` once a variant is compiled) saved that, but picked the
    wrong compiled variant for early positions of a sliding-window ring and changed logits by O(1)
    (tests/test_model_batch.py caught it), so we pay for the guards.
    """

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, block, x, rope, cos, sin, cache):
        if block.routed:  # a MoE layer picks its experts from the data: no one graph for it, so it runs eagerly
            return block(x, rope, cos, sin, cache)
        for layer_cache in cache if isinstance(cache, list) else (cache,):
            if not getattr(layer_cache, "_dims_marked", False):
                _mark_fixed_dims(layer_cache)
        return self.compiled(block, x, rope, cos, sin, cache)


def _mark_fixed_dims(cache) -> None:
    from torch._dynamo import mark_static

    for t in (cache.keys, cache.values):
        for dim in (0, 1, 3):
            mark_static(t, dim)
    cache._dims_marked = True
