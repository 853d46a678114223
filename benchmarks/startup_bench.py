"""How long `pellucid run MODEL "Say hi." -n 8 --temperature 0` takes, process start to exit: answered by a
warm server that holds the model (started here with --keep-alive, in a registry of this script's own) vs
in-process (--local: import torch, load, compile from the warm cache, generate).

    .venv/bin/python benchmarks/startup_bench.py [--model smollm2-135m] [--runs 5]

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


def wall(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pellucid", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"pellucid {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PELLUCID_SERVERS": tempfile.mkdtemp(prefix="pellucid-bench-servers-")}
    command = ["run", args.model, "Say hi.", "-n", "8", "--temperature", "0"]
    wall([*command, "--keep-alive", "1m"], env)  # starts the server and warms its first prompt
    results = {
        "via a warm server": [wall(command, env) for _ in range(args.runs)],
        "in-process (--local)": [wall([*command, "--local"], env) for _ in range(args.runs)],
    }
    for name, times in results.items():
        print(f"{name:22} median {statistics.median(times):.2f} s  (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
