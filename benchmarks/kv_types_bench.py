"""KV cache types side by side: what each costs in perplexity, memory and decode speed, pellucid beside llama.cpp.

    .venv/bin/python benchmarks/kv_types_bench.py                       # f32 f16 bf16 q8_0 q4_0, both catalog models
    .venv/bin/python benchmarks/kv_types_bench.py --types f32,f16 --quick --out /tmp/kv.md
    .venv/bin/python benchmarks/kv_types_bench.py --engines llama.cpp  # one side only (the other's cells say so)

For each type T (the cache's keys and values both stored as T), on SmolLM2-135M and Gemma 3 270M (the catalog's):

(a) perplexity  at ctx 512 over the Debian FAQ's answers (tests/data/debian_faq): pellucid through `pellucid ppl
    --kv-type T` (engine/perplexity.py: llama-perplexity's windows, the second half of each scored, BOS first),
    llama.cpp (llama-cpp-python, type_k = type_v = T) over the same token ids, windows and scored positions, from
    its logits_all. Both sides score the same tokens: the table says how many. llama.cpp runs with flash
    attention for q8_0 / q4_0 only, which need it: with it, an f32 cache is cast to f16 before attention
    (bench.llama_flash_attn), and the f32 row would be f16's.
(b) memory      peak RSS of a fresh pellucid process that fills the context (SmolLM2 to 8,192 tokens, Gemma 3 to
    32,768: N - 1 tokens prefilled in 512-token passes, then one decode step, as a conversation fills it) against
    `pellucid fit`'s estimate for that context and type (memory.estimate, the file's weights as the engine keeps
    them).
(c) decode      tok/s of tgN decode steps after 4,096 tokens of context, pellucid against llama.cpp, as `pellucid
    bench --ctx-fill 4096 --kv-type T --compare llama.cpp` measures it (src/pellucid/bench.py, each engine in a
    fresh process on the same threads).

--quick shrinks (a) to 4 windows, (b) to 2,048 / 4,096 tokens and (c) to a 1,024-token fill with fewer steps, to
try the script in a few minutes. A type this pellucid does not have (before cache types landed, all but f32) gets
"n/a" in its cells with the reason below the table, and llama.cpp's numbers still come. llama.cpp runs in
LLAMACPP_PYTHON (default /work/llcpp/venv/bin/python), as PELLUCID_LLAMA_CPP_PYTHON for `pellucid bench`.

The report is a markdown document on stdout (and in --out); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pellucid import bench, memory, store
from pellucid.errors import PellucidError

MODELS = ("smollm2-135m", "gemma3-270m")
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
PPL_CTX = 512
# (b)'s fills: each model's context as a long conversation uses it (SmolLM2's whole 8,192 window)
MEMORY_FILL = {"smollm2-135m": 8192, "gemma3-270m": 32768}
QUICK_MEMORY_FILL = {"smollm2-135m": 2048, "gemma3-270m": 4096}
DECODE_FILL, QUICK_DECODE_FILL = 4096, 1024
FAQ = Path(__file__).resolve().parent.parent / "tests" / "data" / "debian_faq" / "faq.jsonl"
LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llcpp/venv/bin/python")

# llama-perplexity's measure in llama.cpp, on the token ids pellucid's tokenizer gave: windows of ctx tokens, BOS
# first, the logits at positions ctx/2 .. ctx-2 scoring tokens ctx/2+1 .. ctx-1 (engine/perplexity.py's). The ±
# is the standard error of the mean NLL carried through exp, as both llama-perplexity and pellucid report it.
LLAMACPP_PPL = """
import json, math, sys, numpy as np, llama_cpp
path, ids_file = sys.argv[1], sys.argv[2]
ctx, bos, type_k, type_v, threads, flash = (int(a) for a in sys.argv[3:9])
ids = json.loads(open(ids_file).read())
llm = llama_cpp.Llama(path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, verbose=False, n_threads=threads,
                      n_threads_batch=threads, type_k=type_k, type_v=type_v, flash_attn=bool(flash))
first, nll = ctx // 2, []
for w in range(len(ids) // ctx):
    window = ids[w * ctx : (w + 1) * ctx]
    if bos >= 0:
        window[0] = bos
    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[first : ctx - 1], dtype=np.float64)
    top = logits.max(1, keepdims=True)
    logz = (top + np.log(np.exp(logits - top).sum(1, keepdims=True)))[:, 0]
    nll += list(logz - logits[np.arange(len(logits)), window[first + 1 :]])
nll = np.array(nll)
ppl = math.exp(nll.mean())
print(json.dumps({"ppl": ppl, "ppl_stderr": ppl * math.sqrt(nll.var() / (len(nll) - 1)), "n_scored": len(nll)}))
"""


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def faq_text(min_tokens: int, tokenizer) -> str:
    """The Debian FAQ's answers, as many as it takes to reach `min_tokens` tokens (all of them for 0)."""
    answers = [json.loads(line)["answer"] for line in FAQ.read_text().splitlines() if line.strip()]
    for n in range(1, len(answers) + 1):
        text = "\n\n".join(answers[:n])
        if min_tokens and len(tokenizer.encode(text, add_special=True)) >= min_tokens:
            return text
    return "\n\n".join(answers)


def run_json(cmd: list[str], threads: int) -> dict:
    """Run `cmd`; the JSON on its last stdout line, or a PellucidError with its last stderr line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PellucidError(f"exit {proc.returncode}: {tail}")
    return json.loads(lines[-1])


# -- (a) perplexity ---------------------------------------------------------------------------------------------


def ppl_cli_has_kv_type() -> bool:
    """Whether this pellucid's `ppl` takes --kv-type (the cache types' branch adds it)."""
    proc = subprocess.run([sys.executable, "-m", "pellucid", "ppl", "--help"], capture_output=True, text=True)
    return "--kv-type" in proc.stdout


def pellucid_ppl(model: str, text_file: Path, kv_type: str, threads: int, has_kv_type: bool) -> dict:
    cmd = [sys.executable, "-m", "pellucid", "ppl", model, str(text_file), "--ctx", str(PPL_CTX), "--json"]
    if has_kv_type:
        cmd += ["--kv-type", kv_type]
    elif kv_type != "f32":
        raise PellucidError("this pellucid's ppl has no --kv-type (f32 only)")
    return run_json(cmd, threads)


def llamacpp_ppl(path: Path, ids_file: Path, bos: int | None, kv_type: str, threads: int) -> dict:
    ggml = str(bench.KV_TYPES[kv_type])
    flash = str(int(bench.llama_flash_attn(kv_type)))
    args = [str(path), str(ids_file), str(PPL_CTX), str(-1 if bos is None else bos), ggml, ggml, str(threads), flash]
    return run_json([LLAMACPP_PYTHON, "-c", LLAMACPP_PPL, *args], threads)


def perplexity_part(models, types, engines, threads: int, windows: int, workdir: Path) -> list[dict]:
    from pellucid.tokenizer import load_tokenizer

    has_kv_type = "pellucid" in engines and ppl_cli_has_kv_type()
    rows = []
    for name in models:
        resolved = store.resolve(name)
        tok = load_tokenizer(resolved)
        text = faq_text(windows * PPL_CTX, tok)
        text_file, ids_file = workdir / f"{name}.txt", workdir / f"{name}.ids.json"
        text_file.write_text(text, encoding="utf-8")
        ids = tok.encode(text, add_special=True)  # what `pellucid ppl` reads from the file, token for token
        ids = ids[: (len(ids) // PPL_CTX) * PPL_CTX]
        ids_file.write_text(json.dumps(ids))
        bos = tok.bos_id if tok.add_bos else None
        for kv_type in types:
            row = {"model": name, "kv_type": kv_type, "windows": len(ids) // PPL_CTX}
            for engine in engines:
                log(f"(a) perplexity: {name}, KV {kv_type}, {engine} ...")
                try:
                    if engine == "pellucid":
                        row[engine] = pellucid_ppl(name, text_file, kv_type, threads, has_kv_type)
                    else:
                        row[engine] = llamacpp_ppl(resolved.path, ids_file, bos, kv_type, threads)
                except PellucidError as e:
                    row[engine] = {"error": str(e)}
                log(f"    {row[engine]}")
            rows.append(row)
    return rows


# -- (b) memory -------------------------------------------------------------------------------------------------


def fill_worker(model: str, n: int, kv_type: str) -> None:
    """(b)'s fresh process: fill `model`'s cache to `n` tokens, print peak RSS and the cache's bytes as JSON."""
    import torch

    import pellucid
    from pellucid.engine.generate import PREFILL_CHUNK

    llm = pellucid.load(model, device="cpu", ctx=n, **bench.pellucid_kv_args(kv_type, kv_type))
    tok, cache = llm.tokenizer, llm.session.cache
    ids = bench.fill_ids(tok.encode(bench.FILL_TEXT, add_special=False), [tok.bos_id] if tok.add_bos else [], n)
    with torch.inference_mode():
        for start in range(0, n - 1, PREFILL_CHUNK):  # the prompt: n - 1 tokens, in generation's passes
            hidden = llm.model.hidden(torch.tensor([ids[start : min(start + PREFILL_CHUNK, n - 1)]]), cache)
        llm.model.logits(hidden[:, -1:])
        llm.model(torch.tensor([ids[-1:]]), cache)  # one decode step (compiled, as generation's): n tokens held
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"peak_rss_bytes": peak, "kv_cache_bytes": cache.n_bytes, "offset": cache.offset}))


def memory_part(models, types, threads: int, fills: dict[str, int]) -> list[dict]:
    from pellucid.inspect import footprint

    rows = []
    for name in models:
        fp = footprint(store.resolve(name))
        n = min(fills[name], fp.config.context_length)
        for kv_type in types:
            row = {"model": name, "kv_type": kv_type, "n_ctx": n}
            try:
                row["estimate_bytes"] = memory.estimate(fp, n, kv_type=kv_type).total
                row["estimate_kv_bytes"] = memory.kv_cache_bytes(fp.config, n, kv_type)
            except PellucidError as e:
                row["estimate_error"] = str(e)
            log(f"(b) memory: {name} filled to {n:,}, KV {kv_type} ...")
            try:
                bench.pellucid_kv_args(kv_type, kv_type)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--fill-worker", name, str(n), kv_type]
                row |= run_json(cmd, threads)
            except PellucidError as e:
                row["error"] = str(e)
            log(f"    {row}")
            rows.append(row)
    return rows


# -- (c) decode -------------------------------------------------------------------------------------------------


def decode_part(models, types, engines, threads: int, fill: int, tg: int, reps: int) -> list[dict]:
    rows = []
    for name in models:
        path = store.resolve(name).path
        bench.check_ctx_fill(path, fill, tg)
        for kv_type in types:
            row = {"model": name, "kv_type": kv_type, "fill": fill, "tg": tg}
            for engine in engines:
                log(f"(c) decode: {name}, fill {fill:,}, tg{tg} x{reps}, KV {kv_type}, {engine} ...")
                try:
                    if engine == "pellucid":
                        bench.pellucid_kv_args(kv_type, kv_type)
                    m = bench.measure_fill(engine, path, fill, tg, reps, threads, (kv_type, kv_type))
                    if m.skipped:
                        raise PellucidError(m.skipped)
                    row[engine] = {
                        "tg_tok_s": bench.Measurement.summary(m.tg_tok_s),
                        "fill_tok_s": m.pp_tok_s[0],
                        "peak_rss_mb": m.peak_rss_mb,
                    }
                except PellucidError as e:
                    row[engine] = {"error": str(e)}
                log(f"    {row[engine]}")
            rows.append(row)
    return rows


# -- the report -------------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


class Notes:
    """Footnotes for cells without a number: each distinct reason once, numbered."""

    def __init__(self):
        self.reasons: list[str] = []

    def cell(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"n/a [{self.reasons.index(reason) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {reason}  " for i, reason in enumerate(self.reasons, 1)]


def ppl_table(rows: list[dict], engines, notes: Notes) -> list[str]:
    out = [
        "| model | KV cache | windows (scored) | pellucid ppl | llama.cpp ppl | pellucid / llama.cpp |",
        "|---" * 6 + "|",
    ]
    for row in rows:
        cells, values = [], {}
        for engine in ("pellucid", "llama.cpp"):
            r = row.get(engine) or {"error": f"not run (--engines {','.join(engines)})"}
            if "error" in r:
                cells.append(notes.cell(f"{engine}: {r['error']}"))
            else:
                values[engine] = r
                cells.append(f"{r['ppl']:.4f} ± {r['ppl_stderr']:.4f}")
        scored = {v["n_scored"] for v in values.values()}
        ratio = f"{values['pellucid']['ppl'] / values['llama.cpp']['ppl']:.4f}" if len(values) == 2 else "-"
        n = f"{row['windows']} ({'/'.join(f'{s:,}' for s in sorted(scored)) or '-'})"
        out.append(f"| {row['model']} | {row['kv_type']} | {n} | {cells[0]} | {cells[1]} | {ratio} |")
    return out


def memory_table(rows: list[dict], notes: Notes) -> list[str]:
    out = ["| model | KV cache | context filled | peak RSS | fit's estimate | measured / estimate | KV cache (engine / fit) |",
           "|---" * 7 + "|"]  # fmt: skip
    for row in rows:
        est = mib(row["estimate_bytes"]) if "estimate_bytes" in row else notes.cell(f"fit: {row['estimate_error']}")
        if "error" in row:
            rss = ratio = kv = notes.cell(f"pellucid: {row['error']}")
        else:
            rss = mib(row["peak_rss_bytes"])
            ratio = f"{row['peak_rss_bytes'] / row['estimate_bytes']:.2f}" if "estimate_bytes" in row else "-"
            kv = (
                f"{mib(row['kv_cache_bytes'])} / {mib(row['estimate_kv_bytes'])}" if "estimate_kv_bytes" in row else "-"
            )
        out.append(f"| {row['model']} | {row['kv_type']} | {row['n_ctx']:,} | {rss} | {est} | {ratio} | {kv} |")
    return out


def decode_table(rows: list[dict], engines, notes: Notes) -> list[str]:
    out = ["| model | KV cache | fill | pellucid tg tok/s | llama.cpp tg tok/s | pellucid / llama.cpp | fill tok/s (pellucid / llama.cpp) |",
           "|---" * 7 + "|"]  # fmt: skip
    for row in rows:
        cells, fills, medians = [], [], {}
        for engine in ("pellucid", "llama.cpp"):
            r = row.get(engine) or {"error": f"not run (--engines {','.join(engines)})"}
            if "error" in r:
                cells.append(notes.cell(f"{engine}: {r['error']}"))
                fills.append("-")
            else:
                median, spread = r["tg_tok_s"]
                medians[engine] = median
                cells.append(f"{median:.1f} ± {spread:.1f}")
                fills.append(f"{r['fill_tok_s']:.0f}")
        ratio = f"{medians['pellucid'] / medians['llama.cpp']:.2f}" if len(medians) == 2 else "-"
        out.append(
            f"| {row['model']} | {row['kv_type']} | {row['fill']:,} | {cells[0]} | {cells[1]} | {ratio} | "
            f"{' / '.join(fills)} |"
        )
    return out


def report(args, ppl_rows, memory_rows, decode_rows) -> str:
    notes = Notes()
    lines = [
        f"## KV cache types ({time.strftime('%Y-%m-%d')}, {args.threads} threads{', --quick' if args.quick else ''})",
        "",
        f"`benchmarks/kv_types_bench.py --types {','.join(args.types)} --engines {','.join(args.engines)}"
        f"{' --quick' if args.quick else ''}`; keys and values stored as the same type; llama.cpp with flash "
        "attention for q8_0 / q4_0 (which need it), without for f32 / f16 / bf16 (with it, an f32 cache is cast "
        "to f16).",
    ]
    if ppl_rows:
        lines += [
            "",
            f"Perplexity at ctx {PPL_CTX} (Debian FAQ answers, the same token ids and windows on both sides):",
            "",
        ]
        lines += ppl_table(ppl_rows, args.engines, notes)
    if memory_rows:
        lines += ["", "Peak RSS of a fresh pellucid process that fills the context, against `pellucid fit`:", ""]
        lines += memory_table(memory_rows, notes)
    if decode_rows:
        lines += [
            "",
            f"Decode after a filled context (tg{decode_rows[0]['tg']}, median ± spread of {args.reps} reps):",
            "",
        ]
        lines += decode_table(decode_rows, args.engines, notes)
    if notes.reasons:
        lines += [""] + notes.lines()
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    from pellucid.device import physical_cores

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--types", default=",".join(TYPES), help=f"comma-separated KV cache types (default {','.join(TYPES)})"
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated models (default {','.join(MODELS)})")
    p.add_argument("--engines", default="pellucid,llama.cpp", help="pellucid, llama.cpp or both (default both)")
    p.add_argument("--parts", default="ppl,memory,decode", help="which of ppl, memory, decode (default all)")
    p.add_argument("--quick", action="store_true", help="smaller contexts and fewer windows and steps")
    p.add_argument("--windows", type=int, help="perplexity windows per model (default: all the text's; --quick 4)")
    p.add_argument("--tg", type=int, help="decode steps per rep (default 64; --quick 16)")
    p.add_argument("--reps", type=int, help="timed decode reps (default 3; --quick 2)")
    p.add_argument("--threads", type=int, default=physical_cores(), help="threads for every engine")
    p.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = p.parse_args(argv)
    for key in ("types", "models", "engines", "parts"):
        setattr(args, key, [x.strip() for x in getattr(args, key).split(",") if x.strip()])
    unknown = [t for t in args.types if t not in bench.KV_TYPES]
    unknown += [e for e in args.engines if e not in ("pellucid", "llama.cpp")]
    unknown += [x for x in args.parts if x not in ("ppl", "memory", "decode")]
    if unknown:
        p.error(f"unknown {', '.join(unknown)}; types: {', '.join(bench.KV_TYPES)}")
    args.windows = args.windows or (4 if args.quick else 0)
    args.tg = args.tg or (16 if args.quick else 64)
    args.reps = args.reps or (2 if args.quick else 3)
    return args


def main() -> None:
    if "--fill-worker" in sys.argv:
        model, n, kv_type = sys.argv[sys.argv.index("--fill-worker") + 1 :]
        return fill_worker(model, int(n), kv_type)
    args = parse_args()
    os.environ.setdefault(bench.LLAMA_CPP_PYTHON_ENV, LLAMACPP_PYTHON)  # the llama.cpp worker of (c)
    rows = {"ppl": [], "memory": [], "decode": []}

    def save() -> str:  # after each part, so that a long run stopped early keeps what it measured
        text = report(args, rows["ppl"], rows["memory"], rows["decode"])
        if args.out:
            args.out.write_text(text)
        return text

    if "ppl" in args.parts:
        with tempfile.TemporaryDirectory(prefix="kv-types-bench-") as workdir:
            rows["ppl"] = perplexity_part(
                args.models, args.types, args.engines, args.threads, args.windows, Path(workdir)
            )
        save()
    if "memory" in args.parts and "pellucid" in args.engines:
        fills = QUICK_MEMORY_FILL if args.quick else MEMORY_FILL
        rows["memory"] = memory_part(args.models, args.types, args.threads, fills)
        save()
    if "decode" in args.parts:
        fill = QUICK_DECODE_FILL if args.quick else DECODE_FILL
        rows["decode"] = decode_part(args.models, args.types, args.engines, args.threads, fill, args.tg, args.reps)
    print(save())


if __name__ == "__main__":
    main()
