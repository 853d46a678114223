"""Helpers shared by the command modules: argument types, the MODEL argument, tables, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pellucid import store
from pellucid.errors import PellucidError

# -- argument types ------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}


def duration(text: str) -> float:
    """Seconds in a duration such as 30s, 5m, 1h30m or 90 (seconds)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m, 1h30m or 0")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """5m, 1h30m, 45s, 2.5s: the shortest way `duration` reads back."""
    if seconds != int(seconds) or seconds < 60:
        return f"{seconds:g}s"
    out, rest = "", int(seconds)
    for unit, size in DURATION_UNITS.items():
        if rest >= size:
            out, rest = out + f"{rest // size}{unit}", rest % size
    return out


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help=f"a model name, a .gguf file, a Hugging Face folder, a Hub model (hf:ORG/REPO[:QUANT], pulled on first "
        f"use) or an Ollama model (ollama:NAME[:TAG], run in place) (default: {store.DEFAULT_MODEL})",
    )


def stream_to_stdout(generation) -> None:
    """Print a Generation's text as it arrives, then a newline; closing it even when the reader stops early."""
    try:
        for chunk in generation:
            print(chunk.text, end="", flush=True)
    finally:
        generation.close()
        print()


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --debug is accepted before or after the command name. SUPPRESS keeps a subcommand's unset copy from
# overwriting a value given before the command.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
COMMON.add_argument(
    "--exact",
    action="store_true",
    default=argparse.SUPPRESS,
    help="float32 arithmetic everywhere (PELLUCID_EXACT=1): reproducible to the bit across prefill, decode and "
    "batching, slower than the default (llama.cpp's int8/bfloat16 rounding of activations)",
)


def command(commands, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """A subcommand's parser; its description is the docstring of the function that runs it."""
    p = commands.add_parser(name, help=help, description=func.__doc__, parents=[COMMON])
    p.set_defaults(func=func)
    return p


def add_quantize_arg(p) -> None:
    p.add_argument(
        "--quantize",
        choices=("q8_0", "q4_0", "q4_k"),
        help="pack the model's float16/bfloat16/float32 matrices into this format at load (HF folders, f16 GGUFs)",
    )


def add_kv_type_args(p) -> None:
    """llama.cpp's KV cache type flags: --kv-type for both halves, -ctk / -ctv for keys / values alone."""
    from pellucid.quant.types import KV_CACHE_TYPES

    names = ", ".join(KV_CACHE_TYPES)
    p.add_argument(
        "--kv-type", metavar="TYPE", help=f"store the KV cache's keys and values as TYPE: {names} (default: f16)"
    )
    p.add_argument(
        "-ctk", "--cache-type-k", dest="kv_type_k", metavar="TYPE", help="the keys' type (wins over --kv-type)"
    )
    p.add_argument("-ctv", "--cache-type-v", dest="kv_type_v", metavar="TYPE", help="the values' type")


def kv_type_options(args) -> dict:
    """The KV type flags as `pellucid.load`'s keyword arguments."""
    return {name: getattr(args, name, None) for name in ("kv_type", "kv_type_k", "kv_type_v")}


def kv_types_of(args) -> tuple[str, str]:
    """(keys' type, values' type) the flags ask for, the default filled in; a clear error for an unknown type."""
    from pellucid.quant.types import check_kv_type  # not kv_blocks: a client of a server never imports torch

    o = kv_type_options(args)
    return check_kv_type(o["kv_type_k"] or o["kv_type"]), check_kv_type(o["kv_type_v"] or o["kv_type"])


def add_allow_disk_arg(p) -> None:
    p.add_argument(
        "--allow-disk",
        action="store_true",
        help="run a model that does not fit in the RAM available anyway, memory-mapped from disk (slow: without "
        "this flag pellucid refuses and says how slow)",
    )


def check_fits_in_ram(args, resolved, n_ctx: int | None) -> None:
    """Before loading on the CPU: a model that needs more than the RAM available is refused with the numbers
    (and how slow running it from disk would be), unless --allow-disk, which prints them as a warning."""
    from pellucid import memory
    from pellucid.device import pick_device
    from pellucid.errors import UnsupportedError
    from pellucid.inspect import footprint

    if pick_device(getattr(args, "device", None)).type != "cpu":
        return
    try:
        fp = footprint(resolved, getattr(args, "quantize", None))
    except UnsupportedError:
        return  # the load says what is unsupported
    n_ctx = n_ctx or min(fp.config.context_length, 4096)
    kv_type = memory.kv_label(*kv_types_of(args))
    warning = memory.check_ram(fp, n_ctx, resolved.name, getattr(args, "allow_disk", False), kv_type)
    if warning:
        # The native kernels' repacked copies of matrices live in anonymous memory, which the OS cannot drop and
        # re-read as it can the file's pages: from disk, every matrix is read in the file's layout instead.
        os.environ["PELLUCID_REPACK"] = "0"
        print(f"warning: {warning} Matrices stay in the file's layout (no repacked copies in RAM).", file=sys.stderr)


def add_chat_template_arg(p) -> None:
    p.add_argument(
        "--chat-template-file",
        metavar="FILE",
        help="a Jinja chat template to use instead of the model's own (llama-server's flag of the same name)",
    )


def read_chat_template(args) -> str | None:
    """The text of --chat-template-file, or None; an unreadable file is the user's error, said plainly."""
    path = getattr(args, "chat_template_file", None)
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PellucidError(f"--chat-template-file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
