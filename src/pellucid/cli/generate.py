"""Commands that run a model: run (one answer), chat (an interactive conversation), ppl (perplexity).

run and chat first look for a pellucid server that already holds the model (pellucid.servers: the same file,
loaded with the same --quantize, and the --ctx/--device asked for, if any) and send it the request over HTTP
(pellucid.client, no torch in this process): an answer in well under a second instead of a load and a
compile. --keep-alive starts such a server in the background when there is none; --local never uses one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from pellucid import servers, store
from pellucid.cli.common import (
    add_allow_disk_arg,
    add_chat_template_arg,
    add_kv_type_args,
    add_model_arg,
    add_quantize_arg,
    check_fits_in_ram,
    command,
    duration,
    format_duration,
    kv_type_options,
    kv_types_of,
    positive_int,
    print_json,
    read_chat_template,
    stream_to_stdout,
)
from pellucid.client import RemoteLLM, ServerGone
from pellucid.errors import PellucidError

# Sampling flags shared by run and chat: (flag, SamplingParams field, type, help). Defaults are llama.cpp's.
SAMPLING_FLAGS = [
    ("--temperature", "temperature", float, "0 = greedy (default 0.8)"),
    ("--top-k", "top_k", int, "keep the k most likely tokens; 0 = off (default 40)"),
    ("--top-p", "top_p", float, "keep the smallest set with this much probability; 1 = off (default 0.95)"),
    ("--min-p", "min_p", float, "drop tokens below min_p x the top probability; 0 = off (default 0.05)"),
    ("--typical-p", "typical_p", float, "locally typical sampling; 1 = off (default 1.0)"),
    ("--repeat-penalty", "repeat_penalty", float, "penalize recently seen tokens; 1 = off (default 1.0)"),
    ("--repeat-last-n", "repeat_last_n", int, "how many recent tokens the penalties see (default 64)"),
    ("--presence-penalty", "presence_penalty", float, "subtract from seen tokens' logits (default 0)"),
    ("--frequency-penalty", "frequency_penalty", float, "subtract count x this from seen tokens (default 0)"),
    ("--seed", "seed", int, "random seed: the same seed gives the same output (default: random)"),
]
SAMPLING_DESTS = {dest for _, dest, _, _ in SAMPLING_FLAGS}


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("sampling")
    for flag, dest, kind, help in SAMPLING_FLAGS:
        group.add_argument(flag, dest=dest, type=kind, default=None, help=help)
    group.add_argument("-n", "--max-tokens", type=int, default=None, help="stop after N tokens (default: no limit)")
    group.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop when the output contains TEXT (repeatable)"
    )
    group.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past end-of-text tokens (until -n or the context)"
    )
    model = p.add_argument_group("model")
    model.add_argument("--ctx", type=positive_int, help="context window in tokens (default: min(model's, 4096))")
    model.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")
    add_quantize_arg(model)
    add_kv_type_args(model)
    add_allow_disk_arg(model)
    add_chat_template_arg(model)
    server = p.add_argument_group("server")
    server.add_argument(
        "--local",
        "--no-server",
        action="store_true",
        help="load the model in this process, even when a running pellucid server holds it",
    )
    server.add_argument(
        "--keep-alive",
        type=duration,
        default=os.environ.get("PELLUCID_KEEP_ALIVE") or None,
        metavar="DURATION",
        help="if no server holds the model, start one in the background that exits after DURATION without a "
        "request (e.g. 5m; 0 = until stopped), and answer through it (default: $PELLUCID_KEEP_ALIVE; unset = "
        "answer in-process)",
    )


def _sampling(args) -> dict:
    """The sampling flags given, over the defaults that came with the model (an Ollama model's params)."""
    given = {dest: getattr(args, dest) for _, dest, _, _ in SAMPLING_FLAGS if getattr(args, dest) is not None}
    defaults = getattr(args, "model_defaults", None) or {}
    return {**{k: v for k, v in defaults.items() if k in SAMPLING_DESTS}, **given}


def _with_model_defaults(args) -> None:
    """--stop, -n and --system, when not given, from the model's own defaults (Ollama's stop, num_predict and
    system prompt), as Ollama applies them: a flag replaces the model's value rather than adding to it."""
    defaults = getattr(args, "model_defaults", None) or {}
    args.stop = args.stop or list(defaults.get("stop", []))
    if args.max_tokens is None:
        args.max_tokens = defaults.get("max_tokens")
    if getattr(args, "system", None) is None and not getattr(args, "raw", False):
        args.system = defaults.get("system")


def _load(args):
    """What answers: a running server that holds the model (RemoteLLM), else the model loaded here (LLM)."""
    resolved = store.resolve(args.model)
    args.model_defaults = resolved.defaults
    _with_model_defaults(args)
    template = read_chat_template(args)
    if not args.local and template is None:  # a server renders with its own template: load here instead
        remote = _remote(args, resolved)
        if remote is not None:
            return remote
    import pellucid

    check_fits_in_ram(args, resolved, args.ctx)
    return pellucid.load(
        resolved, device=args.device, ctx=args.ctx, quantize=args.quantize, chat_template=template,
        **kv_type_options(args),
    )  # fmt: skip


def _remote(args, resolved) -> RemoteLLM | None:
    options = {"ctx": args.ctx, "quantize": args.quantize, "device": args.device}
    found = servers.find(resolved.path, kv_types=kv_types_of(args), **options)
    if found is None and args.keep_alive is not None:
        spec = Path(args.model or store.DEFAULT_MODEL).expanduser()  # a name, or a path made absolute
        model = str(spec.resolve()) if spec.exists() else str(spec)
        found = servers.start(
            model, resolved.path, keep_alive=format_duration(args.keep_alive), kv_types=kv_types_of(args), **options
        )
    return RemoteLLM(*found, api_key=os.environ.get("PELLUCID_API_KEY")) if found else None


def _via(llm) -> str:
    """Which path answered, for the stats line."""
    if isinstance(llm, RemoteLLM):
        return f"via {llm.describe()}"
    return f"in-process, load {llm.load_seconds:.2f} s, KV cache {llm.kv_type_label}"


def _warn_base_model(llm) -> None:
    if not llm.has_chat_template:
        from pellucid.tokenizer.chat_template import NO_TEMPLATE_WARNING

        print(f"warning: {NO_TEMPLATE_WARNING}", file=sys.stderr)


# -- run ------------------------------------------------------------------------------------------------


def _add_run(commands) -> None:
    p = command(commands, "run", cmd_run, "answer one prompt (streamed), then print stats")
    add_model_arg(p)
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; - reads standard input")
    p.add_argument("--raw", action="store_true", help="complete the text as is, without the chat template")
    p.add_argument("--system", metavar="TEXT", help="a system message (chat models)")
    p.add_argument("--json", action="store_true", help='print {"text", "ids", "prompt_ids", "stop_reason", "stats"}')
    structured = p.add_argument_group("structured output (the answer is valid by construction)")
    structured.add_argument(
        "--json-schema",
        metavar="FILE|JSON",
        help='the answer is JSON valid against this JSON schema: a file, or the schema itself (\'{"type": "object"}\')',
    )
    structured.add_argument(
        "--grammar", metavar="FILE", help="the answer matches this GBNF (llama.cpp) or Lark grammar"
    )
    _add_generation_args(p)


def cmd_run(args) -> int:
    """Answer PROMPT with MODEL. Chat models get their chat template (use --raw for plain completion); the
    answer streams to stdout and a stats line follows on stderr. --json-schema / --grammar constrain it."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    args.constraint = _output_constraint(args)
    llm = _load(args)
    try:
        generation = _answer(llm, args, prompt)
    except ServerGone as e:  # it exited between our look and our request: answer without it
        print(f"warning: {e}; answering in-process", file=sys.stderr)
        args.local = True
        llm = _load(args)
        generation = _answer(llm, args, prompt)
    if args.json:
        result = generation.result().as_dict()
        if isinstance(llm, RemoteLLM):
            result["stats"]["server"] = llm.describe()
        else:
            result["stats"]["load_s"] = round(llm.load_seconds, 3)
        print_json(result)
        return 0
    try:
        stream_to_stdout(generation)
    finally:
        print(f"[{generation.stats.summary()}; {_via(llm)}]", file=sys.stderr)
    return 0


def _output_constraint(args) -> dict:
    """{"schema": ...} or {"grammar": text} from --json-schema / --grammar (read and checked here: a bad
    schema is an error before any model loads)."""
    if args.json_schema and args.grammar:
        raise PellucidError("give --json-schema or --grammar, not both")
    if args.json_schema:
        text = args.json_schema
        if not text.lstrip().startswith(("{", "true")):
            text = _read_text(text, "--json-schema")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise PellucidError(f"--json-schema is neither a file nor valid JSON: {e}") from None
        from pellucid.engine.constrain import Grammar

        Grammar.json_schema(schema).compile()  # GrammarError names what is wrong
        return {"schema": schema}
    if args.grammar:
        from pellucid.engine.constrain import Grammar

        text = _read_text(args.grammar, "--grammar")
        Grammar.from_grammar_text(text).compile()
        return {"grammar": text}
    return {}


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PellucidError(f"{flag}: cannot read {path}: {e.strerror or e}") from None


def _answer(llm, args, prompt: str):
    kwargs = {"max_tokens": args.max_tokens, "stop": args.stop, "ignore_eos": args.ignore_eos, **_sampling(args)}
    kwargs.update(getattr(args, "constraint", None) or {})
    if args.raw:
        return llm.generate(prompt, **kwargs)
    _warn_base_model(llm)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}
    ]
    return llm.chat(messages, **kwargs)


# -- chat -----------------------------------------------------------------------------------------------

CHAT_HELP = """Commands:
  /system TEXT      set the system message (and start over)
  /reset            forget the conversation
  /set NAME VALUE   change a sampling option, e.g. /set temperature 0.7 (/set alone lists them)
  /stats            stats of the last answer, and how full the context is
  /quit             leave (also /exit, /bye, Ctrl-D)
Ctrl-C stops an answer; \"\"\" starts and ends a multi-line message."""


def _add_chat(commands) -> None:
    p = command(commands, "chat", cmd_chat, "talk with a model in the terminal")
    add_model_arg(p)
    p.add_argument("--system", metavar="TEXT", help="a system message")
    _add_generation_args(p)


def cmd_chat(args) -> int:
    """An interactive chat with multi-turn history. Each turn reuses the KV cache of the conversation so
    far and runs only the new tokens through the model. Type /help for commands."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    llm = _load(args)
    _warn_base_model(llm)
    state = _ChatState(llm, _sampling(args), args.system, args.max_tokens, args.stop)
    state.ignore_eos = args.ignore_eos
    state.reconnect = lambda: _load(args)
    via = f", via {llm.describe()}" if isinstance(llm, RemoteLLM) else ""
    print(f"{llm.name} on {llm.device}, context {llm.ctx:,} tokens{via}. /help for commands, /quit to leave.")
    while True:
        try:
            line = _read_message()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(use /quit or Ctrl-D to leave)")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if state.command(line.strip()) == "quit":
                return 0
            continue
        state.answer(line)


def _read_message() -> str:
    line = input(">>> ")
    if not line.strip().startswith('"""'):
        return line
    lines = [line.strip()[3:]]  # a multi-line message, as in Ollama: """ ... """
    while not lines[-1].rstrip().endswith('"""'):
        lines.append(input("... "))
    lines[-1] = lines[-1].rstrip()[:-3]
    return "\n".join(lines).strip()


class _CtrlC:
    """Ctrl-C while an answer streams: the first press sets a flag the token loop checks, the second raises
    KeyboardInterrupt at once. Why a flag and not just KeyboardInterrupt: Python delivers the exception
    wherever the main thread happens to be, and when that is a finalizer or a callback inside torch it is
    printed as "Exception ignored" and lost, so the answer ran on (seen on CI). A flag cannot be lost."""

    def __init__(self):
        self.pressed = False
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (an embedding program): plain KeyboardInterrupt then
            self._previous = None

    def _on_sigint(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _ChatState:
    """The conversation and settings of one `pellucid chat`. The conversation is kept here, and each turn
    sends all of it: the model's KV cache (in this process, or in the server's slot) still holds the turns
    before, so only the new tokens run through the model."""

    def __init__(self, llm, sampling: dict, system: str | None, max_tokens: int | None, stop: list[str]):
        self.llm = llm
        self.sampling = sampling
        self.system = system
        self.max_tokens = max_tokens
        self.stop = stop
        self.messages: list[dict] = []
        self.last = None
        self.ignore_eos = False
        self.reconnect = None  # () -> a model to answer with, when the server we used has gone

    def history(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def answer(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        try:
            try:
                generation = self._ask()
            except ServerGone as e:  # e.g. its --keep-alive ran out while we were idle: find or start another
                if self.reconnect is None:
                    raise
                print(f"({e}; reconnecting)")
                self.llm = self.reconnect()
                generation = self._ask()
        except PellucidError as e:  # e.g. the conversation no longer fits the context
            self.messages.pop()
            print(f"error: {e}")
            return
        stop = _CtrlC()
        try:
            for chunk in generation:
                print(chunk.text, end="", flush=True)
                if stop.pressed:
                    print(" [stopped]", end="")
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one that reached us before the handler was set
            print(" [stopped]", end="")
        finally:
            stop.restore()
            generation.close()
            print()
        self.messages.append({"role": "assistant", "content": generation.text})
        self.last = generation

    def _ask(self):
        return self.llm.chat(
            self.history(), max_tokens=self.max_tokens, stop=self.stop, ignore_eos=self.ignore_eos, **self.sampling
        )

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        name, rest = name.lower(), rest.strip()
        if name in ("/quit", "/exit", "/bye"):
            return "quit"
        if name == "/help":
            print(CHAT_HELP)
        elif name == "/reset":
            self.messages = []
            self.llm.reset()
            print("(conversation cleared)")
        elif name == "/system":
            self.system = rest or None
            self.messages = []
            print("(system message set; conversation cleared)" if rest else "(system message removed)")
        elif name == "/set":
            self._set(rest)
        elif name == "/stats":
            self._stats()
        else:
            print(f"unknown command {name}; /help lists them")
        return None

    def _set(self, rest: str) -> None:
        from dataclasses import fields

        from pellucid.engine.sampling import SamplingParams, SamplingParamsError

        known = {f.name: f for f in fields(SamplingParams) if f.name != "logprobs"}
        parts = rest.split()
        if len(parts) != 2:
            current = {**{n: f.default for n, f in known.items()}, **self.sampling}
            print("\n".join(f"  {n} = {v}" for n, v in current.items()) + "\n  max_tokens = " + str(self.max_tokens))
            return
        name, value = parts[0].replace("-", "_"), parts[1]
        if name == "max_tokens":
            self.max_tokens = None if value in ("none", "-1") else int(value)
            return
        if name not in known:
            print(f"unknown option {name}; options: {', '.join(known)}, max_tokens")
            return
        try:
            parsed = (
                None if value.lower() == "none" else (int(value) if known[name].type in (int, "int") else float(value))
            )
            if name in ("top_k", "repeat_last_n", "seed", "min_keep") and parsed is not None:
                parsed = int(parsed)
            SamplingParams(**{**self.sampling, name: parsed})  # validate before keeping it
        except (ValueError, SamplingParamsError) as e:
            print(f"error: {e}")
            return
        self.sampling[name] = parsed
        print(f"({name} = {parsed})")

    def _stats(self) -> None:
        if isinstance(self.llm, RemoteLLM):  # what the conversation takes in the server's context
            used = self.last.stats.prompt_tokens + self.last.stats.generated_tokens if self.messages else 0
            print(f"context: {used:,} of {self.llm.ctx:,} tokens in the conversation, {_via(self.llm)}")
        else:
            print(f"context: {len(self.llm.session.tokens):,} of {self.llm.ctx:,} tokens in the KV cache")
        if self.last is not None:
            print(self.last.stats.summary())


# -- ppl ------------------------------------------------------------------------------------------------


def _add_ppl(commands) -> None:
    p = command(commands, "ppl", cmd_ppl, "perplexity of a model on a text file")
    add_model_arg(p)
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file")
    p.add_argument("--ctx", type=positive_int, default=512, help="window size in tokens (default 512)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")
    add_quantize_arg(p)
    add_kv_type_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_ppl(args) -> int:
    """Perplexity over FILE, as llama-perplexity computes it: the text is cut into consecutive windows of
    --ctx tokens, each evaluated from scratch (its first token replaced by BOS when the model uses one), and
    only the second half of each window is scored, so every scored token sees at least ctx/2 tokens of
    context. Prints ppl with its ± (the standard error of the mean NLL, carried through exp)."""
    from pellucid.engine.perplexity import perplexity
    from pellucid.model import load_model
    from pellucid.progress import ProgressBar
    from pellucid.tokenizer import load_tokenizer

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise PellucidError(f"{args.file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    kv_types = kv_types_of(args)
    resolved = store.resolve(args.model)
    model = load_model(resolved, device=args.device, quantize=args.quantize)
    model.kv_type_k, model.kv_type_v = kv_types
    if args.ctx > model.config.context_length:
        raise PellucidError(f"--ctx {args.ctx} exceeds the model's context length {model.config.context_length}")
    model.use_context(args.ctx)
    tok = load_tokenizer(resolved)
    ids = tok.encode(text, add_special=True)
    n_windows = len(ids) // args.ctx
    started = time.perf_counter()
    with ProgressBar(n_windows, f"ppl over {n_windows} windows of {args.ctx}", unit="windows") as bar:
        result = perplexity(
            model, ids, args.ctx, bos_id=tok.bos_id if tok.add_bos else None, progress=lambda done, total: bar.update()
        )
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "model": resolved.name,
                    "file": args.file,
                    "ctx": args.ctx,
                    "kv_types": list(kv_types),
                    "ppl": result.ppl,
                    "ppl_stderr": result.ppl_stderr,
                    "n_windows": result.n_windows,
                    "n_scored": result.n_scored,
                    "n_tokens": len(ids),
                    "seconds": round(seconds, 2),
                    "tok_s": round(result.n_windows * args.ctx / seconds, 1),
                }
            )
        )
    else:
        print(
            f"ppl = {result.ppl:.4f} ± {result.ppl_stderr:.4f}  ({result.n_windows} windows of {args.ctx} tokens, "
            f"{result.n_scored:,} scored of {len(ids):,}; KV cache {'/'.join(dict.fromkeys(kv_types))}; "
            f"{result.n_windows * args.ctx / seconds:.0f} tok/s)"
        )
    return 0


COMMANDS = [_add_run, _add_chat, _add_ppl]
