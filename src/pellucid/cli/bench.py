"""Benchmark commands: bench (speed against peers, llama-bench style; --machine: this machine's limits)."""

from __future__ import annotations

import sys

from pellucid import store
from pellucid.cli.common import (
    add_allow_disk_arg,
    add_kv_type_args,
    add_model_arg,
    add_quantize_arg,
    check_fits_in_ram,
    command,
    kv_types_of,
    positive_int,
    print_json,
)


def _add_bench(commands) -> None:
    p = command(commands, "bench", cmd_bench, "prompt and generation speed, load time, peak memory (vs peers)")
    add_model_arg(p)
    p.add_argument("--pp", type=positive_int, default=512, help="prompt tokens per prefill pass (default: 512)")
    p.add_argument("--tg", type=positive_int, default=128, help="tokens generated per decode run (default: 128)")
    p.add_argument("--reps", type=positive_int, default=5, help="timed repetitions of each (default: 5)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for every engine (default: physical cores)")
    p.add_argument(
        "--compare",
        metavar="PEERS",
        default="",
        help="comma-separated peers to run on the same file: llama.cpp, transformers",
    )
    p.add_argument(
        "--ctx-fill",
        metavar="N",
        type=positive_int,
        help="decode tgN after N tokens of context are filled (with pellucid's and llama.cpp's KV cache at "
        "--kv-type / -ctk / -ctv, default f32)",
    )
    p.add_argument(
        "--constrained",
        action="store_true",
        help="also decode tgN free and with a JSON schema: what constrained decoding's mask costs",
    )
    p.add_argument(
        "--machine",
        action="store_true",
        help="measure this machine's limits instead (memory bandwidth, matrix-multiply GFLOP/s) and cache them",
    )
    add_quantize_arg(p)
    add_kv_type_args(p)
    add_allow_disk_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def cmd_bench(args) -> int:
    """Measure MODEL the way llama-bench does: ppN (a prompt of N tokens in one pass) and tgN (N decode
    steps) in tokens per second, median ± spread over --reps after a warm-up, plus load time and peak RSS.
    pellucid and each peer run in their own fresh process with the same number of threads. --ctx-fill N: decode
    after N tokens of context instead, the KV cache stored as the cache-type flags say, beside llama.cpp's."""
    from pellucid.bench import check_ctx_fill, format_report, run_bench
    from pellucid.device import physical_cores

    threads = args.threads or physical_cores()
    if args.machine:
        return _machine(threads, args.json)
    resolved = store.resolve(args.model)
    if args.ctx_fill:
        check_ctx_fill(resolved.path, args.ctx_fill, args.tg)  # before the RAM check, which would plan for it
    check_fits_in_ram(args, resolved, args.ctx_fill + args.tg if args.ctx_fill else max(args.pp, args.tg) + 1)
    compare = [p.strip() for p in args.compare.split(",") if p.strip()]
    log = (lambda line: print(line, file=sys.stderr)) if not args.json else None
    report = run_bench(
        resolved.name,
        resolved.path,
        pp=args.pp,
        tg=args.tg,
        reps=args.reps,
        threads=threads,
        compare=compare,
        log=log,
        quantize=args.quantize,
        constrained=args.constrained,
        ctx_fill=args.ctx_fill,
        kv_types=kv_types_of(args),
    )
    if args.json:
        print_json(report.as_dict())
    else:
        print(format_report(report))
    return 0


def _machine(threads: int, as_json: bool) -> int:
    """`bench --machine`: measure memory bandwidth and matmul throughput on `threads` threads (pellucid.machine
    says how), cache them in $PELLUCID_HOME/machine.json for the reports that compare a run against them."""
    from pellucid import machine

    if not as_json:
        print(f"measuring this machine on {threads} threads (a few seconds) ...", file=sys.stderr)
    limits = machine.measure(threads)
    if as_json:
        print_json(limits.as_dict())
    else:
        print(machine.describe(limits))
    return 0


COMMANDS = [_add_bench]
