"""`pellucid explain --html FILE`: the explain report as one self-contained page (no network, no CDN).

The page is plain HTML with inline CSS, inline SVG drawn here, and a few lines of inline JavaScript for the
token tooltips; every model-written string goes in through `html.escape`. Sections follow the report:
the tokens (the prompt's, grey where the template added them, then the generated ones coloured by their
probability, with the alternatives on hover), where the time went (per part, per layer), memory (measured
beside predicted) and decode's share of this machine's bandwidth, the logit-lens grid, the KV cache.
"""

from __future__ import annotations

import html
import json

BAR_W = 560  # px: the width of every horizontal bar chart
PART_COLOURS = {"attention": "#4e79a7", "feed_forward": "#f28e2b", "norms": "#76b7b2", "output_head": "#e15759",
                "sampling": "#59a14f", "other": "#bab0ac"}  # fmt: skip

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.tok { font-family: ui-monospace, monospace; white-space: pre; padding: 1px 1px; border-radius: 3px;
       margin: 1px; display: inline-block; }
.tok.added { color: #888; } .tok.gen { cursor: help; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #999; padding: .4rem .6rem;
       font: 13px ui-monospace, monospace; white-space: pre; box-shadow: 0 2px 8px #0003; pointer-events: none; }
table.lens { border-collapse: collapse; font: 12px ui-monospace, monospace; }
table.lens td, table.lens th { border: 1px solid #e4e4e4; padding: 1px 4px; white-space: pre; }
table.lens td.final { background: #d8f0d0; }
.muted { color: #777; } .big { font-size: 1.15rem; }
table.nums { border-collapse: collapse; font-size: 13px; margin: .5rem 0; }
table.nums td, table.nums th { border-bottom: 1px solid #eee; padding: 2px 10px; text-align: right; }
table.nums td:first-child, table.nums th:first-child { text-align: left; }
"""

TIP_SCRIPT = """
const tip = document.getElementById("tip");
document.querySelectorAll(".tok.gen").forEach(el => {
  el.addEventListener("mouseenter", () => { tip.textContent = el.dataset.alts; tip.style.display = "block"; });
  el.addEventListener("mousemove", e => { tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; });
  el.addEventListener("mouseleave", () => { tip.style.display = "none"; });
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _prob_colour(p: float) -> str:
    """Red (unlikely) to green (certain), light enough for dark text."""
    hue = int(120 * max(0.0, min(1.0, p)))
    return f"hsl({hue}, 70%, 82%)"


def _tokens(r: dict) -> str:
    added_pieces = _added_token_mask(r)
    out = ['<div class="strip">']
    for token, added in zip(r["prompt_tokens"], added_pieces):
        out.append(f'<span class="tok{" added" if added else ""}" title="id {token["id"]}">{_e(token["piece"])}</span>')
    out.append("<br>")
    for g in r["generated"]:
        alts = "\n".join(f"{'▸' if a['id'] == g['id'] else ' '} {json.dumps(a['piece'])}  {100 * a['prob']:.1f}%"
                         for a in g["top"])  # fmt: skip
        alts += f"\nentropy {g['entropy']:.2f} bits; candidates after top-k/top-p/min-p: " + "/".join(
            str(g["sampler"][k]) for k in ("after_top_k", "after_top_p", "after_min_p")
        )
        out.append(f'<span class="tok gen" style="background:{_prob_colour(g["prob"])}" data-alts="{_e(alts)}">'
                   f"{_e(g['piece'])}</span>")  # fmt: skip
    out.append("</div>")
    return "".join(out)


def _added_token_mask(r: dict) -> list[bool]:
    """Whether each prompt token lies in a template-added segment (by character offsets of its piece)."""
    bounds, at = [], 0
    for seg in r["template_segments"]:
        bounds.append((at, at + len(seg["text"]), seg["added"]))
        at += len(seg["text"])
    mask, at = [], 0
    for token in r["prompt_tokens"]:
        added = next((a for start, end, a in bounds if start <= at < end), True)
        mask.append(added)
        at += len(token["piece"])
    return mask


def _hbar(label: str, value: float, scale: float, colour: str, note: str) -> str:
    width = 0 if scale <= 0 else max(1, int(BAR_W * value / scale))
    return (f'<tr><td>{_e(label)}</td><td><svg width="{BAR_W}" height="14"><rect width="{width}" height="14" '
            f'fill="{colour}"/></svg></td><td class="muted">{_e(note)}</td></tr>')  # fmt: skip


def _stacked_bar(label: str, segments: list[tuple[str, float, str, str]], scale: float, note: str) -> str:
    """One table row: `label`, a bar of (name, value, colour, hover text) segments on a shared scale, `note`."""
    x, rects = 0.0, []
    for _name, value, colour, title in segments:
        w = BAR_W * value / scale if scale > 0 else 0.0
        rects.append(f'<rect x="{x:.1f}" width="{w:.1f}" height="18" fill="{colour}"><title>{_e(title)}</title></rect>')
        x += w
    return (f'<tr><td>{_e(label)}</td><td><svg width="{BAR_W}" height="18">{"".join(rects)}</svg></td>'
            f'<td class="muted">{_e(note)}</td></tr>')  # fmt: skip


def _legend(colours: dict[str, str]) -> str:
    return " ".join(f'<span style="color:{c}">■</span> {p.replace("_", " ")}' for p, c in colours.items())


def _parts(r: dict) -> str:
    rows = []
    for phase in ("prefill", "decode"):
        parts = r["parts"][phase]
        total = sum(parts.values()) or 1.0
        segments = [(p, s, PART_COLOURS[p], f"{p}: {s * 1000:.1f} ms") for p, s in parts.items()]
        rows.append(_stacked_bar(phase, segments, total, f"{total * 1000:.1f} ms"))
    return f"<table>{''.join(rows)}</table><p class='muted'>{_legend(PART_COLOURS)}</p>"


def _layers(r: dict) -> str:
    scale = max((x["prefill_s"] + x["decode_s"] for x in r["layers"]), default=0)
    rows = [
        _hbar(
            f"layer {x['index']}",
            x["prefill_s"] + x["decode_s"],
            scale,
            "#4e79a7",
            f"prefill {x['prefill_s'] * 1000:.2f} ms, decode {x['decode_s'] * 1000:.2f} ms",
        )  # fmt: skip
        for x in r["layers"]
    ]
    return f"<table>{''.join(rows)}</table>"


STACK_COLOURS = {"runtime": "#bab0ac", "weights": "#4e79a7", "kv_cache": "#f28e2b", "activations": "#e15759"}


def _memory(r: dict) -> str:
    """Two stacked bars, measured and predicted: runtime / weights / KV cache / activations."""
    m = r["memory"]
    stacks = {
        k: v for k, v in (("measured", m["stack"]["measured"]), ("predicted (fit)", m["stack"]["predicted"])) if v
    }
    scale = max([sum(v.values()) for v in stacks.values()] + [m["measured_rss_mb"] or 0, 1])
    rows = [
        _stacked_bar(
            label,
            [(p, mb, STACK_COLOURS[p], f"{p}: {mb} MiB") for p, mb in stack.items()],
            scale,
            f"{sum(stack.values()):.0f} MiB",
        )  # fmt: skip
        for label, stack in stacks.items()
    ]
    legend = _legend(STACK_COLOURS)
    table = "".join(
        f"<tr><td>{p.replace('_', ' ')}</td>"
        + "".join(f"<td>{_e(stack[p])} MiB</td>" for stack in stacks.values())
        + "</tr>"
        for p in STACK_COLOURS
    )
    head = "".join(f"<th>{_e(label)}</th>" for label in stacks)
    return (
        f"<table>{''.join(rows)}</table><p class='muted'>{legend}</p>"
        f"<table class='nums'><tr><th></th>{head}</tr>{table}</table>"
        f"<p class='muted'>Resident now {m['measured_rss_mb']} MiB, the run's peak {m['peak_rss_mb']} MiB; fit's "
        f"prediction is for a context of {m['predicted_ctx']} tokens (this run's cache). Measured: weights are the "
        f"model's tensors, KV cache what the run wrote, runtime what was resident before the run besides them "
        f"(Python, PyTorch, the tokenizer), activations the run's peak beyond that.</p>"
    )


def _loading(r: dict) -> str:
    ld = r["loading"]
    rows = "".join(
        f"<tr><td>{_e(x['type'])}</td><td>{x['tensors']}</td><td>{x['bytes'] / 2**20:.1f} MiB</td>"
        f"<td>{x['mapped_bytes'] / 2**20:.1f} MiB</td><td>{x['converted_bytes'] / 2**20:.1f} MiB</td></tr>"
        for x in ld["by_type"]
    )
    return (
        f"<p>Loaded in {ld['s']} s from {ld['file_bytes'] / 2**20:.1f} MiB of files; the first forward pass's one-time "
        f"setup took {ld['first_call_s']} s more (before the measured run, so not in the numbers below). "
        f"<b>{ld['mapped_bytes'] / 2**20:.1f} MiB</b> of weights are used in place (views of the memory-mapped file: "
        f"no copy), <b>{ld['converted_bytes'] / 2**20:.1f} MiB</b> were converted into process memory "
        f"(dequantized, re-laid-out or unpacked scales).</p>"
        f"<table class='nums'><tr><th>stored as</th><th>tensors</th><th>bytes</th><th>memory-mapped</th>"
        f"<th>converted</th></tr>{rows}</table>"
    )


def _roofline(r: dict) -> str:
    """Log-log: achieved GFLOP/s against arithmetic intensity (flops per byte read), under this machine's roof
    min(bandwidth x intensity, matmul throughput). Decode sits on the sloped (memory-bound) part, prefill further
    right, where the flat (compute-bound) roof applies."""
    import math

    mach, pre, dec = r["machine"], r["prefill"], r["decode"]
    bw, peak = mach["bandwidth_gbs"], mach["matmul_gflops"]
    if not bw or not peak:
        return ""
    W, H, pad = 520, 300, 48
    x_lo, x_hi = 0.1, 1000.0
    y_lo, y_hi = 0.1, peak * 4

    def px(ai: float) -> float:
        return pad + (W - 2 * pad) * (math.log10(ai) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))

    def py(g: float) -> float:
        return H - pad - (H - 2 * pad) * (math.log10(g) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))

    ridge = peak / bw
    roof = f"M{px(x_lo):.1f},{py(bw * x_lo):.1f} L{px(ridge):.1f},{py(peak):.1f} L{px(x_hi):.1f},{py(peak):.1f}"
    parts = [f'<path d="{roof}" fill="none" stroke="#333" stroke-width="2"/>']
    for decade in range(-1, 4):
        x = px(10.0**decade)
        parts.append(f'<line x1="{x:.1f}" y1="{H - pad}" x2="{x:.1f}" y2="{pad}" stroke="#eee"/>'
                     f'<text x="{x:.1f}" y="{H - pad + 14}" text-anchor="middle">{10.0**decade:g}</text>')  # fmt: skip
    for decade in range(-1, int(math.log10(y_hi)) + 1):
        y = py(10.0**decade)
        parts.append(f'<line x1="{pad}" y1="{y:.1f}" x2="{W - pad}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end">{10.0**decade:g}</text>')  # fmt: skip
    for name, phase, colour in (("prefill", pre, "#4e79a7"), ("decode", dec, "#59a14f")):
        ai, g = phase.get("flops_per_byte"), phase.get("gflops")
        if not ai or not g:
            continue
        x, y = px(min(max(ai, x_lo), x_hi)), py(min(max(g, y_lo), y_hi))
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}"><title>{name}: '
                     f"{g} GFLOP/s at {ai} flops/byte</title></circle>"
                     f'<text x="{x + 9:.1f}" y="{y + 4:.1f}" fill="{colour}">{name} {g:g} GFLOP/s</text>')  # fmt: skip
    parts.append(f'<text x="{px(ridge) + 6:.1f}" y="{py(peak) - 6:.1f}">matmul ({mach.get("matmul_precision", "")}) {peak:g} GFLOP/s</text>'
                 f'<text x="{px(0.3):.1f}" y="{py(bw * 0.3) - 8:.1f}" transform="rotate(-33 {px(0.3):.1f} '
                 f'{py(bw * 0.3) - 8:.1f})">memory {bw:g} GB/s</text>'
                 f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">flops per byte read</text>'
                 f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">GFLOP/s</text>')  # fmt: skip
    svg = (
        f'<svg class="roofline" width="{W}" height="{H}" font-size="11" font-family="system-ui">{"".join(parts)}</svg>'
    )
    return (
        f"{svg}<p class='muted'>The roofline: no run can sit above the black line, min(memory bandwidth x flops per "
        f"byte, matrix-multiply throughput), both measured on this machine (pellucid bench --machine). Decode reads "
        f"every weight for one token ({dec.get('flops_per_byte')} flops per byte): memory-bound, its ceiling is the "
        f"sloped line. Prefill reuses each weight for all {pre['tokens']} prompt tokens ({pre.get('flops_per_byte')} "
        f"flops per byte): the further right, the more the flat compute roof applies.</p>"
    )


def _speed(r: dict) -> str:
    d, mach, pre = r["decode"], r["machine"], r["prefill"]
    out = [
        f"<p>prefill: {pre['tokens']} tokens in {pre['s'] * 1000:.1f} ms ({pre['tok_s']} tok/s), "
        f"{pre['gflops']} GFLOP/s"
    ]
    if pre.get("fraction_of_matmul"):
        out.append(f" = {100 * pre['fraction_of_matmul']:.0f}% of this machine's matrix-multiply throughput "
                   f"({mach['matmul_gflops']} GFLOP/s)")  # fmt: skip
    out.append("</p>")
    if d["gbs"] and mach["bandwidth_gbs"]:
        out.append(f'<p class="big">decode runs at <b>{100 * d["fraction_of_bandwidth"]:.0f}%</b> of what your memory '
                   f"can feed: {d['gbs']} GB/s ({d['bytes_per_token'] / 1e6:.1f} MB per token x {d['tok_s']} tok/s) "
                   f"of {mach['bandwidth_gbs']} GB/s measured on {mach['threads']} threads ({_e(mach['cpu'])})</p>")  # fmt: skip
        scale = mach["bandwidth_gbs"]
        ours = _hbar("decode", d["gbs"], scale, "#59a14f", f"{d['gbs']} GB/s")
        peak = _hbar("this machine", scale, scale, "#bab0ac", "streaming read")
        out.append(f"<table>{ours}{peak}</table>")
    return "".join(out)


def _lens(r: dict) -> str:
    if not r["logit_lens"]:
        return ""
    final = [t["id"] for t in r["logit_lens"][-1]["tokens"]]
    head = "".join(f"<th>{_e(g['piece'])}</th>" for g in [{"piece": "(prompt)"}] + r["generated"][:-1])
    rows = []
    for row in r["logit_lens"]:
        cells = "".join(f'<td class="{"final" if t["id"] == f else ""}">{_e(t["piece"])}</td>'
                        for t, f in zip(row["tokens"], final))  # fmt: skip
        rows.append(f"<tr><th>{row['layer']}</th>{cells}</tr>")
    return (f"<p class='muted'>Each column is a position, headed by the token fed there; each row the token the model "
            f"would predict next if it stopped after that layer; green: the same as the last layer's.</p>"
            f"<table class='lens'><tr><th>layer</th>{head}</tr>{''.join(rows)}</table>")  # fmt: skip


def render(r: dict) -> str:
    """The report (pellucid.explain's dict) as one HTML page."""
    sections = [
        (
            "Text → tokens",
            f"<p>{len(r['prompt_tokens'])} prompt tokens, {r['template_tokens']} of them added by the "
            f"chat template (grey). Generated tokens are coloured by their probability (red: unlikely, "
            f"green: certain); hover one for the alternatives.</p>{_tokens(r)}",
        ),  # fmt: skip
        ("Where the time went", _parts(r) + _speed(r)),
        ("Against this machine's limits", _roofline(r)),
        ("Per layer", _layers(r)),
        ("Loading", _loading(r)),
        ("Memory", _memory(r)),
        ("Logit lens", _lens(r)),
    ]
    body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pellucid explain: "
        f"{_e(r['model'])}</title><link rel='icon' href='data:,'><style>{STYLE}</style></head><body>"
        f"<h1>pellucid explain: {_e(r['model'])}</h1><p>answer: <b>{_e(r['text'])}</b> "
        f"<span class='muted'>({r['wall_s']:.2f} s, every number measured in this run)</span></p>"
        f"{body}<div id='tip'></div><script>{TIP_SCRIPT}</script></body></html>"
    )


__all__ = ["render"]
