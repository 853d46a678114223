"""Helpers for the server tests: a real `pellucid serve` process on a free loopback port.

Not a test module. The server runs as a subprocess, exactly as a user starts it (`python -m pellucid serve
MODEL --port 0 ...`); it prints the address it bound, which `running_server` waits for. Its log is kept so a
test can check the one-line-per-request log and show it when something fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

# Generous: on a busy 2-core machine, loading the model and warming it up (the first torch.compile of the
# decode step takes tens of seconds when inductor's disk cache is cold) can take minutes. A hang still fails.
START_TIMEOUT_S = 600
HTTP_TIMEOUT_S = 300


class ServerProcess:
    def __init__(self, model_path, *args: str):
        cmd = [sys.executable, "-m", "pellucid", "serve", str(model_path), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._bound = threading.Event()
        self.url = ""
        self.headers: dict[str, str] = {}  # sent by get_json and metrics (e.g. the API key)
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._bound.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"the server did not start within {START_TIMEOUT_S} s; its log:\n{self.log}")

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"pellucid: listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self._bound.set()
        self._bound.set()  # the process ended (before binding, if url is still empty)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def get_json(self, path: str, **headers) -> dict:
        request = urllib.request.Request(self.url + path, headers={**self.headers, **headers})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics: {"pellucid_active_sequences": 0.0, ...}."""
        with urllib.request.urlopen(
            urllib.request.Request(self.url + "/metrics", headers=self.headers), timeout=30
        ) as r:
            text = r.read().decode()
        return {k: float(v) for k, v in re.findall(r"^(pellucid_\w+) (\S+)$", text, re.MULTILINE)}

    def wait_until(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; server log:\n{self.log[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def running_server(model_path, *args: str):
    server = ServerProcess(model_path, *args)
    try:
        yield server
    finally:
        server.stop()
        assert server.proc.returncode in (0, -15), f"the server exited with {server.proc.returncode}:\n{server.log}"


# The arguments of the one SmolLM2 server that test_server_openai, test_server_anthropic and test_server_web
# share (the `smollm2_server` fixture in conftest.py): starting a server costs a model load and a warm-up.
SHARED_ARGS = ("--parallel", "4", "--ctx", "512", "--alias", "my-model")


def shared_server(smollm2_path):
    """The session's shared SmolLM2 server (a generator for a session fixture). Tests on it must not assume
    fresh counters: compare /metrics before and after."""
    with running_server("smollm2-135m", *SHARED_ARGS) as server:
        yield server
