"""Mixture-of-experts decode, pellucid vs llama.cpp, on a synthetic GGUF with Qwen3-30B-A3B's layer shapes.

    .venv/bin/python benchmarks/moe_bench.py                    # write the file (once), then bench both engines
    .venv/bin/python benchmarks/moe_bench.py --layers 4 --tg 32 --reps 3 --threads 2

The generator (no download, no converter: a few seconds): gguf-py's GGUFWriter writes a `qwen3moe` file with
Qwen3-30B-A3B's layer shapes (hidden 2048, 32 query / 4 KV heads of 128, QK-norm, 128 experts of FFN 768, 8 used,
normalised top-k) but only `--layers` layers (default 4), and the tiny vocabulary of the zoo's qwen3moe fixture
(tests/zoo/qwen3moe/tiny-f32.gguf: 137 tokens, its tokenizer keys copied), so that the experts, not the output
head, are what a decode step reads. Tensor types as llama.cpp's Q4_K_M gives them: Q4_K for attn_q/k/output and
the gate/up expert stacks, Q6_K for attn_v and the down expert stacks, F32 for norms and the router
(ffn_gate_inp), Q6_K output head, Q4_K token embedding. The packed blocks are random bytes with their float16
scales overwritten by valid small values (d ~ 1e-3, dmin ~ 1e-4: no NaN or inf), so both engines compute
finite numbers; routing then depends on random router weights (N(0, 0.02²) float32), which spread tokens over
the experts much as trained routers do. Decode speed does not depend on the values.

Both engines run through `pellucid bench`'s machinery (src/pellucid/bench.py: each in its own process, the same
threads, ppN then tgN after a warm-up, median of --reps), --rounds times alternating; on a machine shared with
other work, which only ever slows a rep down, the summary compares each engine's best rep: llama.cpp through llama-cpp-python
(PELLUCID_LLAMA_CPP_PYTHON, default /work/llcpp/venv/bin/python). The warm-up call decodes tgN tokens, which
touches most experts (8 of 128 per token and layer), so pellucid's one-time repacking of each expert's Q4_K
blocks for its kernels (quant/native) happens before the timed reps. Printed: bytes of weights a decode step reads
(pellucid's `bench.decode_bytes`: attention, router, the 8 routed experts' share of the expert stacks), the
whole file's weights, and tok/s of both with the ratio. The file goes to --out (default
$PELLUCID_HOME/bench-models/qwen3moe-30b-a3b-shape-LAYERSl.gguf), never into the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO_TOKENIZER = ROOT / "tests" / "zoo" / "qwen3moe" / "tiny-f32.gguf"

# Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B)
HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2048, 32, 4, 128
EXPERTS, USED, EXPERT_FFN = 128, 8, 768
ROPE_THETA, NORM_EPS = 1e6, 1e-6


def _blocks(rng, n_rows: int, n_cols: int, qtype) -> np.ndarray:
    """Random packed rows of a K-quant type with valid float16 scales: (n_rows, bytes per row) uint8."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_cols // block
    raw = rng.integers(0, 256, size=(n_rows, n_blocks, size), dtype=np.uint8)
    d = (rng.random((n_rows, n_blocks)) * 2e-3).astype(np.float16).view(np.uint8).reshape(n_rows, n_blocks, 2)
    if qtype == GGMLQuantizationType.Q4_K:  # {f16 d, f16 dmin, u8 scales[12], u8 qs[128]}
        raw[..., 0:2] = d
        dmin = (rng.random((n_rows, n_blocks)) * 2e-4).astype(np.float16).view(np.uint8)
        raw[..., 2:4] = dmin.reshape(n_rows, n_blocks, 2)
    elif qtype == GGMLQuantizationType.Q6_K:  # {u8 ql[128], u8 qh[64], i8 scales[16], f16 d}
        raw[..., 208:210] = d
    else:
        raise ValueError(qtype)
    return raw.reshape(n_rows, n_blocks * size)


def write_model(path: Path, n_layers: int, seed: int = 0) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    rng = np.random.default_rng(seed)
    source = GGUFReader(ZOO_TOKENIZER)
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    writer = GGUFWriter(str(path), "qwen3moe")
    writer.add_name("qwen3moe-30b-a3b-shape")
    writer.add_block_count(n_layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(6144)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(NORM_EPS)
    writer.add_expert_count(EXPERTS)
    writer.add_expert_used_count(USED)
    writer.add_expert_feed_forward_length(EXPERT_FFN)
    writer.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    for name, field in source.fields.items():  # the zoo fixture's tokenizer, as is
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        elif kind == GGUFValueType.STRING:
            writer.add_string(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), kind)

    def packed(name: str, rows: int, cols: int, qtype, stack: int = 1) -> None:
        data = _blocks(rng, stack * rows, cols, qtype)
        shape = (stack, rows, cols) if stack > 1 else (rows, cols)
        writer.add_tensor(name, data.reshape(*shape[:-1], -1), raw_dtype=qtype)  # a byte shape: (..., row bytes)

    def dense(name: str, *shape: int, std: float = 0.0, mean: float = 1.0) -> None:
        values = (mean + std * rng.standard_normal(shape)).astype(np.float32)
        writer.add_tensor(name, values)

    packed("token_embd.weight", vocab, HIDDEN, Q.Q4_K)
    dense("output_norm.weight", HIDDEN)
    packed("output.weight", vocab, HIDDEN, Q.Q6_K)
    for i in range(n_layers):
        b = f"blk.{i}."
        dense(b + "attn_norm.weight", HIDDEN)
        packed(b + "attn_q.weight", HEADS * HEAD_DIM, HIDDEN, Q.Q4_K)
        packed(b + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN, Q.Q4_K)
        packed(b + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN, Q.Q6_K)
        packed(b + "attn_output.weight", HIDDEN, HEADS * HEAD_DIM, Q.Q4_K)
        dense(b + "attn_q_norm.weight", HEAD_DIM)
        dense(b + "attn_k_norm.weight", HEAD_DIM)
        dense(b + "ffn_norm.weight", HIDDEN)
        dense(b + "ffn_gate_inp.weight", EXPERTS, HIDDEN, std=0.02, mean=0.0)
        packed(b + "ffn_gate_exps.weight", EXPERT_FFN, HIDDEN, Q.Q4_K, EXPERTS)
        packed(b + "ffn_up_exps.weight", EXPERT_FFN, HIDDEN, Q.Q4_K, EXPERTS)
        packed(b + "ffn_down_exps.weight", HIDDEN, EXPERT_FFN, Q.Q6_K, EXPERTS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from pellucid.bench import LLAMA_CPP_PYTHON_ENV, format_report, run_bench
    from pellucid.paths import home as pellucid_home

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pp", type=int, default=64)
    parser.add_argument("--tg", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="run both engines this many times, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-llama-cpp", action="store_true", help="pellucid alone")
    args = parser.parse_args()
    out = args.out or pellucid_home() / "bench-models"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"qwen3moe-30b-a3b-shape-{args.layers}l.gguf"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        write_model(path, args.layers)
    os.environ.setdefault(LLAMA_CPP_PYTHON_ENV, "/work/llcpp/venv/bin/python")
    speeds: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.rounds):
        report = run_bench(
            path.name,
            path,
            pp=args.pp,
            tg=args.tg,
            reps=args.reps,
            threads=args.threads,
            compare=[] if args.no_llama_cpp else ["llama.cpp"],
            log=lambda line: print(line, file=sys.stderr),
        )
        print(f"round {round_ + 1} of {args.rounds}:\n{format_report(report)}\n")
        for m in (report.ours, *report.peers):
            speeds.setdefault(m.engine, {"pp": [], "tg": []})
            speeds[m.engine]["pp"] += m.pp_tok_s
            speeds[m.engine]["tg"] += m.tg_tok_s
    print(f"file: {path.stat().st_size / 1e6:.0f} MB; a decode step reads {report.ours.bytes_per_token / 1e6:.1f} MB")
    print(f"best rep of {args.rounds} rounds x {args.reps} (a shared machine only ever slows a rep down):")
    for engine, s in speeds.items():
        if s["tg"]:
            print(f"  {engine:10} pp{args.pp} {max(s['pp']):7.1f} tok/s   tg{args.tg} {max(s['tg']):7.1f} tok/s")
    ours, peer = speeds.get("pellucid"), speeds.get("llama.cpp")
    if ours and peer and peer["tg"]:
        print(
            f"pellucid / llama.cpp: pp {max(ours['pp']) / max(peer['pp']):.2f}x, tg {max(ours['tg']) / max(peer['tg']):.2f}x"
        )


if __name__ == "__main__":
    main()
