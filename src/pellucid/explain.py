"""`pellucid explain`: one real run, shown stage by stage, every number measured in that run.

    report = explain(llm, "Why is the sky blue?", max_tokens=16)   # a dict (the --json schema below)
    print(format_report(report))

What it measures, and how:
- **Text -> tokens**: the prompt as the chat template renders it, split into what the messages said and what
  the template added; every token (id, piece); how many tokens the template cost.
- **Loading**: the load time, the first forward pass's one-time costs (run before the measured run, so those
  costs do not land on its first layer), and the weights by storage type: how many bytes are views of the
  memory-mapped file and how many were converted into process memory (pellucid.resident).
- **Memory**: the process's resident memory (RSS, from /proc) and the run's peak, split into runtime / weights /
  KV cache / activations (`_memory` says how), beside `pellucid fit`'s prediction of each for a context the size
  of this run's cache (pellucid.memory.estimate).
- **Prefill and decode, per layer and per part**: the run goes through `Transformer.hidden(observe=...)`, so
  every block runs eagerly and is timed between observations; forward hooks time each block's parts
  (attention, feed-forward, norms) and the output head; sampling is timed around the sampler. "other" is the
  wall time none of them covers (Python between the parts, the embedding, the KV cache bookkeeping), so the
  parts add up to the wall time by construction; timing costs a little (the hooks), which is why `bench`,
  not `explain`, is the speed reference.
- **Prefill against the machine**: multiply-adds counted from the shapes (`multiply_adds`), 2 flops each, over
  the prefill time: GFLOP/s as a fraction of this machine's matrix-multiply throughput.
- **Decode against the machine**: the bytes of weights a decode step reads (bench.decode_bytes) plus the KV
  cache it reads, times decode tok/s, is the achieved GB/s, shown as a fraction of this machine's streaming
  read (pellucid.machine: measured once by `pellucid bench --machine` and cached; measured here if not).
- **Each generated token**: its probability and the top 5 alternatives (softmax of the raw logits, what
  OpenAI's logprobs report), the entropy of that distribution in bits, and what each sampler step left: the
  candidates after top-k, typical-p, top-p and min-p (sampling.py's functions on the same logits).
- **Logit lens**: for each layer, the token the model would pick if it stopped there (the final norm and the
  output head applied to that layer's residual stream), at the prompt's last position and at each generated
  token; the last layer's row is the real prediction.
- **KV cache**: bytes per token, bytes held at the end, the sliding window where one stops the growth.

JSON schema (`--json`): {"model", "prompt_text", "template_segments": [{"text", "added"}], "template_tokens",
"prompt_tokens": [{"id", "piece"}], "generated": [{"id", "piece", "prob", "top": [{"id", "piece", "prob"}],
"entropy", "sampler": {"candidates", "after_top_k", "after_typical_p", "after_top_p", "after_min_p"}}],
"text", "layers": [{"index", "prefill_s", "decode_s"}], "parts": {"prefill": {part: s}, "decode": {part: s}},
"prefill": {"tokens", "s", "tok_s", "flops", "gflops", "flops_per_byte", "fraction_of_matmul"},
"decode": {"tokens", "s", "tok_s", "bytes_per_token", "gbs", "flops_per_token", "gflops", "flops_per_byte",
"fraction_of_bandwidth"}, "loading": {"s", "first_call_s", "files", "file_bytes", "mapped_bytes",
"converted_bytes", "repacked_bytes", "file_pages_resident_bytes", "by_type": [{"type", "tensors", "bytes",
"mapped_bytes", "converted_bytes"}]},
"memory": {"measured_rss_mb", "peak_rss_mb", "predicted_mb", "predicted_ctx", "stack": {"measured": {"runtime",
"weights", "kv_cache", "activations"} (MB), "predicted": {the same}}}, "machine": {"bandwidth_gbs",
"matmul_gflops", "matmul_precision", "cpu", "threads"}, "kv_cache": {"type", "bytes_per_token", "bytes_used", "capacity_tokens", "window"},
"logit_lens": [{"layer", "tokens": [{"id", "piece"}]}], "wall_s"}. Sizes in bytes unless named _mb (MiB).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import torch

from pellucid import resident
from pellucid.engine.sampling import Candidates, SamplingParams, make_sampler, min_p, top_k, top_p, typical_p

MiB = 2**20
PARTS = ("attention", "feed_forward", "norms", "output_head", "sampling", "other")
TOP_N = 5


def template_segments(rendered: str, messages: list[dict]) -> list[dict]:
    """The rendered prompt cut into what the messages said ("added": False) and what the template added."""
    segments, at = [], 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or not content:
            continue
        found = rendered.find(content, at)
        if found < 0:
            continue
        if found > at:
            segments.append({"text": rendered[at:found], "added": True})
        segments.append({"text": content, "added": False})
        at = found + len(content)
    if at < len(rendered):
        segments.append({"text": rendered[at:], "added": True})
    return segments


class _PartTimer:
    """Forward hooks that add each timed module's duration to the current phase's part."""

    def __init__(self, model):
        self.phase = "prefill"
        self.seconds = {"prefill": defaultdict(float), "decode": defaultdict(float)}
        self._handles = []
        self._started: dict[int, float] = {}
        for block in model.blocks:
            self._watch(block.attn, "attention")
            self._watch(block.mlp, "feed_forward")
            for norm in (block.attn_norm, block.ffn_norm, block.post_attn_norm, block.post_ffn_norm):
                if isinstance(norm, torch.nn.Module):
                    self._watch(norm, "norms")
        self._watch(model.final_norm, "norms")
        self._watch(model.output, "output_head")

    def _watch(self, module, part: str) -> None:
        def before(mod, args):
            self._started[id(mod)] = time.perf_counter()

        def after(mod, args, out):
            self.seconds[self.phase][part] += time.perf_counter() - self._started.pop(id(mod))

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def _token_view(tokenizer, logits: torch.Tensor, token: int) -> dict:
    """The chosen token's probability, the top alternatives and the distribution's entropy (bits)."""
    log_probs = torch.log_softmax(logits.float(), dim=0)
    probs = log_probs.exp()
    entropy = float(-(probs * torch.nan_to_num(log_probs, neginf=0.0)).sum()) / math.log(2)
    values, ids = torch.topk(probs, TOP_N)
    top = [{"id": int(i), "piece": _piece(tokenizer, int(i)), "prob": float(v)} for v, i in zip(values, ids)]
    return {"id": token, "piece": _piece(tokenizer, token), "prob": float(probs[token]), "top": top,
            "entropy": round(entropy, 4)}  # fmt: skip


def _sampler_steps(logits: torch.Tensor, p: SamplingParams) -> dict:
    """How many candidates each truncation step of the chain left (sampling.py's order and functions)."""
    c = Candidates.all(logits.float())
    out = {"candidates": len(c)}
    c = top_k(c, p.top_k)
    out["after_top_k"] = len(c)
    c = typical_p(c, p.typical_p, p.min_keep)
    out["after_typical_p"] = len(c)
    c = top_p(c, p.top_p, p.min_keep)
    out["after_top_p"] = len(c)
    c = min_p(c, p.min_p, p.min_keep)
    out["after_min_p"] = len(c)
    return out


@torch.inference_mode()
def explain(llm, prompt: str, *, max_tokens: int = 16, raw: bool = False, system: str | None = None, **sampling):
    """Run `prompt` once on `llm` (a pellucid.LLM) and report every stage (the module docstring's schema)."""
    started = time.perf_counter()
    model, tokenizer = llm.model, llm.tokenizer
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if raw or not llm.has_chat_template:
        rendered, prompt_ids = prompt, llm.tokenize(prompt)
        segments = [{"text": prompt, "added": False}]
    else:
        rendered, prompt_ids = llm.chat_prompt(messages)
        segments = template_segments(rendered, messages)
    said = sum(len(tokenizer.encode(s["text"], add_special=False)) for s in segments if not s["added"])
    params = SamplingParams(**sampling)
    sampler = make_sampler(params)
    # One-time costs of a fresh process (loading the native kernels, repacking weights at their first product,
    # compiling, first allocations) would land on layer 0 of the prefill: a prefill and a decode step go first,
    # timed as first_call_s, so the measured run is the steady state.
    t_warm = time.perf_counter()
    # The same path and shapes as the measured run (observe= runs the blocks eagerly; a compiled kernel may
    # specialise on the prompt's length), so their first calls are paid here: the whole prompt, then one token.
    scratch = model.make_cache(capacity=len(prompt_ids) + 1)
    for ids in (prompt_ids, prompt_ids[:1]):
        model.logits(model.hidden(torch.tensor([ids], device=model.device), scratch, observe=lambda i, x: None)[:, -1:])
    first_call_s = time.perf_counter() - t_warm
    cache = model.make_cache(capacity=min(llm.ctx, len(prompt_ids) + max_tokens + 1))
    # Memory before the run (weights resident after the warm-up, the cache allocated) and the run's own peak.
    rss_ready = resident.rss_bytes()
    peak_is_the_runs = resident.reset_peak()
    n_layers = len(model.blocks)
    layer_s = {"prefill": [0.0] * n_layers, "decode": [0.0] * n_layers}
    lens_rows: list[list[torch.Tensor]] = []  # per position explained: the last position's stream per layer
    state = {"phase": "prefill", "last": 0.0, "streams": []}

    def observe(i: int, x: torch.Tensor) -> None:
        now = time.perf_counter()
        if i >= 0:
            layer_s[state["phase"]][i] += now - state["last"]
            state["streams"].append(x[0, -1].detach().clone())
        state["last"] = time.perf_counter()

    timer = _PartTimer(model)
    generated, history = [], list(prompt_ids)
    phase_wall = {"prefill": 0.0, "decode": 0.0}
    sampling_s = 0.0
    try:
        ids = torch.tensor([prompt_ids], device=model.device)
        for step in range(max_tokens):
            phase = "prefill" if step == 0 else "decode"
            state["phase"], timer.phase, state["streams"] = phase, phase, []
            t0 = time.perf_counter()
            logits = model.logits(model.hidden(ids, cache, observe=observe)[:, -1:])[0, -1]
            t1 = time.perf_counter()
            token = sampler.sample(logits, history)
            t2 = time.perf_counter()
            phase_wall[phase] += t2 - t0
            sampling_s += t2 - t1
            timer.seconds[phase]["sampling"] += t2 - t1
            lens_rows.append(state["streams"])
            view = _token_view(tokenizer, logits, token)
            view["sampler"] = _sampler_steps(logits, params)
            if token in tokenizer.eot_ids:
                view["end_of_turn"] = True
                generated.append(view)
                break
            generated.append(view)
            history.append(token)
            if cache.offset + 1 > cache.capacity:
                break
            ids = torch.tensor([[token]], device=model.device)
    finally:
        timer.remove()
    peak = resident.peak_bytes() if peak_is_the_runs else None
    lens = _logit_lens(model, tokenizer, lens_rows)
    text = tokenizer.decode([g["id"] for g in generated if not g.get("end_of_turn")], skip_special=True)
    n_decode = max(len(generated) - 1, 0)
    decode_s = phase_wall["decode"]
    parts = {}
    for phase in ("prefill", "decode"):
        measured = dict(timer.seconds[phase])
        measured["other"] = max(phase_wall[phase] - sum(measured.values()), 0.0)
        parts[phase] = {part: round(measured.get(part, 0.0), 6) for part in PARTS}
    report = {
        "model": llm.name,
        "prompt_text": rendered,
        "template_segments": segments,
        "template_tokens": len(prompt_ids) - said,
        "prompt_tokens": [{"id": i, "piece": _piece(tokenizer, i)} for i in prompt_ids],
        "generated": generated,
        "text": text,
        "layers": [
            {"index": i, "prefill_s": round(layer_s["prefill"][i], 6), "decode_s": round(layer_s["decode"][i], 6)}
            for i in range(n_layers)
        ],
        "parts": parts,
        "prefill": _prefill_numbers(model, cache, len(prompt_ids), phase_wall["prefill"]),
        "decode": _decode_numbers(model, cache, len(prompt_ids), n_decode, decode_s),
        "loading": _loading(llm, first_call_s),
        "memory": _memory(llm, cache, rss_ready, peak),
        "machine": _machine(),
        "kv_cache": _kv_numbers(model, cache),
        "logit_lens": lens,
    }  # fmt: skip
    decode, prefill, mach = report["decode"], report["prefill"], report["machine"]
    decode["fraction_of_bandwidth"] = _fraction(decode["gbs"], mach["bandwidth_gbs"])
    prefill["fraction_of_matmul"] = _fraction(prefill["gflops"], mach["matmul_gflops"])
    report["wall_s"] = round(time.perf_counter() - started, 4)
    return report


def _logit_lens(model, tokenizer, rows: list[list[torch.Tensor]]) -> list[dict]:
    """One row per layer: the token each position explained would get if the model stopped after that layer."""
    if not rows:
        return []
    out = []
    for layer in range(len(rows[0])):
        streams = torch.stack([row[layer] for row in rows])  # (positions, hidden)
        picks = model.logits(model.final_norm(streams.unsqueeze(0)))[0].argmax(dim=-1).tolist()
        out.append({"layer": layer, "tokens": [{"id": int(t), "piece": _piece(tokenizer, int(t))} for t in picks]})
    return out


def _fraction(achieved, limit) -> float | None:
    return round(achieved / limit, 4) if achieved and limit else None


def multiply_adds(model, cache, new_tokens: int, past_tokens: int) -> int:
    """Multiply-adds of one forward pass over `new_tokens` tokens after `past_tokens` cached ones: every
    projection of every block once per token, attention's q.k and p.v over each token's visible context
    (a sliding-window layer sees at most its window), and the output head once (only the last position's
    logits are computed)."""
    from pellucid.model.layers.linear import Linear
    from pellucid.quant.linear import QuantizedLinear

    def size(m) -> int:
        return m.in_features * m.out_features if isinstance(m, QuantizedLinear) else m.weight.numel()

    per_token = sum(size(m) for m in model.blocks.modules() if isinstance(m, (Linear, QuantizedLinear)))
    c = model.config
    per_context_token = c.n_heads * (c.head_dim + c.value_head_dim)  # q.k and p.v for one cached position
    if c.kv_lora_rank:  # latent attention, counted in its absorbed (decode) form: the per-head matrices fold
        per_token += sum(b.attn.k_b.numel() + b.attn.v_b.numel() for b in model.blocks)  # into q and the output,
        per_context_token = c.n_heads * (2 * c.kv_lora_rank + c.rope_dim)  # and q.k, p.v run over the latent
    attention = 0
    for layer in cache.layers:
        window = getattr(layer, "window", None)
        for position in range(past_tokens, past_tokens + new_tokens):
            visible = position + 1 if window is None else min(position + 1, window)
            attention += per_context_token * visible
    return new_tokens * per_token + attention + size(model.output)


def _prefill_numbers(model, cache, n_tokens: int, seconds: float) -> dict:
    """Prefill's throughput as a matrix-multiply workload: GFLOP/s (2 flops per multiply-add) and its
    arithmetic intensity (flops per byte of weights read: the weights are read once for the whole prompt)."""
    from pellucid.bench import decode_bytes

    flops = 2 * multiply_adds(model, cache, n_tokens, 0)
    read = decode_bytes(model) + cache.n_bytes * n_tokens / max(cache.capacity, 1)
    return {
        "tokens": n_tokens,
        "s": round(seconds, 6),
        "tok_s": round(n_tokens / seconds, 2) if seconds > 0 else None,
        "flops": flops,
        "gflops": round(flops / seconds / 1e9, 2) if seconds > 0 else None,
        "flops_per_byte": round(flops / read, 2),
    }


def _decode_numbers(model, cache, n_prompt: int, n_tokens: int, seconds: float) -> dict:
    from pellucid.bench import decode_bytes

    tok_s = n_tokens / seconds if n_tokens and seconds > 0 else None
    # a decode step reads every weight once and the KV cache so far: count the cache at its middle
    per_token = decode_bytes(model) + cache.n_bytes * (cache.offset / 2) / max(cache.capacity, 1)
    flops = sum(2 * multiply_adds(model, cache, 1, n_prompt + i) for i in range(n_tokens)) / max(n_tokens, 1)
    return {
        "tokens": n_tokens,
        "s": round(seconds, 6),
        "tok_s": round(tok_s, 2) if tok_s else None,
        "bytes_per_token": int(per_token),
        "gbs": round(per_token * tok_s / 1e9, 3) if tok_s else None,
        "flops_per_token": int(flops),
        "gflops": round(flops * tok_s / 1e9, 3) if tok_s else None,
        "flops_per_byte": round(flops / per_token, 3),
    }


def _loading(llm, first_call_s: float) -> dict:
    """What was read from the file and how: bytes per storage type, memory-mapped or converted at load."""
    files = resident.model_files(llm.resolved.path)
    by_type = resident.tensor_storage(llm.model, files)
    return {
        "repacked_bytes": resident.repacked_bytes(llm.model),
        "file_pages_resident_bytes": resident.mapped_resident_bytes(files, llm.model),
        "s": round(llm.load_seconds, 3),
        "first_call_s": round(first_call_s, 3),
        "files": [str(f) for f in files],
        "file_bytes": sum(f.stat().st_size for f in files),
        "by_type": by_type,
        "mapped_bytes": sum(r["mapped_bytes"] for r in by_type),
        "converted_bytes": sum(r["converted_bytes"] for r in by_type),
    }


def _memory(llm, cache, rss_ready: int | None, peak: int | None) -> dict:
    """Resident memory measured (now, and the run's peak) and split into a stack, beside fit's prediction for
    a context the size of this run's cache. The measured stack: weights = the model's tensors (resident after
    the warm-up touched them all); KV cache = the part the run wrote; runtime = what was resident before the
    run beyond the weights and the cache (Python, PyTorch, the tokenizer, compiled kernels); activations = the
    run's peak beyond that (buffers alive at once inside a forward pass)."""
    from pellucid.inspect import footprint
    from pellucid.memory import estimate

    MB = MiB
    rss = resident.rss_bytes()
    files = resident.model_files(llm.resolved.path)
    storage = resident.tensor_storage(llm.model, files)
    # Resident weights: the file's pages the process holds, what was converted at load, and the native kernels'
    # repacked copies (whose file pages should have been handed back; when the kernel keeps them, both count).
    file_pages = resident.mapped_resident_bytes(files, llm.model)
    converted = sum(r["converted_bytes"] for r in storage)
    weights = (file_pages if file_pages is not None else sum(r["mapped_bytes"] for r in storage)) + converted
    weights += resident.repacked_bytes(llm.model)
    kv_written = cache.n_bytes * cache.offset / max(cache.capacity, 1)
    measured = None
    if rss_ready is not None:
        top = max(peak or 0, rss or 0)
        measured = {
            "runtime": round(max(rss_ready - weights, 0) / MB, 1),
            "weights": round(weights / MB, 1),
            "kv_cache": round(kv_written / MB, 2),
            "activations": round(max(top - rss_ready - kv_written, 0) / MB, 1),
        }
    try:
        e = estimate(footprint(llm.resolved), cache.capacity, device=llm.device.type, kv_type=llm.kv_type_label)
    except Exception:  # a model the planner cannot size: say so rather than fail the report
        e = None
    predicted = None
    if e is not None:
        predicted = {"runtime": round(e.runtime / MB, 1), "weights": round(e.weights / MB, 1),
                     "kv_cache": round(e.kv_cache / MB, 2), "activations": round(e.compute.peak / MB, 1)}  # fmt: skip
    return {
        "measured_rss_mb": round(rss / MB, 1) if rss else None,
        "peak_rss_mb": round(peak / MB, 1) if peak else None,
        "predicted_mb": round(e.total / MB, 1) if e else None,
        "predicted_ctx": cache.capacity,
        "stack": {"measured": measured, "predicted": predicted},
    }


def _machine() -> dict:
    from pellucid import machine
    from pellucid.quant import kernels

    threads = torch.get_num_threads()
    limits = machine.cached(threads) or machine.measure(threads)
    # prefill multiplies in bfloat16 in the default arithmetic (where the CPU has it), in float32 in exact mode
    bf16 = kernels.fast_mode() and limits.matmul_gflops_bf16 is not None
    return {"bandwidth_gbs": limits.bandwidth_gb_s,
            "matmul_gflops": limits.matmul_gflops_bf16 if bf16 else limits.matmul_gflops_f32,
            "matmul_precision": "bfloat16" if bf16 else "float32", "cpu": limits.cpu, "threads": limits.threads}  # fmt: skip


def _kv_numbers(model, cache) -> dict:
    from pellucid.memory import kv_label

    windows = [getattr(layer, "window", None) for layer in cache.layers]
    windows = [w for w in windows if w]
    return {
        "type": kv_label(*cache.kv_types),
        "bytes_per_token": int(cache.n_bytes / max(cache.capacity, 1)),
        "bytes_used": int(cache.n_bytes * cache.offset / max(cache.capacity, 1)),
        "capacity_tokens": cache.capacity,
        "window": max(windows) if windows else None,
    }


def format_report(r: dict) -> str:
    """The report as text for a terminal, stage by stage."""
    lines = [f"== {r['model']}: one run, every number measured in it ({r['wall_s']:.2f} s)", ""]
    lines.append(
        f"-- text -> tokens: {len(r['prompt_tokens'])} prompt tokens, {r['template_tokens']} of them added by the template"
    )
    for seg in r["template_segments"]:
        lines.append(("  [template] " if seg["added"] else "  [message]  ") + repr(seg["text"]))
    lines.append("  " + " ".join(f"{t['id']}:{t['piece']!r}" for t in r["prompt_tokens"]))
    ld, m = r["loading"], r["memory"]
    lines += ["", f"-- loading: {ld['s']:.2f} s (+ {ld['first_call_s']:.2f} s of first-call setup before the measured run); "
              f"{ld['file_bytes'] / MiB:.1f} MiB of files; weights: {ld['mapped_bytes'] / MiB:.1f} MiB used in place "
              f"(memory-mapped), {ld['converted_bytes'] / MiB:.1f} MiB converted into process memory"]  # fmt: skip
    if ld.get("repacked_bytes"):
        pages = ld.get("file_pages_resident_bytes")
        lines.append(f"   + {ld['repacked_bytes'] / MiB:.1f} MiB repacked for the native kernels at their first product"
                     + (f"; {pages / MiB:.1f} MiB of the file's pages still resident" if pages is not None else ""))  # fmt: skip
    for row in ld["by_type"]:
        lines.append(f"   {row['type']:<22} {row['tensors']:>4} tensors {row['bytes'] / MiB:9.1f} MiB  "
                     f"(mapped {row['mapped_bytes'] / MiB:.1f}, converted {row['converted_bytes'] / MiB:.1f})")  # fmt: skip
    lines += ["", f"-- memory: {m['measured_rss_mb']} MiB resident now, peak during the run {m['peak_rss_mb']} MiB; "
              f"`fit` predicts {m['predicted_mb']} MiB for a {m['predicted_ctx']}-token context"]  # fmt: skip
    measured, predicted = m["stack"]["measured"], m["stack"]["predicted"]
    for part in ("runtime", "weights", "kv_cache", "activations"):
        got = f"{measured[part]:8.1f} MiB" if measured else "      n/a"
        want = f"{predicted[part]:8.1f} MiB" if predicted else "      n/a"
        lines.append(f"   {part:<12} measured {got}   predicted {want}")
    pre, dec, mach = r["prefill"], r["decode"], r["machine"]
    lines += ["", f"-- prefill: {pre['tokens']} tokens in {pre['s'] * 1000:.1f} ms ({pre['tok_s']} tok/s), "
              f"{pre['flops'] / 1e9:.2f} GFLOP = {pre['gflops']} GFLOP/s"]  # fmt: skip
    if pre.get("fraction_of_matmul"):
        lines.append(f"   prefill runs at {100 * pre['fraction_of_matmul']:.0f}% of this machine's matrix-multiply "
                     f"throughput ({mach['matmul_gflops']} GFLOP/s)")  # fmt: skip
    lines.append(f"-- decode: {dec['tokens']} tokens in {dec['s'] * 1000:.1f} ms ({dec['tok_s']} tok/s), "
                 f"{dec['bytes_per_token'] / 1e6:.1f} MB read per token = {dec['gbs']} GB/s")  # fmt: skip
    if dec.get("fraction_of_bandwidth"):
        lines.append(f"   decode runs at {100 * dec['fraction_of_bandwidth']:.0f}% of what your memory can feed "
                     f"({mach['bandwidth_gbs']} GB/s measured on {mach['threads']} threads)")  # fmt: skip
    for phase in ("prefill", "decode"):
        total = sum(r["parts"][phase].values()) or 1
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in r["parts"][phase].items())
        lines.append(f"   {phase} time by part: {shares}")
    slowest = sorted(r["layers"], key=lambda layer: -layer["decode_s"])[:3]
    lines.append(
        "   slowest layers in decode: " + ", ".join(f"#{x['index']} {x['decode_s'] * 1000:.2f} ms" for x in slowest)
    )
    lines += ["", "-- each generated token: probability, top alternatives, entropy, what the samplers left"]
    for g in r["generated"]:
        alts = "  ".join(f"{t['piece']!r} {100 * t['prob']:.1f}%" for t in g["top"][:3])
        s = g["sampler"]
        lines.append(f"  {g['piece']!r:>14} {100 * g['prob']:5.1f}%  H={g['entropy']:.2f} bits  "
                     f"candidates {s['after_top_k']}/{s['after_top_p']}/{s['after_min_p']}  | {alts}")  # fmt: skip
    lines += ["", "-- logit lens: what each layer would pick (columns: the prompt's last position, then each token)"]
    for row in r["logit_lens"]:
        lines.append(f"  layer {row['layer']:>3}: " + " ".join(repr(t["piece"]) for t in row["tokens"][:12]))
    kv = r["kv_cache"]
    window = f", a sliding window of {kv['window']} tokens stops the local layers' growth" if kv["window"] else ""
    lines += [
        "",
        f"-- KV cache in {kv.get('type', 'f32')}: {kv['bytes_per_token'] / 1024:.1f} KiB per token, "
        f"{kv['bytes_used'] / 2**20:.2f} MiB held{window}",
    ]
    lines += ["", f"answer: {r['text']!r}"]
    return "\n".join(lines)


__all__ = ["PARTS", "explain", "format_report", "multiply_adds", "template_segments"]
