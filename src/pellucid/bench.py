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

`--ctx-fill N` measures decode where a long conversation puts it: N tokens of a fixed text (FILL_TEXT, repeated)
are prefilled once (timed: the "fill" column), then tgN decode steps run from there, each rep rewound to N
(its KV cache trimmed back) before the next. The KV cache is stored as `--kv-type` / `-ctk` / `-ctv` say
(KV_TYPES), in pellucid and in llama.cpp alike; llama.cpp runs with flash attention where the V cache is
quantized, which needs it, and without elsewhere (llama_flash_attn says why). Only pellucid and llama.cpp take
part: transformers has no cache types.
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

# KV cache types by the names --kv-type / -ctk / -ctv take -> ggml's type id, what llama.cpp's context takes
# (llama-cpp-python's Llama(type_k=, type_v=); ggml.h's enum ggml_type, which pellucid.quant.types.GGMLType
# numbers the same way). Here, in a file that imports only the standard library, so llama.cpp's worker reads it.
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
QUANTIZED_KV_TYPES = ("q8_0", "q4_0")
# With no type given, both engines get pellucid's default cache type (quant.types.default_kv_type: f16, llama.cpp's
# default too; f32 in exact mode), so like is compared with like.

# What --ctx-fill prefills, repeated to N tokens (after BOS where the model adds one). Ordinary prose, so the
# attention the decode steps do over it looks like a real conversation's; the speed does not depend on it.
FILL_TEXT = (
    "The lighthouse keeper wrote the weather into the log twice a day, at dawn and at dusk, in the same brown "
    "ink his predecessor had used. Wind from the west, moderate; visibility good; two fishing boats returned "
    "before noon. Most days the entries were short, because most days nothing happened, and the keeper liked "
    "it that way. When a storm came in from the north the lamp had to be tended through the night, the glass "
    "wiped of salt every hour, the clockwork wound so the beam kept turning. Then the log filled a whole page: "
    "the pressure falling, the height of the waves against the rocks, the ship that passed far out with its "
    "lights low and did not answer the signal. In the morning he would climb down, make tea, and read what he "
    "had written as if someone else had kept the watch.\n\n"
)


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
    kv_cache_bytes: int | None = None  # pellucid's, with --ctx-fill: the cache's bytes as allocated

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
    ctx_fill: int | None = None  # --ctx-fill: pp is then the fill (one pass of ctx_fill tokens), tg decodes after it
    kv_types: tuple[str, str] = ("f16", "f16")  # (K, V) cache types, every engine's

    @property
    def kv_label(self) -> str:
        k, v = self.kv_types
        return k if k == v else f"K {k} / V {v}"

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
        "constrained", "ctx_fill", "kv_type": {"k", "v"}} ("constrained": None without --constrained; with
        --ctx-fill, "pp" is the fill's one pass and "tg" the decode after it)."""
        out = {"model": self.model, "path": self.path, "threads": self.threads, "reps": self.reps}
        out["arithmetic"] = self.ours.arithmetic
        out["bandwidth_gb_s"] = _round(self.bandwidth_gb_s, 1)
        out["bytes_per_token"] = self.ours.bytes_per_token
        out.update(_numbers(self.ours, self.pp, self.tg))
        out["tg"]["gb_s"] = _round(self.gb_s(self.ours), 2)
        out["constrained"] = self.constrained()
        out["ctx_fill"] = self.ctx_fill
        out["kv_type"] = {"k": self.kv_types[0], "v": self.kv_types[1]}
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
    ctx_fill: int | None = None,
    kv_types: tuple[str, str] | None = None,
) -> BenchReport:
    """Measure pellucid and each peer in `compare` on the GGUF file or HF folder at `path`; peers that are not
    installed, or cannot read the format, are skipped. `quantize` is pellucid's --quantize (peers run the file
    as it is); `constrained` adds pellucid's decode speed with and without a JSON schema. `ctx_fill` measures
    decode after that many tokens of context instead of pp/tg from an empty cache. Every engine stores its KV
    cache as `kv_types` (keys', values'; default: pellucid's default type, `quant.types.default_kv_type`)."""
    from pellucid.errors import PellucidError

    unknown = [p for p in compare if p not in PEERS]
    if unknown:
        raise PellucidError(f"unknown peer {', '.join(unknown)}; --compare takes {', '.join(PEERS)}")
    log = log or (lambda line: None)
    from pellucid.quant.types import default_kv_type

    kv = kv_types or (default_kv_type(), default_kv_type())
    if ctx_fill is not None:
        if constrained:
            raise PellucidError("--constrained and --ctx-fill measure different things; run them one at a time")
        return _run_fill(model_name, path, ctx_fill, kv, tg=tg, reps=reps, threads=threads, compare=compare,
                         log=log, quantize=quantize)  # fmt: skip
    extra = f", tg{tg} free and with a JSON schema" if constrained else ""
    log(f"pellucid: pp{pp} tg{tg}{extra} x{reps} on {threads} threads ...")
    ours = _spawn(
        sys.executable, "pellucid", path, pp, tg, reps, threads, quantize=quantize, constrained=constrained,
        kv_types=kv,
    )  # fmt: skip
    if ours.skipped:
        raise PellucidError(f"the pellucid benchmark failed: {ours.skipped}")
    peers = []
    for name in compare:
        python, why_not = _peer_for(name, path)
        if python is None:
            log(f"{name}: skipped ({why_not})")
            peers.append(Measurement(name, skipped=why_not))
            continue
        log(f"{name}: pp{pp} tg{tg} x{reps} on {threads} threads ...")
        peers.append(_spawn(python, name, path, pp, tg, reps, threads, kv_types=kv))
    log(f"memory bandwidth: a plain read on {threads} threads ...")
    bandwidth = _spawn(sys.executable, "bandwidth", path, pp, tg, reps, threads)
    return BenchReport(model_name, str(path), pp, tg, reps, threads, ours, peers, bandwidth.load_s, kv_types=kv)


def _run_fill(
    model_name: str, path, ctx_fill: int, kv: tuple[str, str], *, tg, reps, threads, compare, log, quantize
) -> BenchReport:
    """run_bench's --ctx-fill: pellucid and llama.cpp decode after `ctx_fill` tokens, the cache stored as `kv`."""
    from pellucid.errors import PellucidError

    check_ctx_fill(path, ctx_fill, tg)
    pellucid_kv_args(*kv)  # before any process starts: a clear error if this pellucid lacks the types
    fill = fill_env(ctx_fill, kv)
    what = f"fill {ctx_fill:,}, tg{tg} x{reps}, KV cache {kv[0]}/{kv[1]}, on {threads} threads"
    log(f"pellucid: {what} ...")
    ours = _spawn(sys.executable, "pellucid", path, ctx_fill, tg, reps, threads, quantize=quantize, env=fill)
    if ours.skipped:
        raise PellucidError(f"the pellucid benchmark failed: {ours.skipped}")
    peers = []
    for name in compare:
        python, why_not = _peer_for(name, path, ctx_fill=True)
        if python is None:
            log(f"{name}: skipped ({why_not})")
            peers.append(Measurement(name, skipped=why_not))
            continue
        log(f"{name}: {what} ...")
        peers.append(_spawn(python, name, path, ctx_fill, tg, reps, threads, env=fill))
    log(f"memory bandwidth: a plain read on {threads} threads ...")
    bandwidth = _spawn(sys.executable, "bandwidth", path, ctx_fill, tg, reps, threads)
    return BenchReport(model_name, str(path), ctx_fill, tg, reps, threads, ours, peers, bandwidth.load_s,
                       ctx_fill=ctx_fill, kv_types=kv)  # fmt: skip


def _peer_for(name: str, path, ctx_fill: bool = False) -> tuple[str | None, str]:
    """peer_python, and why a peer cannot take part in this run."""
    if name == "llama.cpp" and Path(path).is_dir():
        return None, "llama.cpp reads GGUF files; convert the folder with its convert_hf_to_gguf.py"
    if name == "transformers" and ctx_fill:
        return None, "--ctx-fill compares pellucid with llama.cpp only (transformers has no KV cache types)"
    return peer_python(name, path)


def llama_flash_attn(kv_type_v: str) -> bool:
    """Whether llama.cpp runs with flash attention for this V cache: only where it must, a quantized V cache,
    which only its flash-attention kernels read. With it on, llama.cpp casts an f32 cache to f16 before
    attention (src/llama-graph.cpp, build_attn_mha), so an f32 row would compute as an f16 one."""
    return kv_type_v in QUANTIZED_KV_TYPES


def check_ctx_fill(path, ctx_fill: int, tg: int) -> None:
    """A clear error when `ctx_fill` tokens plus `tg` decode steps do not fit in the model's context."""
    from pellucid.errors import ContextLengthError
    from pellucid.inspect import footprint
    from pellucid.store import resolve_path

    limit = footprint(resolve_path(Path(path))).config.context_length
    if ctx_fill + tg > limit:
        fix = f"use --ctx-fill {limit - tg:,} or less" if limit > tg else f"use a smaller --tg than {tg:,}"
        raise ContextLengthError(
            f"--ctx-fill {ctx_fill:,} plus --tg {tg:,} decode steps need {ctx_fill + tg:,} positions, more than "
            f"the model's context length of {limit:,}; {fix}"
        )


def pellucid_kv_args(kv_type_k: str, kv_type_v: str) -> dict:
    """pellucid.load's keyword arguments for these cache types; a clear error for a name we do not know."""
    from pellucid.errors import PellucidError

    for name in (kv_type_k, kv_type_v):
        if name not in KV_TYPES:
            raise PellucidError(f"unknown KV cache type {name!r}; choose one of {', '.join(KV_TYPES)}")
    return {"kv_type_k": kv_type_k, "kv_type_v": kv_type_v}


def fill_env(ctx_fill: int, kv: tuple[str, str]) -> dict[str, str]:
    """What tells a worker to measure at a filled context (read by _worker_main)."""
    return {"BENCH_CTX_FILL": str(ctx_fill), "BENCH_KV_TYPE_K": kv[0], "BENCH_KV_TYPE_V": kv[1]}


def measure_fill(
    engine: str, path, ctx_fill: int, tg: int, reps: int, threads: int, kv: tuple[str, str]
) -> Measurement:
    """One engine ("pellucid" or "llama.cpp") at a filled context in its own process, as `bench --ctx-fill`
    runs it (for scripts that want one side only, such as benchmarks/kv_types_bench.py)."""
    python = sys.executable
    if engine != "pellucid":
        python, why_not = _peer_for(engine, path, ctx_fill=True)
        if python is None:
            return Measurement(engine, skipped=why_not)
    return _spawn(python, engine, path, ctx_fill, tg, reps, threads, env=fill_env(ctx_fill, kv))


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
    constrained: bool = False, kv_types: tuple[str, str] | None = None, env: dict[str, str] | None = None,
) -> Measurement:  # fmt: skip
    """Run one engine's worker in a fresh process; its last stdout line is the JSON of its Measurement."""
    # Run by path through runpy rather than `python bench.py`, which would put src/pellucid/ first on sys.path,
    # where our inspect.py would shadow the standard library's.
    runner = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    script = str(Path(__file__).resolve())
    cmd = [python, "-c", runner, script, "--worker", engine, str(path), str(pp), str(tg), str(reps)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), BENCH_THREADS=str(threads), BENCH_QUANTIZE=quantize or "",
               BENCH_CONSTRAINED="1" if constrained else "", BENCH_CTX_FILL="",
               BENCH_KV_TYPES=",".join(kv_types or ())) | (env or {})  # fmt: skip
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


def fill_ids(paragraph: list[int], bos: list[int], n: int) -> list[int]:
    """`n` token ids: `bos` (empty or the model's BOS), then `paragraph` (FILL_TEXT's ids) repeated."""
    ids = list(bos)
    while len(ids) < n:
        ids += paragraph
    return ids[:n]


def _decode_reps(decode, rewind, n_tokens: int, reps: int) -> tuple[float, list[float]]:
    """_timed_reps for decoding after a fill: `rewind()` (untimed) trims the cache back to the fill after
    each run. (seconds of the warm-up run, tokens per second of each rep)."""
    first, speeds = 0.0, []
    for rep in range(reps + 1):
        started = time.perf_counter()
        decode()
        seconds = time.perf_counter() - started
        rewind()
        if rep:
            speeds.append(n_tokens / seconds)
        else:
            first = seconds
    return first, speeds


def _worker_pellucid_fill(path: str, fill: int, tg: int, reps: int, threads: int) -> dict:
    """Decode tg tokens after `fill` tokens of FILL_TEXT, the cache as pellucid.load builds it for the types
    in BENCH_KV_TYPE_K / _V; the fill itself is prefilled once in PREFILL_CHUNK passes, as generation does."""
    import torch

    import pellucid
    from pellucid.engine.generate import PREFILL_CHUNK

    torch.set_num_threads(threads)
    kv_args = pellucid_kv_args(os.environ["BENCH_KV_TYPE_K"], os.environ["BENCH_KV_TYPE_V"])
    started = time.perf_counter()
    llm = pellucid.load(path, device="cpu", ctx=fill + tg, quantize=os.environ.get("BENCH_QUANTIZE") or None,
                        **kv_args)  # fmt: skip
    load_s = time.perf_counter() - started
    tok, model = llm.tokenizer, llm.model
    cache = llm.session.cache
    ids = fill_ids(tok.encode(FILL_TEXT, add_special=False), [tok.bos_id] if tok.add_bos else [], fill)
    steps = [torch.tensor([[t]]) for t in _prompt(model.config.vocab_size, tg, seed=1)]

    def decode():
        for token in steps:
            model(token, cache)

    def prefill(n: int) -> float:
        started = time.perf_counter()
        for start in range(0, n, PREFILL_CHUNK):
            model.hidden(torch.tensor([ids[start : min(start + PREFILL_CHUNK, n)]]), cache)
        return time.perf_counter() - started

    with torch.inference_mode():
        first_pp = prefill(min(fill, PREFILL_CHUNK))  # the warm-up: compiles the prefill's kernels
        cache.reset()
        fill_s = prefill(fill)
        first_tg, tg_speeds = _decode_reps(decode, lambda: cache.trim(tg), tg, reps)
    from pellucid.quant.kernels import fast_mode

    result = _result(load_s, [fill / fill_s], tg_speeds, first_pp, first_tg)
    kv_read = cache.n_bytes * (fill + tg / 2) / cache.capacity  # the cache read at tg's middle position
    return result | {
        "arithmetic": "rounded" if fast_mode() else "float32",
        "bytes_per_token": decode_bytes(model) + kv_read,
        "kv_cache_bytes": cache.n_bytes,
    }


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
    kv_k, kv_v = (os.environ.get("BENCH_KV_TYPES") or "f16,f16").split(",")  # llama.cpp's default cache: f16
    llm = Llama(
        model_path=path, n_ctx=max(pp, tg) + 16, n_batch=pp, n_ubatch=pp, n_threads=threads,
        n_threads_batch=threads, type_k=KV_TYPES[kv_k], type_v=KV_TYPES[kv_v], flash_attn=llama_flash_attn(kv_v),
        verbose=False,
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


def _worker_llama_cpp_fill(path: str, fill: int, tg: int, reps: int, threads: int) -> dict:
    """_worker_pellucid_fill's measurement in llama.cpp: the cache types as ggml ids (llama_flash_attn)."""
    from llama_cpp import Llama

    type_k, type_v = KV_TYPES[os.environ["BENCH_KV_TYPE_K"]], KV_TYPES[os.environ["BENCH_KV_TYPE_V"]]
    started = time.perf_counter()
    llm = Llama(
        model_path=path, n_ctx=fill + tg, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
        type_k=type_k, type_v=type_v, flash_attn=llama_flash_attn(os.environ["BENCH_KV_TYPE_V"]), verbose=False,
    )  # fmt: skip
    load_s = time.perf_counter() - started
    text = FILL_TEXT.encode()
    paragraph = llm.tokenize(text, add_bos=False, special=False)
    with_bos = llm.tokenize(text, add_bos=True, special=False)  # BOS first only where the model adds one
    ids = fill_ids(paragraph, with_bos[: len(with_bos) - len(paragraph)], fill)
    steps = _prompt(llm.n_vocab(), tg, seed=1)

    def decode():
        for token in steps:
            llm.eval([token])

    def rewind():
        llm.n_tokens = fill  # the next eval removes the cache's cells past the fill (kv_cache_seq_rm)

    started = time.perf_counter()
    llm.eval(ids[:512])  # the warm-up, as pellucid's
    first_pp = time.perf_counter() - started
    llm.n_tokens = 0
    started = time.perf_counter()
    llm.eval(ids)
    fill_s = time.perf_counter() - started
    first_tg, tg_speeds = _decode_reps(decode, rewind, tg, reps)
    return _result(load_s, [fill / fill_s], tg_speeds, first_pp, first_tg)


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
FILL_WORKERS = {"pellucid": _worker_pellucid_fill, "llama.cpp": _worker_llama_cpp_fill}  # with BENCH_CTX_FILL


# -- printing -----------------------------------------------------------------------------------------------


def format_report(report: BenchReport) -> str:
    """A llama-bench-style table, one row per engine, then our speed ratio to each peer. With --ctx-fill, each
    row also says the fill and the KV cache types, "pp" is the fill's one pass and "tg" the decode after it."""
    filled = report.ctx_fill is not None
    header = ("engine", "load", f"pp{report.pp} tok/s", f"tg{report.tg} tok/s", "tg GB/s", "peak RSS",
              "first call (pp / tg)")  # fmt: skip
    if filled:
        header = ("engine", "ctx fill", "KV cache", "load", "fill tok/s", f"tg{report.tg} tok/s", "tg GB/s",
                  "peak RSS", "first call (pp / tg)")  # fmt: skip
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
        row = (m.engine, f"{m.load_s:.2f} s", f"{pp:.1f} ± {pp_spread:.1f}", f"{tg:.1f} ± {tg_spread:.1f}",
               f"{gb_s:.1f}" if gb_s else "-", f"{m.peak_rss_mb:.0f} MB", first)  # fmt: skip
        if filled:  # one fill pass: no spread to show
            row = (m.engine, f"{report.ctx_fill:,}", report.kv_label, row[1], f"{pp:.1f}", *row[3:])
        rows.append(row)
        if m is not report.ours:
            ours_pp, _ = Measurement.summary(report.ours.pp_tok_s)
            ours_tg, _ = Measurement.summary(report.ours.tg_tok_s)
            first_pass = "fill" if filled else "pp"
            notes.append(f"pellucid / {m.engine}: {first_pass} {ours_pp / pp:.2f}x, tg {ours_tg / tg:.2f}x")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"{report.model} ({report.path}), {report.threads} threads, median ± spread of {report.reps} reps"]
    if report.ours.arithmetic == "rounded":
        lines.append("pellucid's arithmetic: llama.cpp's (int8 decode kernels, bfloat16 prefill)")
    elif report.ours.arithmetic == "float32":
        lines.append("pellucid's arithmetic: float32 (--exact, or a CPU without AVX512-VNNI)")
    if filled:
        lines.append(
            f"decode after {report.ctx_fill:,} tokens of context (KV cache {report.kv_label}); llama.cpp with flash "
            f"attention {'on (a quantized V cache needs it)' if llama_flash_attn(report.kv_types[1]) else 'off'}"
        )
    if report.ours.bytes_per_token:
        where = f"the fill + tg/2 ({report.kv_label})" if filled else "tg/2"
        line = f"decode reads {report.ours.bytes_per_token / 1e6:.0f} MB per token (weights once, KV cache at {where})"
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
    worker = FILL_WORKERS[engine] if os.environ.get("BENCH_CTX_FILL") and engine in FILL_WORKERS else WORKERS[engine]
    print(json.dumps(worker(path, pp, tg, reps, threads)))
    return 0


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        sys.exit("usage: bench.py --worker ENGINE PATH PP TG REPS (use `pellucid bench` to run a benchmark)")
    sys.exit(_worker_main(sys.argv[sys.argv.index("--worker") + 1 :]))
