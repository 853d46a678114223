"""GET /metrics: the server's counters and gauges in Prometheus' text exposition format (version 0.0.4).

Requests are counted here, by endpoint and status, as each one ends; tokens and the queue come from the
scheduler's own counters, read when Prometheus scrapes.
"""

from __future__ import annotations

from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self):
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> count
        self.embedded_tokens = 0

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def render(self, backend) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP pellucid_{name} {help}")
            lines.append(f"# TYPE pellucid_{name} {kind}")
            lines.extend(f"pellucid_{name}{labels} {_number(value)}" for labels, value in samples)

        requests = [
            (f'{{endpoint="{_escape(endpoint)}",status="{status}"}}', n)
            for (endpoint, status), n in sorted(self.requests.items())
        ]
        metric("requests_total", "counter", "HTTP requests by endpoint and status.", requests)
        sched = backend.scheduler
        if sched is not None:
            metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
                   [("", sched.prompt_tokens_total)])  # fmt: skip
            metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a KV cache (prefix caching).",
                   [("", sched.cached_tokens_total)])  # fmt: skip
            metric("generated_tokens_total", "counter", "Tokens generated.", [("", sched.generated_tokens_total)])
            metric("queue_depth", "gauge", "Requests waiting for a slot.", [("", sched.queue_depth)])
            metric("active_sequences", "gauge", "Sequences being generated now.", [("", sched.active)])
            metric("slots", "gauge", "Sequences that can run at once (--parallel).", [("", len(sched.slots))])
            metric("decode_tokens_per_second", "gauge", "Tokens generated per second, all sequences, last 10 s.",
                   [("", round(sched.decode_tok_s(), 3))])  # fmt: skip
        if backend.embedder is not None:
            metric("embedding_tokens_total", "counter", "Tokens embedded.", [("", self.embedded_tokens)])
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
