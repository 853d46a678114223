"""`pellucid quantize` against llama.cpp's `llama_model_quantize` on a real model: bytes, time and perplexity.

    .venv/bin/python benchmarks/quantize_vs_llamacpp.py                       # SmolLM2-135M (catalog), Q4_K_M Q4_K_S Q4_0
    .venv/bin/python benchmarks/quantize_vs_llamacpp.py --src F16.gguf --types Q4_K_M Q5_K_M Q8_0

For each type: llama.cpp's quantizer (llama-cpp-python 0.3.36 in LLAMACPP_PYTHON, default /work/llcpp/venv, as a
subprocess; `allow_requantize`, since the catalog file is already Q4_1) and pellucid's write a file from the same
source; the script reports whether the files are the same bytes (and which tensors differ if not), each side's
time, and the perplexity of both files, measured by pellucid (engine/perplexity.py, llama-perplexity's windows) and
by llama.cpp (the same windows: the second half of each window of --ctx tokens scored, BOS first), on the text of
tests/data/debian_faq (the Debian FAQ's answers). Files go to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pellucid import store
from pellucid.engine.perplexity import perplexity
from pellucid.formats.gguf import GGUFFile
from pellucid.model.loader import load_model
from pellucid.quantize_file import FILE_TYPES, quantize_file
from pellucid.tokenizer import load_tokenizer

LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llcpp/venv/bin/python")
FAQ = Path(__file__).resolve().parent.parent / "tests" / "data" / "debian_faq" / "faq.jsonl"

LLAMACPP_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = 1; p.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""

# llama-perplexity's measure: windows of ctx tokens, BOS first, the second half scored (natural-log NLL).
LLAMACPP_PPL = """
import json, sys, numpy as np, llama_cpp
ids, ctx, bos = json.loads(open(sys.argv[2]).read()), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(sys.argv[1], n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False, n_threads=2)
nll = []
for w in range(len(ids) // ctx):
    window = ids[w * ctx : (w + 1) * ctx]
    if bos >= 0:
        window[0] = bos
    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[:ctx], dtype=np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    first = ctx // 2
    nll += [-logp[i - 1, window[i]] for i in range(first, ctx)]
print(json.dumps(float(np.exp(np.mean(nll)))))
"""


def faq_text() -> str:
    return "\n\n".join(json.loads(line)["answer"] for line in FAQ.read_text().splitlines() if line.strip())


def llamacpp_quantize(src: Path, dst: Path, type_name: str) -> float:
    started = time.perf_counter()
    ftype = str(FILE_TYPES[type_name].ftype)
    proc = subprocess.run([LLAMACPP_PYTHON, "-c", LLAMACPP_QUANTIZE, str(src), str(dst), ftype], capture_output=True)
    if proc.returncode:
        sys.exit(f"llama.cpp could not quantize to {type_name}: {proc.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def differing_tensors(a: Path, b: Path) -> list[str]:
    with GGUFFile(a) as x, GGUFFile(b) as y:
        if set(x.tensors) != set(y.tensors):
            return ["(different tensor sets)"]
        return [
            n
            for n in x.tensors
            if x.tensors[n].ggml_type != y.tensors[n].ggml_type or not np.array_equal(x.raw(n), y.raw(n))
        ]


def pellucid_ppl(path: Path, ids: list[int], ctx: int, bos: int | None) -> float:
    model = load_model(path, device="cpu")
    model.use_context(ctx)
    with torch.inference_mode():
        return perplexity(model, ids, ctx, bos_id=bos).ppl


def llamacpp_ppl(path: Path, ids: list[int], ctx: int, bos: int | None, workdir: Path) -> float:
    ids_file = workdir / "ids.json"
    ids_file.write_text(json.dumps(ids))
    cmd = [LLAMACPP_PYTHON, "-c", LLAMACPP_PPL, str(path), str(ids_file), str(ctx), str(-1 if bos is None else bos)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"llama.cpp could not run {path.name}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default="smollm2-135m", help="a model name or .gguf path (default: smollm2-135m)")
    parser.add_argument("--types", nargs="+", default=["Q4_K_M", "Q4_K_S", "Q4_0"])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--windows", type=int, default=6, help="perplexity windows at most (default 6)")
    args = parser.parse_args()

    src = store.resolve(args.src).path
    tok = load_tokenizer(store.resolve(args.src))
    ids = tok.encode(faq_text(), add_special=True)[: args.ctx * args.windows]
    bos = tok.bos_id if tok.add_bos else None
    print(f"source {src.name}; perplexity over {len(ids) // args.ctx} windows of {args.ctx} (Debian FAQ answers)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(
            "| type | same bytes as llama.cpp | pellucid s | llama.cpp s | ppl (pellucid's file) | ppl (llama.cpp's file) | Δ |"
        )
        print("|---|---|---|---|---|---|---|")
        for type_name in args.types:
            theirs, ours = work / f"llamacpp-{type_name}.gguf", work / f"pellucid-{type_name}.gguf"
            t_theirs = llamacpp_quantize(src, theirs, type_name)
            started = time.perf_counter()
            quantize_file(src, ours, type_name)
            t_ours = time.perf_counter() - started
            differ = differing_tensors(ours, theirs)
            same = "yes (whole file)" if ours.read_bytes() == theirs.read_bytes() else f"no: {differ[:5]}"
            for measure, label in ((pellucid_ppl, "pellucid"), (llamacpp_ppl, "llama.cpp")):
                extra = (work,) if measure is llamacpp_ppl else ()
                p_ours, p_theirs = (measure(f, ids, args.ctx, bos, *extra) for f in (ours, theirs))
                delta = 100 * (p_ours / p_theirs - 1)
                assert math.isfinite(delta)
                print(
                    f"| {type_name} (ppl by {label}) | {same} | {t_ours:.1f} | {t_theirs:.1f} | {p_ours:.4f} | "
                    f"{p_theirs:.4f} | {delta:+.3f}% |"
                )


if __name__ == "__main__":
    main()
