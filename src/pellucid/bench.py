"""`pellucid bench`: prompt-processing and generation speed, load time and peak memory, side by side with peers.

Measured the way llama-bench measures them: ppN is one forward pass over N random prompt tokens into an empty
KV cache (tokens per second of the whole pass), tgN is N single-token decode steps from an empty cache, each
producing the full logits. Each is repeated `reps` times after one untimed warm-up; we report the median and
the spread (half the range between the fastest and slowest rep). The warm-up's duration is reported too
("first call"): it contains torch.compile's work, which a user of `pellucid run` waits for once.

Every engine runs in its own fresh process with the same thread count, so imports and compile caches are paid
where they belong, and the peak RSS (getrusage's high-water mark) is that engine's alone. This file is also the
worker those processes run (`python bench.py --worker ENGINE ...`): its top level imports only the standard
library, so a peer's interpreter that has no pellucid installed (llama-cpp-python in its own venv, found through
PELLUCID_LLAMA_CPP_PYTHON) can run it by path.

Peers: "llama.cpp" (llama-cpp-python on the same GGUF) and "transformers" (the GGUF dequantized to float32 by
transformers' GGUF loader). A peer that is not installed is skipped with a line saying how to install it.

`--constrained` adds what constrained decoding costs (engine/constrain.py): tgN through the engine's own
generation loop (`Session.generate_ids`: greedy sampling, end-of-text ignored) from a short prompt, free and
with a JSON schema whose shortest answer is longer than N tokens (`LONG_SCHEMA`), so both decode exactly N
tokens; reps alternate the two. The overhead is the schema's decode tok/s below the free one's.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PEERS = ("llama.cpp", "transformers")
LLAMA_CPP_PYTHON_ENV = "PELLUCID_LLAMA_CPP_PYTHON"


@dataclass
class Measurement:
    """One engine's numbers on one model (or why there are none)."""

    engine: str
    load_s: float | None = None
    pp_tok_s: list[float] = field(default_factory=list)
    tg_tok_s: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    first_call_s: dict[str, float] = field(default_factory=dict)  # warm-up durations: {"pp": s, "tg": s}
    skipped: str | None = None  # set when the engine did not run, with what to do about it
    arithmetic: str | None = None  # pellucid's: "rounded" (llama.cpp's int8/bf16 rounding) or "float32" (--exact)
    # pellucid's: bytes a decode step reads (every matrix once, one embedding row, the KV cache at tg's middle
    # position); the same file's weights are what any engine reads, so peers' GB/s use it too
    bytes_per_token: float | None = None
    # pellucid's, with --constrained: decode tok/s of the generation loop, free and with LONG_SCHEMA's mask
    free_tok_s: list[float] = field(default_factory=list)
    schema_tok_s: list[float] = field(default_factory=list)

    @staticmethod
    def summary(values: list[float]) -> tuple[float, float]:
        """(median, spread): spread is half the range of the reps."""
        return statistics.median(values), (max(values) - min(values)) / 2


@dataclass
class BenchReport:
    model: str
    path: str
    pp: int
    tg: int
    reps: int
    threads: int
    ours: Measurement
    peers: list[Measurement]
    bandwidth_gb_s: float | None = None  # this machine's streaming read, measured beside the engines

    def constrained(self) -> dict | None:
        """With --constrained: {"n", "free_tok_s", "schema_tok_s", "overhead_pct", "reps": {...}}, else None."""
        m = self.ours
        if not m.free_tok_s or not m.schema_tok_s:
            return None
        free, schema = Measurement.summary(m.free_tok_s)[0], Measurement.summary(m.schema_tok_s)[0]
        return {
            "n": self.tg,
            "free_tok_s": round(free, 2),
            "schema_tok_s": round(schema, 2),
            "overhead_pct": round(100 * (free - schema) / free, 1),
            "reps": {"free": [round(v, 2) for v in m.free_tok_s], "schema": [round(v, 2) for v in m.schema_tok_s]},
        }

    def gb_s(self, m: Measurement) -> float | None:
        """The weights an engine streams per second in decode: bytes per token x tg tokens per second."""
        if not self.ours.bytes_per_token or not m.tg_tok_s:
            return None
        return self.ours.bytes_per_token * Measurement.summary(m.tg_tok_s)[0] / 1e9

    def as_dict(self) -> dict:
        """The `--json` object: {"model", "load_s", "pp": {"n", "tok_s"}, "tg": {...}, "peak_rss_mb", "peers",
        "constrained"} ("constrained": None without --constrained)."""
        out = {"model": self.model, "path": self.path, "threads": self.threads, "reps": self.reps}
        out["arithmetic"] = self.ours.arithmetic
        out["bandwidth_gb_s"] = _round(self.bandwidth_gb_s, 1)
        out["bytes_per_token"] = self.ours.bytes_per_token
        out.update(_numbers(self.ours, self.pp, self.tg))
        out["tg"]["gb_s"] = _round(self.gb_s(self.ours), 2)
        out["constrained"] = self.constrained()
        out["peers"] = {}
        for peer in self.peers:
            if peer.skipped:
                out["peers"][peer.engine] = {"skipped": peer.skipped}
                continue
            numbers = _numbers(peer, self.pp, self.tg)
            numbers["tg"]["gb_s"] = _round(self.gb_s(peer), 2)
            numbers["ratio"] = {key: _ratio(out[key]["tok_s"], numbers[key]["tok_s"]) for key in ("pp", "tg")}
            out["peers"][peer.engine] = numbers
        return out


def _numbers(m: Measurement, pp: int, tg: int) -> dict:
    out = {"load_s": _round(m.load_s, 3), "peak_rss_mb": _round(m.peak_rss_mb, 1)}
    for key, n, values in (("pp", pp, m.pp_tok_s), ("tg", tg, m.tg_tok_s)):
        median, spread = Measurement.summary(values)
        out[key] = {
            "n": n,
            "tok_s": round(median, 2),
            "spread": round(spread, 2),
            "reps": [round(v, 2) for v in values],
        }
    out["first_call_s"] = {k: round(v, 2) for k, v in m.first_call_s.items()}
    return out


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- running the engines, each in its own process -----------------------------------------------------------


def run_bench(
    model_name: str,
    path: str | Path,
    *,
    pp: int,
    tg: int,
    reps: int,
    threads: int,
    compare: list[str],
    log=None,
    quantize: str | None = None,
    constrained: bool = False,
    kv_types: tuple[str, str] | None = None,
) -> BenchReport:
    """Measure pellucid and each peer in `compare` on the GGUF file or HF folder at `path`; peers that are not
    installed, or cannot read the format, are skipped. `quantize` is pellucid's --quantize (peers run the file
    as it is); `constrained` adds pellucid's decode speed with and without a JSON schema."""
    from pellucid.errors import PellucidError

    unknown = [p for p in compare if p not in PEERS]
    if unknown:
        raise PellucidError(f"unknown peer {', '.join(unknown)}; --compare takes {', '.join(PEERS)}")
    log = log or (lambda line: None)
    extra = f", tg{tg} free and with a JSON schema" if constrained else ""
    log(f"pellucid: pp{pp} tg{tg}{extra} x{reps} on {threads} threads ...")
    ours = _spawn(
        sys.executable, "pellucid", path, pp, tg, reps, threads, quantize=quantize, constrained=constrained,
        kv_types=kv_types,
    )  # fmt: skip
    if ours.skipped:
        raise PellucidError(f"the pellucid benchmark failed: {ours.skipped}")
    peers = []
    for name in compare:
        python, why_not = peer_python(name, path)
        if name == "llama.cpp" and Path(path).is_dir():
            python, why_not = None, "llama.cpp reads GGUF files; convert the folder with its convert_hf_to_gguf.py"
        if python is None:
            log(f"{name}: skipped ({why_not})")
            peers.append(Measurement(name, skipped=why_not))
            continue
        log(f"{name}: pp{pp} tg{tg} x{reps} on {threads} threads ...")
        peers.append(_spawn(python, name, path, pp, tg, reps, threads))
    log(f"memory bandwidth: a plain read on {threads} threads ...")
    bandwidth = _spawn(sys.executable, "bandwidth", path, pp, tg, reps, threads)
    return BenchReport(model_name, str(path), pp, tg, reps, threads, ours, peers, bandwidth.load_s)


def peer_python(name: str, path: str | Path | None = None) -> tuple[str | None, str]:
    """The interpreter that can run peer `name` (on the model at `path`), or (None, how to install it)."""
    import importlib.util

    if name == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is not None:
            return sys.executable, ""
        other = os.environ.get(LLAMA_CPP_PYTHON_ENV)
        if other:
            if Path(other).exists():
                return other, ""
            return None, f"{LLAMA_CPP_PYTHON_ENV}={other} does not exist"
        return None, (
            "llama-cpp-python is not installed: `pip install llama-cpp-python` (it compiles llama.cpp, ~10 "
            f"minutes), or set {LLAMA_CPP_PYTHON_ENV}=/path/to/python of an environment that has it"
        )
    # transformers reads an HF folder as it is; a GGUF file it dequantizes with gguf-py, which needs accelerate
    needed = ("transformers",) if path is not None and Path(path).is_dir() else ("transformers", "gguf", "accelerate")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"{' and '.join(missing)} not installed: `pip install {' '.join(needed)}`"
    return sys.executable, ""


def _spawn(
    python: str, engine: str, path, pp: int, tg: int, reps: int, threads: int, quantize: str | None = None,
    constrained: bool = False, kv_types: tuple[str, str] | None = None,
) -> Measurement:  # fmt: skip
    """Run one engine's worker in a fresh process; its last stdout line is the JSON of its Measurement."""
    # Run by path through runpy rather than `python bench.py`, which would put src/pellucid/ first on sys.path,
    # where our inspect.py would shadow the standard library's.
    runner = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    script = str(Path(__file__).resolve())
    cmd = [python, "-c", runner, script, "--worker", engine, str(path), str(pp), str(tg), str(reps)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), BENCH_THREADS=str(threads), BENCH_QUANTIZE=quantize or "",
               BENCH_CONSTRAINED="1" if constrained else "", BENCH_KV_TYPES=",".join(kv_types or ()))  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Measurement(engine, skipped=f"failed (exit {proc.returncode}): {tail}")
    data = json.loads(lines[-1])
    return Measurement(engine, **data)


# -- the workers (run inside the engine's process) ------------------------------------------------------------


def _prompt(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """Random token ids away from the special tokens at either end of most vocabularies (100 ids at each end,
    or a quarter of a small vocabulary's)."""
    rng = random.Random(seed)
    margin = min(100, vocab_size // 4)
    return [rng.randrange(margin, vocab_size - margin) for _ in range(n)]


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def _timed_reps(run, n_tokens: int, reps: int) -> tuple[float, list[float]]:
    """(seconds of the warm-up call, tokens per second of each rep)."""
    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    speeds = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        speeds.append(n_tokens / (time.perf_counter() - started))
    return first, speeds


def _worker_pellucid(path: str, pp: int, tg: int, reps: int, threads: int) -> dict:
    import torch

    from pellucid.model.loader import load_model

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = load_model(path, device="cpu", quantize=os.environ.get("BENCH_QUANTIZE") or None)
    if os.environ.get("BENCH_KV_TYPES"):  # bench's --kv-type / -ctk / -ctv, as pellucid.load(kv_type=...) sets them
        model.kv_type_k, model.kv_type_v = os.environ["BENCH_KV_TYPES"].split(",")
    load_s = time.perf_counter() - started
    cache = model.make_cache(capacity=max(pp, tg) + 1)
    prompt = torch.tensor([_prompt(model.config.vocab_size, pp)])
    steps = [torch.tensor([[t]]) for t in _prompt(model.config.vocab_size, tg, seed=1)]

    def prefill():
        cache.reset()
        model.logits(model.hidden(prompt, cache)[:, -1:])

    def generate():
        cache.reset()
        for token in steps:
            model(token, cache)

    with torch.inference_mode():
        first_pp, pp_speeds = _timed_reps(prefill, pp, reps)
        first_tg, tg_speeds = _timed_reps(generate, tg, reps)
    from pellucid.quant.kernels import fast_mode

    result = _result(load_s, pp_speeds, tg_speeds, first_pp, first_tg)  # peak RSS: before --constrained
    kv_middle = cache.n_bytes * (tg / 2) / cache.capacity  # the cache read at tg's middle position
    result |= {
        "arithmetic": "rounded" if fast_mode() else "float32",
        "bytes_per_token": decode_bytes(model) + kv_middle,
    }
    if os.environ.get("BENCH_CONSTRAINED"):
        result |= constrained_decode(model, path, tg, reps)
    return result


# A JSON object holding `minItems` rows of at least 4 tokens each (`{`, "id", a digit, "true"/"false", `}`...):
# minItems = tg // 4 + 1 means the grammar cannot end within tg tokens, so end-of-text is never allowed and
# the run decodes exactly tg tokens, as the free one does. Objects, integers with bounds and booleans: the
# usual things a schema holds, and none of them lets the model run off into free text.
LONG_SCHEMA = {
    "type": "object",
    "properties": {
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "ok": {"type": "boolean"}},
                "required": ["id", "ok"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["rows"],
    "additionalProperties": False,
}
CONSTRAINED_PROMPT = "Here is the table as JSON, one row per item:"


def long_schema(n_tokens: int) -> dict:
    """LONG_SCHEMA with enough rows that no valid answer is shorter than `n_tokens` tokens."""
    schema = json.loads(json.dumps(LONG_SCHEMA))
    schema["properties"]["rows"]["minItems"] = n_tokens // 4 + 1
    return schema


def constrained_decode(model, path: str, tg: int, reps: int) -> dict:
    """{"free_tok_s", "schema_tok_s"}: decode tok/s of `tg` greedy tokens through the engine's generation loop,
    without and with long_schema(tg)'s mask, each rep running both (after an untimed warm-up of each)."""
    import torch

    from pellucid.engine.constrain import Constraint, Grammar
    from pellucid.engine.generate import Session
    from pellucid.engine.results import GenerationStats
    from pellucid.engine.sampling import SamplingParams, make_sampler
    from pellucid.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    prompt = tokenizer.encode(CONSTRAINED_PROMPT)
    session = Session(model, len(prompt) + tg + 1)
    grammar = Grammar.json_schema(long_schema(tg)).compile()

    def decode(constraint) -> float:
        session.reset()
        stats = GenerationStats()
        sampler = make_sampler(SamplingParams(temperature=0))
        for _ in session.generate_ids(prompt, sampler, max_tokens=tg, stats=stats, constraint=constraint):
            pass
        if stats.generated_tokens != tg or (constraint is not None and constraint.failed):
            raise RuntimeError(f"the constrained bench decoded {stats.generated_tokens} of {tg} tokens")
        return stats.decode_tok_s

    free, schema = [], []
    with torch.inference_mode():
        for rep in range(reps + 1):  # rep 0 warms both up (and builds the tokenizer's index for the mask)
            speeds = decode(None), decode(Constraint(grammar, tokenizer))
            if rep:
                free.append(speeds[0])
                schema.append(speeds[1])
    return {"free_tok_s": free, "schema_tok_s": schema}


def decode_bytes(model) -> int:
    """Bytes of weights one decode step reads: every matrix once (packed or dense), one row of the embedding
    table (a tied output head is the whole table, counted as the head), and the norms; of a mixture-of-experts
    layer's routed experts, k of E (the active parameters: an expert's share of the average token)."""
    from pellucid.model.layers import MoE
    from pellucid.quant.linear import QuantizedEmbedding

    routed = {id(m) for moe in model.modules() if isinstance(moe, MoE) for m in moe.experts.modules()}
    total = _module_bytes(m for m in model.modules() if id(m) not in routed)
    for moe in model.modules():
        if isinstance(moe, MoE):
            total += _module_bytes(moe.experts.modules()) * moe.n_used // len(moe.experts)
    embedding = model.embedding
    if isinstance(embedding, QuantizedEmbedding):
        total += embedding.packed.n_bytes // embedding.packed.shape[0]
    elif hasattr(embedding, "weight"):
        total -= embedding.weight.numel() * embedding.weight.element_size()  # counted above, read one row
        total += embedding.weight.shape[1] * embedding.weight.element_size()
    return total


def _module_bytes(modules) -> int:
    """Bytes of the weights these modules hold, each tensor once (a packed matrix by its QuantizedLinear), the
    embedding left out (a token reads one row of it: decode_bytes adds that)."""
    from pellucid.quant.linear import QuantizedEmbedding, QuantizedLinear
    from pellucid.quant.packed import PackedWeight

    total, seen = 0, set()
    for module in modules:
        if isinstance(module, (QuantizedEmbedding, PackedWeight)):
            continue
        tensors = [module.packed] if isinstance(module, QuantizedLinear) else []
        tensors += [p for p in module.parameters(recurse=False)]
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.n_bytes if hasattr(t, "n_bytes") else t.numel() * t.element_size()
    return total


def _worker_bandwidth(path: str, pp: int, tg: int, reps: int, threads: int) -> dict:
    """The machine's streaming read speed on `threads` threads: the best of 10 sums of a 1 GiB buffer (far past
    the caches), reported as load_s in GB/s. What "decode at memory bandwidth" is measured against."""
    import torch

    torch.set_num_threads(threads)
    buffer = torch.ones(1 << 28)  # 1 GiB of float32, touched (resident) before timing
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return {"load_s": buffer.numel() * 4 / best / 1e9}


def _worker_llama_cpp(path: str, pp: int, tg: int, reps: int, threads: int) -> dict:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(
        model_path=path, n_ctx=max(pp, tg) + 16, n_batch=pp, n_ubatch=pp, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )  # fmt: skip
    load_s = time.perf_counter() - started
    prompt = _prompt(llm.n_vocab(), pp)
    steps = _prompt(llm.n_vocab(), tg, seed=1)

    def prefill():
        llm.reset()
        llm.eval(prompt)

    def generate():
        llm.reset()
        for token in steps:
            llm.eval([token])

    first_pp, pp_speeds = _timed_reps(prefill, pp, reps)
    first_tg, tg_speeds = _timed_reps(generate, tg, reps)
    return _result(load_s, pp_speeds, tg_speeds, first_pp, first_tg)


def _worker_transformers(path: str, pp: int, tg: int, reps: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    started = time.perf_counter()
    if Path(path).is_dir():  # an HF folder: transformers' own format
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    model.eval()
    load_s = time.perf_counter() - started
    prompt = torch.tensor([_prompt(model.config.vocab_size, pp)])
    steps = [torch.tensor([[t]]) for t in _prompt(model.config.vocab_size, tg, seed=1)]

    def prefill():
        model(prompt, use_cache=True, logits_to_keep=1)

    def generate():
        past = None
        for token in steps:
            past = model(token, past_key_values=past, use_cache=True).past_key_values

    with torch.inference_mode():
        first_pp, pp_speeds = _timed_reps(prefill, pp, reps)
        first_tg, tg_speeds = _timed_reps(generate, tg, reps)
    return _result(load_s, pp_speeds, tg_speeds, first_pp, first_tg)


def _result(load_s, pp_speeds, tg_speeds, first_pp, first_tg) -> dict:
    return {
        "load_s": load_s,
        "pp_tok_s": pp_speeds,
        "tg_tok_s": tg_speeds,
        "peak_rss_mb": _peak_rss_mb(),
        "first_call_s": {"pp": first_pp, "tg": first_tg},
    }


WORKERS = {
    "pellucid": _worker_pellucid,
    "llama.cpp": _worker_llama_cpp,
    "transformers": _worker_transformers,
    "bandwidth": _worker_bandwidth,
}


# -- printing -----------------------------------------------------------------------------------------------


def format_report(report: BenchReport) -> str:
    """A llama-bench-style table, one row per engine, then our speed ratio to each peer."""
    header = ("engine", "load", f"pp{report.pp} tok/s", f"tg{report.tg} tok/s", "tg GB/s", "peak RSS",
              "first call (pp / tg)")  # fmt: skip
    rows = [header]
    notes = []
    for m in [report.ours, *report.peers]:
        if m.skipped:
            notes.append(f"{m.engine}: skipped: {m.skipped}")
            continue
        pp, pp_spread = Measurement.summary(m.pp_tok_s)
        tg, tg_spread = Measurement.summary(m.tg_tok_s)
        first = f"{m.first_call_s.get('pp', 0):.2f} s / {m.first_call_s.get('tg', 0):.2f} s"
        gb_s = report.gb_s(m)
        rows.append(
            (m.engine, f"{m.load_s:.2f} s", f"{pp:.1f} ± {pp_spread:.1f}", f"{tg:.1f} ± {tg_spread:.1f}",
             f"{gb_s:.1f}" if gb_s else "-", f"{m.peak_rss_mb:.0f} MB", first)
        )  # fmt: skip
        if m is not report.ours:
            ours_pp, _ = Measurement.summary(report.ours.pp_tok_s)
            ours_tg, _ = Measurement.summary(report.ours.tg_tok_s)
            notes.append(f"pellucid / {m.engine}: pp {ours_pp / pp:.2f}x, tg {ours_tg / tg:.2f}x")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"{report.model} ({report.path}), {report.threads} threads, median ± spread of {report.reps} reps"]
    if report.ours.arithmetic == "rounded":
        lines.append("pellucid's arithmetic: llama.cpp's (int8 decode kernels, bfloat16 prefill)")
    elif report.ours.arithmetic == "float32":
        lines.append("pellucid's arithmetic: float32 (--exact, or a CPU without AVX512-VNNI)")
    if report.ours.bytes_per_token:
        line = f"decode reads {report.ours.bytes_per_token / 1e6:.0f} MB per token (weights once, KV cache at tg/2)"
        if report.bandwidth_gb_s:
            line += (
                f"; this machine streams {report.bandwidth_gb_s:.1f} GB/s (a plain read on {report.threads} threads)"
            )
            ours = report.gb_s(report.ours)
            if ours:
                line += f": pellucid decodes at {100 * ours / report.bandwidth_gb_s:.0f}% of it"
        lines.append(line)
    lines.append("")
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    constrained = report.constrained()
    if constrained:
        free_spread = Measurement.summary(report.ours.free_tok_s)[1]
        schema_spread = Measurement.summary(report.ours.schema_tok_s)[1]
        notes.append(
            f"constrained decode (tg{report.tg}, greedy, a JSON schema): {constrained['schema_tok_s']:.1f} ± "
            f"{schema_spread:.1f} tok/s (schema) vs {constrained['free_tok_s']:.1f} ± {free_spread:.1f} tok/s "
            f"(free), overhead {constrained['overhead_pct']:.1f}%"
        )
    return "\n".join(lines + ([""] + notes if notes else []))


def _worker_main(argv: list[str]) -> int:
    engine, path, pp, tg, reps = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    threads = int(os.environ.get("BENCH_THREADS", "0")) or (os.cpu_count() or 1)
    print(json.dumps(WORKERS[engine](path, pp, tg, reps, threads)))
    return 0


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        sys.exit("usage: bench.py --worker ENGINE PATH PP TG REPS (use `pellucid bench` to run a benchmark)")
    sys.exit(_worker_main(sys.argv[sys.argv.index("--worker") + 1 :]))
