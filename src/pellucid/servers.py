"""The pellucid servers running on this machine: a registry of small JSON files, one per server, so that
`pellucid run` and `chat` can hand a request to a server that already holds the model instead of loading it
themselves (what Ollama does; loading and compiling cost seconds, an HTTP request milliseconds).

    $PELLUCID_HOME/servers/12345.json     {"pid": 12345, "host": "127.0.0.1", "port": 8123,
                                           "models": [{"name": "smollm2-135m", "path": "/.../x.gguf",
                                                       "ctx": 4096, "quantize": null, "device": "cpu", ...}],
                                           "api_key": false, "arithmetic": {"exact": false, "compile": true},
                                           "started_at": ..., ...}

`pellucid serve` writes its entry once it is ready (`register`) and removes it when it exits (`unregister`).
A client reads the entries (`find`), deleting those whose process is gone or whose /health does not answer
(a server killed with SIGKILL leaves its file behind). `start` launches `pellucid serve --keep-alive` in the
background for `run --keep-alive`. Standard library only: `run` must not pay for importing torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pellucid import __version__
from pellucid.arithmetic import compile_requested, exact_requested
from pellucid.errors import PellucidError
from pellucid.paths import servers_dir

HEALTH_TIMEOUT_S = 2.0  # a live server answers /health in milliseconds, even while it generates
START_TIMEOUT_S = 600.0  # loading + warming up; the first torch.compile on a slow machine takes minutes
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Entry:
    """One running server, as its registry file describes it."""

    file: Path
    pid: int
    host: str  # where it listens
    port: int
    models: list[dict]  # {"name", "kind", "path", "ctx", "quantize", "device", "chat_template"}
    api_key: bool  # requests need `Authorization: Bearer KEY`
    arithmetic: dict  # what its environment asked for: see arithmetic()
    version: str
    started_at: float
    keep_alive_s: float | None  # exits after this long without a request; None = until stopped

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches it (a wildcard address listens on loopback too)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    @property
    def address(self) -> str:
        host = self.connect_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def describe(self) -> str:
        return f"pellucid server {self.address} (pid {self.pid})"


# -- the server's side ------------------------------------------------------------------------------------


def register(info: dict) -> Path:
    """Write this process's entry (`info`: the Entry fields but file and pid); returns the file to remove.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    folder = servers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "version": __version__, **info}, indent=2))
    os.replace(tmp, path)
    return path


def unregister(path: Path) -> None:
    path.unlink(missing_ok=True)


# -- the client's side ------------------------------------------------------------------------------------


def entries() -> list[Entry]:
    """The registered servers whose process is alive; the files of dead ones (and unreadable ones) go."""
    folder = servers_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            entry = Entry(
                file=path,
                pid=int(data["pid"]),
                host=data["host"],
                port=int(data["port"]),
                models=list(data["models"]),
                api_key=bool(data.get("api_key")),
                arithmetic=dict(data["arithmetic"]),
                version=data.get("version", ""),
                started_at=float(data.get("started_at", 0)),
                keep_alive_s=data.get("keep_alive_s"),
            )
        except FileNotFoundError:  # it exited while we looked
            continue
        except (ValueError, KeyError, TypeError):  # not an entry we can read (another version's, a stray file)
            path.unlink(missing_ok=True)
            continue
        if _alive(entry.pid):
            found.append(entry)
        else:
            path.unlink(missing_ok=True)
    return found


def find(
    model_path: Path,
    *,
    ctx: int | None = None,
    quantize: str | None = None,
    device: str | None = None,
    kv_types: tuple[str, str] | None = None,
):
    """A healthy registered server that holds the model file `model_path` loaded as this process would load
    it, as (Entry, its model's dict); None if there is none.

    Compatible means: the same file; the same --quantize (none = none), KV cache types (when given), arithmetic()
    and pellucid version,
    since those change the numbers; and --ctx / --device only where the caller gives them. A server that does
    not answer /health is forgotten (its file deleted)."""
    wanted = os.path.realpath(model_path)
    for entry in sorted(entries(), key=lambda e: -e.started_at):  # the newest first
        if entry.version != __version__ or entry.arithmetic != arithmetic():
            continue
        model = next((m for m in entry.models if m.get("kind") == "chat" and m.get("path") == wanted), None)
        if model is None or model.get("quantize") != quantize:
            continue
        if ctx is not None and model.get("ctx") != ctx:
            continue
        if kv_types is not None and tuple(model.get("kv_types", kv_types)) != tuple(kv_types):
            continue
        if device is not None and not _same_device(device, str(model.get("device"))):
            continue
        if healthy(entry):
            return entry, model
    return None


def arithmetic() -> dict:
    """What this process's environment asks of the arithmetic (pellucid.arithmetic): exact mode (--exact:
    float32 everywhere) and compiling. A server asked for something else would not give the answer this
    process would."""
    return {"exact": exact_requested(), "compile": compile_requested()}


def healthy(entry: Entry) -> bool:
    """Whether the server answers GET /health with "ok"; one that does not answer at all is unregistered (a
    process that took over a dead server's pid, a server stuck for good)."""
    conn = http.client.HTTPConnection(entry.connect_host, entry.port, timeout=HEALTH_TIMEOUT_S)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):  # refused, timed out, or not HTTP at all
        unregister(entry.file)
        return False
    finally:
        conn.close()
    try:
        return response.status == 200 and json.loads(body).get("status") == "ok"
    except ValueError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _same_device(given: str, served: str) -> bool:
    """--device cuda is cuda:0 (the first GPU), as torch reads it."""
    return given == served or (":" not in given and served == f"{given}:0")


# -- starting one (run/chat --keep-alive) -----------------------------------------------------------------


def start(model: str, model_path: Path, *, keep_alive: str, ctx=None, quantize=None, device=None, kv_types=None):
    """Start `pellucid serve MODEL --port 0 --keep-alive KEEP_ALIVE --parallel 1 [--ctx/--quantize/--device]`
    in the background and wait until it is registered and healthy; returns (Entry, model dict) as `find` does.

    The server gets its own session (no terminal: closing this one does not stop it, Ctrl-C here does not
    reach it) and writes its log to servers/MODEL.log. One `--parallel` slot: it warms up (compiles) the
    single-sequence decode step only, the quickest start. A lock makes a second client that arrives meanwhile
    wait for this server instead of starting another."""
    folder = servers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / "start.lock"):
        options = {"ctx": ctx, "quantize": quantize, "device": device}
        found = find(model_path, kv_types=kv_types, **options)
        if found is not None:  # another client started one while we waited for the lock
            return found
        log_path = folder / f"{Path(model).name}.log"
        command = [sys.executable, "-m", "pellucid", "serve", model, "--port", "0", "--keep-alive", keep_alive,
                   "--parallel", "1"]  # fmt: skip
        command += [arg for name, value in options.items() if value is not None for arg in (f"--{name}", str(value))]
        if kv_types is not None:
            command += ["-ctk", kv_types[0], "-ctv", kv_types[1]]
        print(
            f"starting a pellucid server for {Path(model).name} in the background (keep-alive {keep_alive}; "
            f"log: {log_path})",
            file=sys.stderr,
            flush=True,
        )
        with open(log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return _wait_until_ready(process, log_path, model_path, kv_types=kv_types, **options)


def _wait_until_ready(process: subprocess.Popen, log_path: Path, model_path: Path, **options):
    entry_file = servers_dir() / f"{process.pid}.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise PellucidError(
                f"the background server exited (code {code}) before it was ready; the end of its log "
                f"({log_path}):\n{_tail(log_path)}"
            )
        if entry_file.exists():
            found = find(model_path, **options)
            if found is not None and found[0].pid == process.pid:
                return found
        time.sleep(0.1)
    process.terminate()
    raise PellucidError(
        f"the background server was not ready after {START_TIMEOUT_S:.0f} s, so it was stopped; see its log "
        f"({log_path}), or run in-process with --local"
    )


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
