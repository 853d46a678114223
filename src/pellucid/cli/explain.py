"""explain: one run of a prompt, shown stage by stage (pellucid/explain.py measures; this parses and prints)."""

from __future__ import annotations

import sys

from pellucid.cli.common import (
    add_chat_template_arg,
    add_kv_type_args,
    add_model_arg,
    add_quantize_arg,
    command,
    kv_type_options,
    positive_int,
    print_json,
    read_chat_template,
)


def _add_explain(commands) -> None:
    from pellucid.cli.generate import SAMPLING_FLAGS

    p = command(commands, "explain", cmd_explain, "one run shown stage by stage: tokens, time, memory, why each token")
    add_model_arg(p)
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; - reads standard input")
    p.add_argument("-n", "--max-tokens", type=positive_int, default=16, help="tokens to generate (default: 16)")
    p.add_argument("--raw", action="store_true", help="the prompt as is, without the chat template")
    p.add_argument("--system", metavar="TEXT", help="a system message (chat models)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema: pellucid/explain.py)")
    p.add_argument("--html", metavar="FILE", help="also write the report as one self-contained web page")
    p.add_argument("--ctx", type=positive_int, help="context window in tokens (default: min(model's, 4096))")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")
    add_quantize_arg(p)
    add_kv_type_args(p)
    add_chat_template_arg(p)
    group = p.add_argument_group("sampling")
    for flag, dest, kind, help in SAMPLING_FLAGS:
        group.add_argument(flag, dest=dest, type=kind, default=None, help=help)


def cmd_explain(args) -> int:
    """Run PROMPT once with MODEL, in this process (the run is timed part by part, which a server cannot
    show), and report what each stage did."""
    import pellucid
    from pellucid.cli.generate import SAMPLING_FLAGS
    from pellucid.explain import explain, format_report

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    llm = pellucid.load(args.model, device=args.device, ctx=args.ctx, quantize=args.quantize,
                        chat_template=read_chat_template(args), **kv_type_options(args))  # fmt: skip
    sampling = {dest: getattr(args, dest) for _, dest, _, _ in SAMPLING_FLAGS if getattr(args, dest) is not None}
    report = explain(llm, prompt, max_tokens=args.max_tokens, raw=args.raw, system=args.system, **sampling)
    if args.html:
        from pathlib import Path

        from pellucid.explain_html import render

        Path(args.html).write_text(render(report), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


COMMANDS = [_add_explain]
