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


def _parts(r: dict) -> str:
    rows = []
    for phase in ("prefill", "decode"):
        parts = r["parts"][phase]
        total = sum(parts.values()) or 1.0
        x, rects = 0.0, []
        for part, seconds in parts.items():
            w = BAR_W * seconds / total
            rects.append(f'<rect x="{x:.1f}" width="{w:.1f}" height="18" fill="{PART_COLOURS[part]}">'
                         f"<title>{part}: {seconds * 1000:.1f} ms</title></rect>")  # fmt: skip
            x += w
        rows.append(f'<tr><td>{phase}</td><td><svg width="{BAR_W}" height="18">{"".join(rects)}</svg></td>'
                    f'<td class="muted">{total * 1000:.1f} ms</td></tr>')  # fmt: skip
    legend = " ".join(f'<span style="color:{c}">■</span> {p}' for p, c in PART_COLOURS.items())
    return f"<table>{''.join(rows)}</table><p class='muted'>{legend}</p>"


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


def _memory(r: dict) -> str:
    m, kv = r["memory"], r["kv_cache"]
    measured, predicted = m["measured_rss_mb"] or 0, m["predicted_mb"] or 0
    scale = max(measured, predicted, 1)
    rows = [
        _hbar("measured (RSS)", measured, scale, "#4e79a7", f"{measured} MB resident after this run"),
        _hbar("predicted (fit)", predicted, scale, "#bab0ac", f"{predicted} MB: pellucid fit for this context"),
        _hbar(
            "KV cache",
            kv["bytes_used"] / 2**20,
            scale,
            "#f28e2b",
            f"{kv['bytes_used'] / 2**20:.2f} MiB held, {kv['bytes_per_token'] / 1024:.1f} KiB per token",
        ),  # fmt: skip
    ]
    return f"<table>{''.join(rows)}</table>"


def _speed(r: dict) -> str:
    d, mach, pre = r["decode"], r["machine"], r["prefill"]
    out = [f"<p>prefill: {pre['tokens']} tokens in {pre['s'] * 1000:.1f} ms ({pre['tok_s']} tok/s)</p>"]
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
        ("Per layer", _layers(r)),
        (
            "Memory",
            _memory(r) + f"<p class='muted'>loaded in {r['memory']['load_s']} s; the first forward pass's "
            f"one-time setup took {r['memory']['first_call_s']} s (not in the numbers above)</p>",
        ),
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
