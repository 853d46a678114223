"""Prefix reuse on a sliding-window model, through a real server: a long prompt sent twice with a different last
line, then a chat's second turn, each request's cached tokens and wall time.

    .venv/bin/python benchmarks/prefix_reuse_bench.py                  # gemma3-270m (window 512), ~1,600 tokens
    .venv/bin/python benchmarks/prefix_reuse_bench.py --model smollm2-135m --lines 90

Starts `pellucid serve MODEL --ctx 4096` on a free port and talks to it with the official OpenAI SDK. Before the
prefill tail (engine/kv_cache.py), Gemma 3's second request reported 0 cached tokens: its sliding-window rings had
overwritten what the shared prefix needed. Run it on a quiet machine; the times are wall-clock.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

BIN = Path(sys.executable).parent / "pellucid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--lines", type=int, default=90, help="lines of filler text (~18 tokens each)")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([str(BIN), "serve", args.model, "--ctx", "4096", "--port", str(port)])
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        text = " ".join(
            f"Line {i}: the quick brown fox jumps over the lazy dog and keeps running." for i in range(args.lines)
        )

        def ask(label: str, **request) -> str:
            started = time.perf_counter()
            if "messages" in request:
                r = client.chat.completions.create(model=args.model, max_tokens=8, temperature=0, **request)
                answer = r.choices[0].message.content
            else:
                r = client.completions.create(model=args.model, max_tokens=8, temperature=0, **request)
                answer = r.choices[0].text
            cached = r.usage.prompt_tokens_details.cached_tokens if r.usage.prompt_tokens_details else 0
            print(
                f"{label:<34} prompt {r.usage.prompt_tokens:>5}  cached {cached:>5}  {time.perf_counter() - started:6.2f} s"
            )
            return answer

        ask("completion", prompt=text + "\nQuestion: what did the fox do?")
        ask("same prompt, different last line", prompt=text + "\nQuestion: who was lazy in the story?")
        first = [{"role": "user", "content": text + "\nWhat did the fox do?"}]
        reply = ask("chat, turn 1", messages=first)
        ask(
            "chat, turn 2",
            messages=[*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}],
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
