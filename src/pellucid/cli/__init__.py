"""The `pellucid` command line: argument parsing and printing only; every command calls the library.

Commands live in modules by topic (models.py: pull, list, rm, inspect, tokenize, fit; quantize.py: quantize;
generate.py: run, chat, ppl). Each command is a parser stanza `_add_<name>(commands)`, which starts with `command(commands,
NAME, cmd_<name>, HELP)` and adds the command's arguments, and a `cmd_<name>(args) -> int` that calls library
code and prints. To add a command, write both and list the stanza in its module's `COMMANDS`.

Errors: a `PellucidError` (bad input, unknown model, corrupt file) prints `error: <message>` and exits 1
without a traceback (`--debug` shows it); Ctrl-C exits 130; anything else is a bug in pellucid and prints
the traceback with a line saying so (exit 70, EX_SOFTWARE).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from pellucid import __version__
from pellucid.cli import bench, explain, generate, models, quantize, rag, serve
from pellucid.cli.common import COMMON
from pellucid.errors import PellucidError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 70  # sysexits.h EX_SOFTWARE: an internal error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


# -- the parser and the error policy --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pellucid", description="A local LLM runtime you can see through.", parents=[COMMON]
    )
    parser.add_argument("--version", action="version", version=f"pellucid {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    modules = (models, quantize, generate, explain, bench, serve, rag)
    for add in [stanza for module in modules for stanza in module.COMMANDS]:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has already explained
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    if getattr(args, "exact", False):
        os.environ["PELLUCID_EXACT"] = "1"  # read when the first product runs; inherited by any server we start
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `pellucid list | head`: the reader left; nothing more to say
        # Point stdout at /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except PellucidError as e:
        return _report(e, str(e), debug)
    except OSError as e:  # permissions, a full disk: the machine's state, not a bug in pellucid
        where = f": {e.filename}" if e.filename else ""
        return _report(e, f"{e.strerror or e}{where}", debug)
    except Exception:
        print(
            f"error: this is a bug in pellucid {__version__}; please report it with the traceback below.",
            file=sys.stderr,
        )
        traceback.print_exc()
        return EXIT_BUG


def _report(exc: BaseException, message: str, debug: bool) -> int:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    first, *rest = message.splitlines() or [""]
    print(f"error: {first}", file=sys.stderr)
    for line in rest:  # continuation lines (e.g. the list of known models) indented under the error
        print(f"  {line}", file=sys.stderr)
    return EXIT_ERROR
