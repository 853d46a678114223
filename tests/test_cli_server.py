"""`pellucid run` and `chat` through a running server (pellucid.servers, pellucid.client): real server
processes, real HTTP, the client run as a user runs it.

The oracle: the same command answered in-process. Greedy text is checked against llama.cpp's reply, which
the in-process path gives too (test_cli_generate.py); a seeded, sampled `--json` run is compared in full
with an in-process run of the same flags (a lone request on the server decodes with the same
single-sequence step as in-process, so the numbers, and the ids, are the same). Every client here runs under
a wrapper that fails if torch was imported: the point of the server path is not to pay for it.

The shared SmolLM2 server (conftest's `smollm2_server`: --ctx 512, 4 slots) answers most tests; the
keep-alive test starts its own with --ctx 256, which the shared one does not match. The tests' registry is a
temporary folder of their own ($PELLUCID_SERVERS, set in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from pellucid import __version__, servers
from pellucid.cli.common import duration, format_duration
from test_cli import assert_user_error, run

SMOLLM2 = "smollm2-135m-instruct-q4_1"
TORCH_IMPORTED = 99
CLIENT = (
    "import sys; from pellucid.cli import main; code = main(sys.argv[1:]); "
    f"torch = 'torch' in sys.modules; torch and print('torch was imported', file=sys.stderr); "
    f"sys.exit({TORCH_IMPORTED} if torch else code)"
)


def client(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pellucid ARGS` in a fresh process that must not import torch (exit code TORCH_IMPORTED if it does)."""
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode != TORCH_IMPORTED, proc.stderr
    return proc


def stats_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_run_through_the_server_gives_the_in_process_answer(smollm2_server, smollm2_path, reference):
    pid = smollm2_server.proc.pid
    chat = reference[SMOLLM2]["chat"][0]
    proc = client("run", str(smollm2_path), chat["messages"][0]["content"], "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == chat["reply"]
    line = stats_line(proc)
    assert line.startswith("[") and "prompt tokens" in line and "stopped: stop (token" in line
    assert f"via pellucid server {smollm2_server.url.removeprefix('http://')} (pid {pid})]" in line

    greedy = reference[SMOLLM2]["greedy"][3]  # "1, 2, 3, 4, 5,": --raw goes to /v1/completions
    args = ("run", str(smollm2_path), "-", "--raw", "--json", "--temperature", "0", "-n", "6")
    out = json.loads(client(*args, stdin=greedy["prompt"]).stdout)
    assert out["prompt_ids"] == greedy["prompt_ids"] and out["ids"] == greedy["greedy_ids"][:6]
    assert out["stop_reason"] == "length" and out["stats"]["generated_tokens"] == 6
    assert out["stats"]["server"] == f"pellucid server {smollm2_server.url.removeprefix('http://')} (pid {pid})"

    proc = client("run", str(smollm2_path), "1, 2, 3, 4, 5,", "--raw", "--temperature", "0", "--stop", " 8", "-n", "20")
    assert proc.returncode == 0 and proc.stdout == " 6, 7,\n"  # what test_cli_generate gets in-process
    assert "stopped: stop (stop string ' 8')" in proc.stderr


def test_run_json_matches_in_process_with_sampling_flags(smollm2_server, smollm2_path):
    """Seeded sampling, a system message, penalties, --ignore-eos and -n: the same ids either way."""
    args = ["run", str(smollm2_path), "Tell me a story.", "--system", "You are terse.", "--seed", "7",
            "--temperature", "1.2", "--top-k", "20", "--repeat-penalty", "1.1", "--ignore-eos", "-n", "16", "--json"]  # fmt: skip
    local = run(*args, "--local")
    remote = client(*args)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    local, remote = json.loads(local.stdout), json.loads(remote.stdout)
    for key in ("text", "ids", "prompt_ids", "stop_reason"):
        assert remote[key] == local[key], key
    assert remote["stats"]["generated_tokens"] == local["stats"]["generated_tokens"] == 16
    assert set(remote["stats"]) - {"server"} == set(local["stats"]) - {"load_s"}


def test_run_errors_from_the_server_are_one_line(smollm2_server, smollm2_path):
    # The shared server holds 512 tokens per sequence; no --ctx given, so it answers, and refuses.
    assert_user_error(client("run", str(smollm2_path), "word " * 600, "-n", "2"), "context holds 512", "--ctx")
    assert_user_error(client("run", str(smollm2_path), "hi", "--top-p", "7"), "top_p")


def test_chat_through_the_server_keeps_the_conversation(smollm2_server, smollm2_path):
    script = "What is the capital of France?\n/stats\nAnd of Italy?\n/stats\n/reset\n/stats\n/quit\n"
    proc = client("chat", str(smollm2_path), "--temperature", "0", "-n", "30", stdin=script)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"via pellucid server {smollm2_server.url.removeprefix('http://')}" in out.splitlines()[0]
    assert "Paris" in out
    assert "Rome" in out  # "And of Italy?" is only answerable with the first turn sent along
    first, second = [int(n) for n in re.findall(r"context: ([\d,]+) of [\d,]+ tokens in the conversation", out)][:2]
    assert 0 < first < second
    assert "cached)" in out  # the server's slot still held the first turn
    assert "context: 0 of" in out


def test_stale_entries_are_ignored_and_removed(smollm2_server, smollm2_path):
    """An entry whose process is gone, and one whose process lives but answers nothing on its port."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    folder = servers.servers_dir()
    model = {"name": "smollm2-135m", "kind": "chat", "path": os.path.realpath(smollm2_path), "ctx": 512,
             "quantize": None, "device": "cpu", "chat_template": True}  # fmt: skip
    stale = []
    for pid, port in ((dead.pid, closed_port), (os.getpid(), closed_port)):
        path = folder / f"{pid}.json"
        entry = {"pid": pid, "version": __version__, "host": "127.0.0.1", "port": port, "models": [model],
                 "api_key": False, "arithmetic": servers.arithmetic(), "started_at": time.time() + 60}  # fmt: skip
        path.write_text(json.dumps(entry))
        stale.append(path)
    proc = client("run", str(smollm2_path), "Say hi.", "-n", "4", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert f"(pid {smollm2_server.proc.pid})]" in stats_line(proc)
    assert not any(path.exists() for path in stale)


def test_keep_alive_starts_a_server_that_later_runs_reuse_and_that_exits(smollm2_path):
    """--keep-alive with no matching server (--ctx 256; the shared one has 512): a background server starts,
    the next run reuses it, and it exits by itself after the keep-alive, taking its entry with it. It was
    started with $PELLUCID_API_KEY set, so it needs that key: without it, the one-line error."""
    key = {"PELLUCID_API_KEY": "test-secret"}
    args = ("run", str(smollm2_path), "Say hi.", "-n", "4", "--temperature", "0", "--ctx", "256")
    first = client(*args, "--keep-alive", "5s", env=key)
    assert first.returncode == 0, first.stderr
    assert "starting a pellucid server" in first.stderr and "keep-alive 5s" in first.stderr
    pid = int(stats_line(first).rsplit("(pid ", 1)[1].rstrip(")]"))
    [entry] = [e for e in servers.entries() if e.pid == pid]
    assert entry.api_key and entry.keep_alive_s == 5 and entry.models[0]["ctx"] == 256
    assert os.getsid(pid) == pid  # its own session: no terminal, and Ctrl-C in ours does not reach it

    second = client(*args, env=key)  # no --keep-alive needed to find it
    assert second.returncode == 0, second.stderr
    assert f"(pid {pid})]" in stats_line(second) and second.stdout == first.stdout

    no_key = {k: v for k, v in os.environ.items() if k != "PELLUCID_API_KEY"}
    refused = subprocess.run([sys.executable, "-c", CLIENT, *args], capture_output=True, text=True, env=no_key)
    assert_user_error(refused, f"(pid {pid}) needs an API key", "PELLUCID_API_KEY", "--local")

    deadline = time.monotonic() + 60
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(pid), "the keep-alive server did not exit"
    assert not entry.file.exists()
    assert "(--keep-alive): exiting" in (servers.servers_dir() / f"{smollm2_path.name}.log").read_text()


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by whoever adopted it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_durations():
    assert [duration(t) for t in ("0", "90", "30s", "5m", "1h30m", "1.5h")] == [0, 90, 30, 300, 5400, 5400]
    assert [format_duration(s) for s in (0, 2.5, 45, 300, 5400)] == ["0s", "2.5s", "45s", "5m", "1h30m"]
    for bad in ("soon", "5x", "m", "1h x"):
        with pytest.raises(Exception, match="not a duration"):
            duration(bad)
