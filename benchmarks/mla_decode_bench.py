"""Latent attention (MLA) decode at DeepSeek-V2-Lite's attention shape: ms per layer and whole-model tok/s.

    .venv/bin/python benchmarks/mla_decode_bench.py                       # contexts 512 and 4096, 4 layers
    .venv/bin/python benchmarks/mla_decode_bench.py --contexts 256 2048 --layers 2

Random weights (float32, dense), V2-Lite's attention: hidden 2048, 16 heads of 128 + 64 RoPE dims, values 128,
latent 512, no low-rank query. Per layer, one decode token over a cache of `context` tokens:

- "MLA absorbed": pellucid's decode step (K_b folded into the query, attention over the latent cache);
- "MLA decompress": the same step forced to decompress every cached latent into per-head keys and values first
  (what a decode step would cost without absorption);
- "MHA, same heads": ordinary attention (`layers.Attention`) over an uncompressed cache of the decompressed
  shape (16 heads x (192 + 128) per token), for scale.

Then whole-model decode tok/s (eager, `PELLUCID_COMPILE=0` or not: on the CPU the default arithmetic runs
blocks eagerly) with `--layers` such layers and a dense FFN of `--ffn` (the attention is what this measures;
benchmarks/moe_bench.py measures expert layers; 1,408 = one V2-Lite expert's width). Each number is the median of `--repeats` timings of `--steps` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pellucid.model.config import ModelConfig
from pellucid.model.families import family_for
from pellucid.model.layers import Attention, Linear, RotaryEmbedding
from pellucid.model.loader import Weights, build_transformer

HIDDEN, HEADS, NOPE, ROPE, V, RANK = 2048, 16, 128, 64, 128, 512


def v2_lite_config(n_layers: int, ffn: int, context: int) -> ModelConfig:
    return ModelConfig(
        architecture="deepseek2",
        n_layers=n_layers,
        hidden_size=HIDDEN,
        n_heads=HEADS,
        n_kv_heads=HEADS,
        head_dim=NOPE + ROPE,
        value_head_dim=V,
        ffn_size=ffn,
        vocab_size=1024,
        context_length=context,
        norm_eps=1e-6,
        rope_theta=10_000.0,
        rope_dim=ROPE,
        rope_style="interleaved",
        tie_embeddings=False,
        kv_lora_rank=RANK,
    )


def random_weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    names = family_for("deepseek2").gguf_names

    def w(*shape):
        return torch.randn(*shape, generator=g) * shape[-1] ** -0.5

    out = {names.embed: w(config.vocab_size, HIDDEN), names.output: w(config.vocab_size, HIDDEN)}
    out[names.output_norm] = torch.ones(HIDDEN)
    for i in range(config.n_layers):
        layer = {
            names.attn_norm: torch.ones(HIDDEN),
            names.q: w(HEADS * (NOPE + ROPE), HIDDEN),
            names.kv_a: w(RANK + ROPE, HIDDEN),
            names.kv_a_norm: torch.ones(RANK),
            names.k_b: w(HEADS, RANK, NOPE),
            names.v_b: w(HEADS, V, RANK),
            names.o: w(HIDDEN, HEADS * V),
            names.ffn_norm: torch.ones(HIDDEN),
            names.gate: w(config.ffn_size, HIDDEN),
            names.up: w(config.ffn_size, HIDDEN),
            names.down: w(HIDDEN, config.ffn_size),
        }
        out.update({k.format(i=i): t for k, t in layer.items()})
    return out


def median_ms(fn, steps: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def layer_timings(model, context: int, steps: int, repeats: int) -> dict[str, float]:
    block, rope = model.blocks[0], model.rope
    x = torch.randn(1, 1, HIDDEN)
    cos, sin = rope.tables(torch.tensor([context - 1]))
    cache = model.make_cache(capacity=context)
    cache.layers[0].offset = context - 1  # a cache holding context - 1 tokens (random latents)
    cache.layers[0].keys.normal_()
    attn = block.attn

    def step():
        cache.layers[0].offset = context - 1
        attn(x, rope, cos, sin, cache.layers[0])

    absorbed = median_ms(step, steps, repeats)
    attn._attend = lambda q_nope, q_pe, keys: attn._attend_decompressed(q_nope, q_pe, keys, None, False)
    decompress = median_ms(step, steps, repeats)
    del attn._attend  # back to the class's choice

    from pellucid.engine.kv_cache import KVCache

    mha = Attention(
        *(Linear(torch.randn(n, HIDDEN) * HIDDEN**-0.5) for n in (HEADS * (NOPE + ROPE),) * 2 + (HEADS * V,)),
        Linear(torch.randn(HIDDEN, HEADS * V) * (HEADS * V) ** -0.5),
        n_heads=HEADS,
        n_kv_heads=HEADS,
        head_dim=NOPE + ROPE,
        value_head_dim=V,
    )
    mha_rope = RotaryEmbedding(NOPE + ROPE, 10_000.0, "neox")
    mcos, msin = mha_rope.tables(torch.tensor([context - 1]))
    mcache = KVCache(1, HEADS, context, NOPE + ROPE, V, device="cpu", dtype=torch.float32)

    def mha_step():
        mcache.offset = context - 1
        mha(x, mha_rope, mcos, msin, mcache)

    return {"absorbed": absorbed, "decompress": decompress, "mha": median_ms(mha_step, steps, repeats)}


@torch.inference_mode()
def model_tok_s(model, context: int, steps: int, repeats: int) -> float:
    cache = model.make_cache(capacity=context)
    model(torch.arange(context - steps - 2).remainder(1000).view(1, -1), cache)
    start_offset = cache.offset
    token = torch.tensor([[42]])

    def run():
        cache.trim(cache.offset - start_offset)
        for _ in range(steps):
            model(token, cache)

    return 1e3 / (median_ms(run, 1, repeats) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1408)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = v2_lite_config(args.layers, args.ffn, max(args.contexts))
    model = build_transformer(config, Weights.from_dict(random_weights(config)), family_for("deepseek2").gguf_names)
    model.eval()
    kv = config.kv_bytes_per_token(2)
    mha = config.n_layers * HEADS * (NOPE + ROPE + V) * 2
    print(
        f"torch threads {torch.get_num_threads()}; KV per token (f16): MLA {kv:,.0f} B, MHA {mha:,} B ({mha / kv:.1f}x)"
    )
    print("context | MLA absorbed ms/layer | MLA decompress ms/layer | MHA (same heads) ms/layer | model tok/s")
    for context in args.contexts:
        t = layer_timings(model, context, args.steps, args.repeats)
        tok_s = model_tok_s(model, context, args.steps, args.repeats)
        print(f"{context:,} | {t['absorbed']:.2f} | {t['decompress']:.2f} | {t['mha']:.2f} | {tok_s:.1f}")


if __name__ == "__main__":
    main()
