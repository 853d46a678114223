"""Serving throughput: N concurrent streaming clients against `pellucid serve`; aggregate tok/s and TTFT.

    .venv/bin/python benchmarks/serve_bench.py                       # starts smollm2-135m, 1 and 8 streams
    .venv/bin/python benchmarks/serve_bench.py --streams 1 2 4 8 --max-tokens 128 --rounds 3
    .venv/bin/python benchmarks/serve_bench.py --url http://127.0.0.1:8080   # an already running server

Each stream is a client that sends `--rounds` chat requests one after another (stream: true, the same
prompt with a different seed each, so the answers differ but have similar lengths), and every stream starts
at once. Reported per stream count:

  agg tok/s   generated tokens of all streams (from each response's usage) / wall time of the whole run
  per-stream  agg tok/s / streams: what one client sees
  ttft p50/95 time from sending a request to its first content token, over all requests
  ratio       agg tok/s / the 1-stream agg tok/s (the issue's target: >= 3x at 8 streams on 2 cores)

When it starts the server itself, it uses --parallel = the largest stream count, so no request waits in
the queue for a slot: TTFT then measures prefill and scheduling, not queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import threading
import time

import httpx

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


async def one_request(http: httpx.AsyncClient, seed: int, max_tokens: int) -> tuple[float, int]:
    """(time to first content token in s, completion tokens) of one streamed chat request."""
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    ttft, tokens = None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - sent
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - sent), tokens


async def run(url: str, streams: int, rounds: int, max_tokens: int) -> dict:
    async def client(index: int, http: httpx.AsyncClient) -> list[tuple[float, int]]:
        return [await one_request(http, seed=1000 * index + r, max_tokens=max_tokens) for r in range(rounds)]

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(client(i, http) for i in range(streams)))
        wall = time.perf_counter() - started
    ttfts = sorted(t for per_client in results for t, _ in per_client)
    tokens = sum(n for per_client in results for _, n in per_client)
    return {
        "streams": streams,
        "requests": len(ttfts),
        "tokens": tokens,
        "wall_s": wall,
        "agg_tok_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


def start_server(model: str, parallel: int, ctx: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "pellucid", "serve", model, "--port", "0", "--parallel", str(parallel),
           "--ctx", str(ctx), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        match = re.search(r"pellucid: listening on (http://\S+)", line)
        if match:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            return proc, match.group(1)
    raise RuntimeError(f"the server exited with {proc.wait()} before listening")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="benchmark this running server instead of starting one")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=2, help="requests per stream, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=1024, help="context per slot when starting the server")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("server_args", nargs="*", help="more `pellucid serve` arguments (after --)")
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.model, max(args.streams), args.ctx, args.server_args)
    try:
        asyncio.run(run(url, 1, 1, 8))  # warm-up: first-request costs stay out of the numbers
        results = [asyncio.run(run(url, n, args.rounds, args.max_tokens)) for n in args.streams]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    base = next((r["agg_tok_s"] for r in results if r["streams"] == 1), None)
    for r in results:
        r["ratio_vs_1"] = r["agg_tok_s"] / base if base else None
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.model}: {args.rounds} request(s) per stream, max_tokens {args.max_tokens}")
    print(f"{'streams':>7} {'requests':>8} {'tokens':>7} {'wall s':>7} {'agg tok/s':>9} {'per-stream':>10} "
          f"{'ttft p50':>9} {'ttft p95':>9} {'ratio':>6}")  # fmt: skip
    for r in results:
        ratio = f"{r['ratio_vs_1']:.2f}x" if r["ratio_vs_1"] else "-"
        print(
            f"{r['streams']:>7} {r['requests']:>8} {r['tokens']:>7} {r['wall_s']:>7.1f} {r['agg_tok_s']:>9.1f} "
            f"{r['agg_tok_s'] / r['streams']:>10.1f} {r['ttft_p50_s'] * 1000:>7.0f}ms {r['ttft_p95_s'] * 1000:>7.0f}ms "
            f"{ratio:>6}"
        )


if __name__ == "__main__":
    main()
