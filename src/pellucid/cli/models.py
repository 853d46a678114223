"""Commands about model files: pull, list, rm, inspect, tokenize, fit."""

from __future__ import annotations

import json
import os
import sys

from pellucid import store
from pellucid.cli.common import (
    add_kv_type_args,
    add_model_arg,
    add_quantize_arg,
    command,
    kv_types_of,
    positive_int,
    print_json,
    table,
)

# -- pull, list, rm -------------------------------------------------------------------------------------


def _add_pull(commands) -> None:
    p = command(commands, "pull", cmd_pull, "download a model into the store")
    p.add_argument(
        "spec",
        metavar="NAME|PATH|URL",
        help="a catalog name; a Hugging Face Hub model: hf:ORG/REPO[:QUANT], hf:ORG/REPO/FILE.gguf, "
        "hf:ORG/REPO@REVISION; an Ollama model to copy in: ollama:NAME[:TAG]; a local .gguf / HF folder; "
        "or an http(s) URL",
    )
    p.add_argument("--name", help="the name to store it under (default: from the file name)")
    p.add_argument("--force", action="store_true", help="pull again even if the store has it")


def cmd_pull(args) -> int:
    """Fetch a model (catalog name, Hugging Face Hub model, Ollama model, path or URL) into the store, checking
    its sha256.
    A Hub model's files go into the Hugging Face cache (shared with transformers and llama.cpp); the store
    links to them. Pulling a Hub model again updates it to the revision's latest commit."""
    stored = store.pull(args.spec, name=args.name, force=args.force)
    print(f"{stored.name}: {_summary_line(stored.summary)}\n  {stored.path}")
    return 0


def _add_list(commands) -> None:
    p = command(commands, "list", cmd_list, "the models in the store, and the catalog")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_list(args) -> int:
    """The models in the store; then the models other tools keep on disk (Ollama, LM Studio, llama.cpp, the
    Hugging Face cache), which run in place; then the catalog models not pulled yet."""
    from pellucid.inspect import format_count
    from pellucid.memory import format_bytes

    stored = store.list_models()
    pulled = {m.name for m in stored}
    missing = [e for e in store.CATALOG.values() if e.name not in pulled]
    elsewhere = _found_elsewhere(stored)
    if args.json:
        print_json(
            {
                "models": [
                    {
                        "name": m.name,
                        "kind": m.kind,
                        "path": str(m.path),
                        "source": m.source,
                        "origin": m.origin,
                        "pulled_at": m.pulled_at,
                        **m.summary,
                    }
                    for m in stored
                ],
                "elsewhere": [
                    {
                        "source": f.source,
                        "model": f.model,
                        "kind": f.kind,
                        "path": str(f.path),
                        "quantization": f.quantization,
                        "size_bytes": f.size_bytes,
                    }
                    for f in elsewhere
                ],
                "catalog": [
                    {"name": e.name, "description": e.description, "pulled": e.name in pulled}
                    for e in store.CATALOG.values()
                ],
            }
        )
        return 0
    if stored:
        rows = [("NAME", "ARCHITECTURE", "PARAMETERS", "QUANTIZATION", "SIZE", "SOURCE", "PATH")]
        for m in stored:
            s = m.summary
            params = format_count(s["parameters"]) if isinstance(s.get("parameters"), int) else "?"
            size = format_bytes(s["size_bytes"]) if isinstance(s.get("size_bytes"), int) else "?"
            arch, quant = str(s.get("architecture", "?")), str(s.get("quantization", "?"))
            rows.append((m.name, arch, params, quant, size, _short_source(m), str(m.path)))
        print(table(rows))
    else:
        print(f"The store ({store.models_dir()}) is empty.")
    if elsewhere:
        print("\nIn other tools' stores (they run in place, nothing is copied; `pellucid pull MODEL` copies one in):")
        rows = [("  SOURCE", "MODEL", "QUANTIZATION", "SIZE", "PATH")]
        for f in elsewhere:
            rows.append((f"  {f.source}", f.model, f.quantization, format_bytes(f.size_bytes), str(f.path)))
        print(table(rows))
    if missing:
        print("\nIn the catalog, not pulled yet (`pellucid pull NAME`, or just use the name):")
        print(table([(f"  {e.name}", e.description) for e in missing]))
    return 0


def _found_elsewhere(stored: list[store.StoredModel]) -> list:
    """The other tools' models, less those the store already links to (a Hub pull links into the HF cache)."""
    from pellucid.other_stores import find_models

    in_store = {os.path.realpath(m.dir / rel) for m in stored for rel in m.files}
    found = []
    for f in find_models():
        target = f.path / "config.json" if f.kind == "hf" else f.path
        if os.path.realpath(target) not in in_store:
            found.append(f)
    return found


def _short_source(model: store.StoredModel) -> str:
    """Where a stored model came from, in a table cell: the Hub name and commit, the Ollama name, the catalog."""
    origin = model.origin
    if origin.get("type") == "hf":
        return f"{model.source} ({origin.get('revision', '?')[:7]})"
    if model.source.startswith("pypi:"):
        return "catalog (PyPI)"
    if model.source.startswith("path:"):
        return "copied from " + model.source[len("path:") :]
    return model.source or "?"


def _add_rm(commands) -> None:
    p = command(commands, "rm", cmd_rm, "delete a model from the store")
    p.add_argument("name", metavar="NAME")


def cmd_rm(args) -> int:
    """Delete a model (its whole folder) from the store."""
    removed = store.remove(args.name)
    print(f"removed {removed.name} ({removed.dir})")
    if removed.origin.get("type") == "hf":
        print(
            f"  its files stay in the Hugging Face cache ({removed.origin.get('cache')}), which other tools share; "
            f"`hf cache rm model/{removed.origin.get('repo')}` deletes them there"
        )
    return 0


def _summary_line(summary: dict) -> str:
    from pellucid.inspect import format_count
    from pellucid.memory import format_bytes

    parts = [str(summary.get("architecture", "?"))]
    if isinstance(summary.get("parameters"), int):
        parts.append(f"{format_count(summary['parameters'])} parameters")
    parts.append(str(summary.get("quantization", "?")))
    if isinstance(summary.get("size_bytes"), int):
        parts.append(format_bytes(summary["size_bytes"]))
    return ", ".join(parts)


# -- inspect --------------------------------------------------------------------------------------------


def _add_inspect(commands) -> None:
    p = command(commands, "inspect", cmd_inspect, "what is in a model file, and will it fit")
    add_model_arg(p)
    add_quantize_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--map",
        metavar="FILE",
        help="also draw the file's bytes as a picture (FILE.svg or FILE.png): header, metadata, vocabulary, "
        "then each layer's tensors, area proportional to size, coloured by storage type",
    )


def cmd_inspect(args) -> int:
    """Architecture, size, quantization, tokenizer, file layout and memory math of a model, from its headers."""
    from pellucid.inspect import inspect_model, render_text, report_json
    from pellucid.inspect_map import check_map_path, write_map

    map_path = check_map_path(args.map) if args.map else None  # a wrong name fails before any work
    model = store.resolve(args.model)
    report = inspect_model(model, args.quantize)
    if args.json:
        print_json(report_json(report))
    else:
        print(render_text(report))
    if map_path:
        written = write_map(model, map_path)
        if args.json:  # on stderr, so that stdout stays one JSON document
            print(f"map of the file written to {written}", file=sys.stderr)
        else:
            print(f"\nmap of the file written to {written}")
    return 0


# -- tokenize -------------------------------------------------------------------------------------------


def _add_tokenize(commands) -> None:
    p = command(commands, "tokenize", cmd_tokenize, "show how a model splits text into tokens")
    add_model_arg(p)
    p.add_argument("text", metavar="TEXT", help="the text to tokenize; - reads standard input")
    p.add_argument(
        "--special", action="store_true", help="turn special-token text such as <|im_start|> into special tokens"
    )
    p.add_argument("--json", action="store_true", help='print {"ids": [...], "pieces": [...]}')


def cmd_tokenize(args) -> int:
    """Each token's id and piece, and how the count compares with words and characters."""
    from pellucid.tokenizer import load_tokenizer

    text = sys.stdin.read() if args.text == "-" else args.text
    tok = load_tokenizer(store.resolve(args.model))
    ids = tok.encode(text, add_special=True, parse_special=args.special)
    pieces = [tok.piece(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return 0
    rows = [("ID", "PIECE", "TEXT")]
    for i, piece in zip(ids, pieces):
        shown = "(special)" if tok.is_special(i) else visible(tok.token_bytes(i))
        rows.append((str(i), visible(piece.encode()), shown))
    print(table(rows))
    print(_count_line(text, ids, sum(1 for i in ids if tok.is_special(i))))
    return 0


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(data: bytes) -> str:
    """A token's bytes as text with whitespace made visible; bytes that are not whole UTF-8 characters
    (byte-level BPE splits some characters across tokens) are shown as <0xNN>."""
    out = []
    text = data.decode("utf-8", errors="surrogateescape")
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # an undecodable byte, smuggled through by surrogateescape
            out.append(f"<0x{ord(ch) - 0xDC00:02X}>")
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _count_line(text: str, ids: list[int], n_special: int) -> str:
    n_words, n_chars, n_bytes = len(text.split()), len(text), len(text.encode())
    line = f"{len(ids)} tokens"
    if n_special:
        line += f" ({n_special} special)"
    line += f" for {n_words} words, {n_chars} characters, {n_bytes} bytes"
    if n_words:
        line += f": {(len(ids) - n_special) / n_words:.2f} tokens per word. Tokens ≠ words:"
        line += " common words are one token, rare words and other scripts split into several."
    return line


# -- fit ------------------------------------------------------------------------------------------------


def _add_fit(commands) -> None:
    p = command(commands, "fit", cmd_fit, "will a model fit in memory, and at what context")
    add_model_arg(p)
    p.add_argument("--ctx", type=positive_int, help="context length in tokens (default: the model's own)")
    p.add_argument(
        "--memory", metavar="SIZE", help="the memory to plan for, e.g. 8GiB, 8GB, 512MiB, 1.5G (default: detected)"
    )
    add_kv_type_args(p)
    add_quantize_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_fit(args) -> int:
    """Weights + KV cache + runtime overhead, for the file's own precision and for f32 / f16 / q8_0 / q4_0
    weights, against the given memory or the detected RAM (and GPU memory, when CUDA is available)."""
    from pellucid import memory
    from pellucid.inspect import footprint

    budgets = (
        [memory.Budget("--memory", "cpu", memory.parse_size(args.memory))] if args.memory else memory.detect_budgets()
    )
    model = store.resolve(args.model)
    fp = footprint(model, args.quantize)
    kv_type = memory.kv_label(*kv_types_of(args))
    plan = memory.plan_fit(fp, model.name, args.ctx or fp.config.context_length, budgets, kv_type)
    if args.json:
        print_json(memory.plan_json(plan))
    else:
        print(memory.render_fit(plan))
    return 0


COMMANDS = [_add_pull, _add_list, _add_rm, _add_inspect, _add_tokenize, _add_fit]
