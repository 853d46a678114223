"""The `quantize` command: a GGUF file re-encoded as Q4_K_M, Q8_0, ... (quantize_file.py does the work)."""

from __future__ import annotations

from collections import Counter

from pellucid import store
from pellucid.cli.common import command, positive_int
from pellucid.errors import UnsupportedError


def _add_quantize(commands) -> None:
    from pellucid.quantize_file import FILE_TYPES

    p = command(commands, "quantize", cmd_quantize, "make a smaller GGUF file: Q4_K_M, Q8_0, ... (like llama-quantize)")
    p.add_argument(
        "src",
        metavar="SRC",
        help="a .gguf file (any type pellucid reads; any part of a split one), a Hugging Face folder of the llama, "
        "qwen2, qwen3, olmo2 or smollm3 family (f32/f16/bf16 safetensors), or a model name from the store or catalog",
    )
    p.add_argument(
        "dst", metavar="DST", help="the .gguf file to write, or a folder (then the naming convention picks the name)"
    )
    p.add_argument(
        "--type",
        required=True,
        metavar="TYPE",
        help=f"the encoding, any case: {', '.join(FILE_TYPES)}. The _M/_S types and the plain ones mix types per "
        f"tensor as llama.cpp does (output head Q6_K, some attn_v/ffn_down with more bits)",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads while quantizing (default 1: faster wherever the cores also run other work)",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="an importance matrix (llama-imatrix's file): NOT IMPLEMENTED YET; pellucid refuses it rather than "
        "quantize without it",
    )


def cmd_quantize(args) -> int:
    """Re-encode a GGUF model (or a llama/qwen2/qwen3/olmo2/smollm3 Hugging Face folder) in another type, tensor
    by tensor, with llama.cpp's per-tensor choices and block bytes identical to llama-quantize's (without an
    importance matrix). Metadata and tokenizer are carried over; the file is written under a temporary name and
    renamed when complete."""
    from pellucid.memory import format_bytes
    from pellucid.progress import ProgressBar
    from pellucid.quantize_file import file_type, quantize_file

    if args.imatrix:
        raise UnsupportedError(
            "--imatrix is not implemented yet: pellucid quantizes without an importance matrix (as llama-quantize "
            "does when given none); leave the option out, or use llama.cpp's llama-quantize for imatrix quants"
        )
    target = file_type(args.type)  # a wrong name fails before the file is opened
    source = store.resolve(args.src)  # a path, or a name (a catalog model is pulled first, as `run` does)
    with ProgressBar(0, f"quantizing to {target.name}") as bar:  # its total is known once the file is planned
        result = quantize_file(
            source.path,
            args.dst,
            target.name,
            force=args.force,
            threads=args.threads,
            on_plan=lambda total: setattr(bar, "total", total),
            progress=bar.update,
        )
    mix = ", ".join(f"{n} {name}" for name, n in Counter(t.name for t in result.types.values()).most_common())
    print(
        f"wrote {result.path}\n  {format_bytes(result.written_bytes)} ({result.bits_per_weight:.2f} bits per weight; "
        f"the source: {format_bytes(result.source_bytes)}); tensors: {mix}"
    )
    if result.requantized_from is not None:
        print(
            f"  note: the source was already {result.requantized_from}, so this file carries that rounding error "
            f"as well as its own; quantize from the F16/BF16 original when you have it"
        )
    return 0


COMMANDS = [_add_quantize]
