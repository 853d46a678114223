"""How long `pellucid run MODEL "Say hi." -n 8 --temperature 0` takes, process start to exit: answered by a
warm server that holds the model (started here with --keep-alive, in a registry of this script's own) vs
in-process (--local: import torch, load, generate; `--exact` adds compiling from the warm cache), and the same
one-shot answer from llama.cpp when PELLUCID_LLAMA_CPP_PYTHON names a python with llama-cpp-python (one fresh
process: import llama_cpp, load the GGUF, the chat template, 8 greedy tokens).

    .venv/bin/python benchmarks/startup_bench.py [--model smollm2-135m | PATH.gguf] [--runs 5] [--exact]

Prints the median and the range of each, in seconds. The server is started once (not timed) and exits by
itself a minute after the last run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def wall(args: list[str], env: dict, python: str = sys.executable, module: list[str] | None = None) -> float:
    started = time.perf_counter()
    cmd = [python, *(module if module is not None else ["-m", "pellucid"]), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return seconds


LLAMA_CPP_ONE_SHOT = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=4096, n_threads=2, verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
print(out["choices"][0]["message"]["content"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--exact", action="store_true", help="pellucid in float32 (compiles its decode step)")
    args = parser.parse_args()
    env = {**os.environ, "PELLUCID_SERVERS": tempfile.mkdtemp(prefix="pellucid-bench-servers-")}
    command = ["run", args.model, "Say hi.", "-n", "8", "--temperature", "0", *(["--exact"] if args.exact else [])]
    wall([*command, "--keep-alive", "1m"], env)  # starts the server and warms its first prompt
    results = {
        "via a warm server": [wall(command, env) for _ in range(args.runs)],
        "in-process (--local)": [wall([*command, "--local"], env) for _ in range(args.runs)],
    }
    peer = os.environ.get("PELLUCID_LLAMA_CPP_PYTHON")
    if peer:
        from pellucid.store import resolve

        path = str(resolve(args.model).path)
        runs = [wall([path], env, python=peer, module=["-c", LLAMA_CPP_ONE_SHOT]) for _ in range(args.runs)]
        results["llama.cpp (one process)"] = runs
    for name, times in results.items():
        print(f"{name:24} median {statistics.median(times):.2f} s  (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
