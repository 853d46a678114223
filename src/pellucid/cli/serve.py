"""The server command: serve (OpenAI- and Anthropic-compatible HTTP API and web chat page).

Once it is ready the server registers itself in $PELLUCID_HOME/servers/ (pellucid.servers), so that `pellucid
run` and `chat` hand their requests to it instead of loading the model again, and removes its entry when it
exits: at Ctrl-C, SIGTERM, SIGHUP, or after --keep-alive without a request.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
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
    positive_int,
    read_chat_template,
)
from pellucid.errors import PellucidError, UnsupportedError

log = logging.getLogger("pellucid.server")

DEFAULT_PARALLEL = 4  # llama-server's default number of slots
DEFAULT_MAX_QUEUE = 64


def _add_serve(commands) -> None:
    p = command(commands, "serve", cmd_serve, "serve a model over HTTP: OpenAI and Anthropic APIs and a chat page")
    add_model_arg(p)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one (default 8080)")
    net.add_argument(
        "--api-key",
        default=os.environ.get("PELLUCID_API_KEY"),
        help="require this key from clients (default: $PELLUCID_API_KEY, else no key)",
    )
    net.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another name for `model` (repeatable); '*' answers any name, for clients that send their own "
        "model names (Claude Code)",
    )
    net.add_argument(
        "--keep-alive",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="exit after this long without a request, e.g. 30s, 5m, 1h (default 0: run until stopped)",
    )
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--parallel", type=positive_int, default=DEFAULT_PARALLEL, help="sequences generated at once (default 4)"
    )
    eng.add_argument(
        "--ctx", type=positive_int, help="context of each sequence in tokens (default: min(model's, 4096))"
    )
    eng.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests that may wait for a free slot; more are refused with 429 (default 64)",
    )
    eng.add_argument(
        "--prefill-chunk",
        type=positive_int,
        help="prompt tokens per step while other sequences decode: smaller keeps their streams smoother, larger "
        "prefills long prompts sooner (default 128)",
    )
    eng.add_argument(
        "--no-cont-batching",
        dest="batch_decode",
        action="store_false",
        help="decode the active sequences one after another instead of in one batched step (for comparison)",
    )
    eng.add_argument("--embed", metavar="MODEL", help="also serve this embedding model on /v1/embeddings")
    eng.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")
    add_quantize_arg(eng)
    add_kv_type_args(eng)
    add_allow_disk_arg(eng)
    add_chat_template_arg(eng)


def _off_the_main_thread(fn):
    """fn() run on a short-lived thread; its result, or its exception re-raised here.

    Why: once the main thread has run an OpenMP-parallel torch op, the compiled kernels run 2-3x slower on
    every other thread (measured: SmolLM2 decode 43 vs 92 tok/s), and the model runs on the scheduler's
    worker thread. So the first torch work (loading, warming up) happens on a thread that then exits, and
    the main thread only serves HTTP.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the main thread, which reports it as usual
            outcome["error"] = e

    thread = threading.Thread(target=target, name="pellucid-setup", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def cmd_serve(args) -> int:
    """Serve MODEL over HTTP until Ctrl-C: the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models,
    /v1/embeddings), the Anthropic Messages API (/v1/messages), Prometheus metrics (/metrics) and a chat page
    (/). --parallel sequences generate at once, each with its own KV cache of --ctx tokens."""
    import uvicorn

    from pellucid.server import Backend, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.max_queue < 0:
        raise PellucidError(f"--max-queue must be 0 or more, not {args.max_queue}")
    sock = _bind(args.host, args.port)  # before loading, so a busy port fails at once

    def set_up() -> Backend:
        llm, embedder = _load_models(args)
        backend = Backend(
            llm,
            embedder=embedder,
            n_slots=args.parallel,
            max_queue=args.max_queue,
            **({"prefill_chunk": args.prefill_chunk} if args.prefill_chunk else {}),
            batch_decode=args.batch_decode,
            aliases=tuple(args.alias),
        )
        log.info("warming up (the first forward passes are slow)")
        backend.warm_up()
        return backend

    backend = _off_the_main_thread(set_up)
    app = create_app(backend, api_key=args.api_key)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3))
    entry = servers.register(_registry_info(backend, args, host, port))
    try:
        _unregister_on_signals(entry)
        _announce(backend, args, f"http://{f'[{host}]' if ':' in host else host}:{port}")
        if args.keep_alive > 0:
            _exit_when_idle(server, app.state.activity, args.keep_alive, entry)
        server.run(sockets=[sock])
    finally:
        servers.unregister(entry)
    return 0


def _registry_info(backend, args, host: str, port: int) -> dict:
    """What `pellucid run` needs to know to hand a request to this server (pellucid.servers.Entry)."""
    models = []
    for model in backend.models:
        info = {"name": model.name, "kind": model.kind}
        if model.kind == "chat":
            llm = backend.llm
            info |= {
                "path": os.path.realpath(llm.resolved.path),
                "ctx": llm.ctx,
                "quantize": args.quantize,
                "kv_types": list(llm.kv_types),
                "device": str(llm.device),
                "chat_template": llm.has_chat_template,
            }
        models.append(info)
    return {
        "host": host,
        "port": port,
        "models": models,
        "api_key": bool(args.api_key),
        "arithmetic": servers.arithmetic(),
        "started_at": time.time(),
        "keep_alive_s": args.keep_alive or None,
    }


def _unregister_on_signals(entry: Path) -> None:
    """SIGTERM and SIGHUP remove the registry entry, then end the process as they would have. (uvicorn
    catches SIGTERM while it serves, shuts down gracefully, then raises it again: this handler runs then.)
    Ctrl-C raises KeyboardInterrupt, which cmd_serve's `finally` handles."""

    def on_signal(signum, frame):
        servers.unregister(entry)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)


def _exit_when_idle(server, activity, seconds: float, entry: Path) -> None:
    """--keep-alive: a thread that stops the server once no request has come for `seconds`. The entry goes
    first, so that no client picks a server that is shutting down."""

    def watch() -> None:
        while not server.should_exit:
            idle = activity.idle_s()
            if idle >= seconds:
                log.info("no request for %s (--keep-alive): exiting", format_duration(seconds))
                servers.unregister(entry)
                server.should_exit = True
                return
            time.sleep(min(1.0, seconds - idle + 0.01))

    threading.Thread(target=watch, name="pellucid-keep-alive", daemon=True).start()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = "pick another with --port (0 = any free port)" if e.errno == 98 else "check --host"
        raise PellucidError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    sock.listen(2048)
    return sock


def _load_models(args):
    """The text-generation model and the embedding model (--embed); MODEL itself may be an embedding model."""
    import pellucid

    resolved = store.resolve(args.model)
    llm = embedder = None
    check_fits_in_ram(args, resolved, args.ctx)
    try:
        llm = pellucid.load(resolved, device=args.device, ctx=args.ctx, quantize=args.quantize,
                            chat_template=read_chat_template(args), **kv_type_options(args))  # fmt: skip
    except UnsupportedError as e:
        embedder = _try_embedder(resolved, args.device)  # e.g. `pellucid serve minilm-l6`
        if embedder is None:
            raise e from None
    if args.embed:
        if embedder is not None:
            raise PellucidError("MODEL is an embedding model already; --embed adds one to a text-generation model")
        embedder = _load_embedder(store.resolve(args.embed), args.device)
    return llm, embedder


def _try_embedder(resolved, device):
    try:
        return _load_embedder(resolved, device)
    except PellucidError:
        return None


def _load_embedder(resolved, device):
    try:
        from pellucid.engine.embed import load_embedder
    except ImportError:
        raise PellucidError(
            f"cannot serve {resolved.name} for embeddings: this pellucid has no embedding engine yet"
        ) from None
    return load_embedder(resolved, device=device)


def _announce(backend, args, url: str) -> None:
    from pellucid.memory import format_bytes, kv_cache_bytes, kv_label

    for model in backend.models:
        log.info("serving %s (%s) as %s", model.name, model.kind, ", ".join(sorted(model.aliases)))
    if backend.llm is not None:
        llm = backend.llm
        kv_type = kv_label(*llm.kv_types)
        kv = kv_cache_bytes(llm.config, llm.ctx, kv_type) * args.parallel
        log.info(
            "%d slots x %s tokens of context (KV caches: %s in %s), queue up to %d, on %s",
            args.parallel,
            f"{llm.ctx:,}",
            format_bytes(kv),
            kv_type,
            args.max_queue,
            llm.device,
        )
    if not args.api_key and not _is_loopback(args.host):
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    log.info("chat page: %s/   OpenAI: %s/v1   Anthropic: %s   metrics: %s/metrics", url, url, url, url)
    print(f"pellucid: listening on {url}", file=sys.stderr, flush=True)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


COMMANDS: list = [_add_serve]
