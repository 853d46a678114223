"""What a generation hands back: `Generation` (iterate it for `Chunk`s), `GenerationStats`, the stop reasons.

Plain data, no torch: the in-process engine (engine/generate.py) and the HTTP client that runs a generation
on a pellucid server (pellucid/client.py) return the same objects, so the command line prints both alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pellucid.engine.sampling import TokenLogprobs

# Why a generation ended. "stop" = an end-of-generation token or a stop string; "length" = max_tokens;
# "context" = the KV cache is full; "cancelled" = the caller stopped iterating (Ctrl-C, a closed stream).
STOP_REASONS = ("stop", "length", "context", "cancelled")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache instead of recomputed
    generated_tokens: int = 0
    ttft_s: float = 0.0  # time to first token: prefill + the first sample
    prefill_s: float = 0.0
    decode_s: float = 0.0  # from the first token to the last
    stop_reason: str = ""
    stop_detail: str = ""  # which token or stop string ended it

    @property
    def prefill_tok_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # The first token comes out of the prefill; decode speed counts the ones after it.
        n = self.generated_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tok_s"] = round(self.prefill_tok_s, 2)
        d["decode_tok_s"] = round(self.decode_tok_s, 2)
        return d

    def summary(self) -> str:
        cached = f" ({self.cached_tokens} cached)" if self.cached_tokens else ""
        return (
            f"{self.prompt_tokens} prompt tokens{cached} at {self.prefill_tok_s:.1f} tok/s, "
            f"{self.generated_tokens} generated at {self.decode_tok_s:.1f} tok/s, "
            f"first token after {self.ttft_s * 1000:.0f} ms, stopped: {self.stop_reason}"
            + (f" ({self.stop_detail})" if self.stop_detail else "")
        )


@dataclass
class Chunk:
    """A piece of streamed output: its text, the token ids that produced it, and (optionally) logprobs."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    stats: GenerationStats | None = None  # only on the last chunk
    reasoning: str = ""  # a reasoning model's thinking (<think>...</think>), kept out of `text`
    tool_calls: list | None = None  # tool calls finished in this chunk (pellucid.tools.ToolCall)


class Generation:
    """A running generation: iterate for `Chunk`s; `.text`, `.ids`, `.stats` accumulate as it runs (and, for a
    chat, `.reasoning` and `.tool_calls`).

    Breaking out of the loop (or calling `.close()`) cancels it; the stats then say "cancelled".
    """

    def __init__(self, chunks: Iterator[Chunk], prompt_ids: list[int], stats: GenerationStats):
        self._chunks = chunks
        self.prompt_ids = prompt_ids
        self.stats = stats
        self.text = ""
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprobs] = []
        self.reasoning = ""  # the thinking, when the model reasons (chat)
        self.tool_calls: list = []  # the calls the answer made (chat with tools): pellucid.tools.ToolCall
        self.done = False

    def __iter__(self) -> Iterator[Chunk]:
        try:
            for chunk in self._chunks:
                self.text += chunk.text
                self.ids.extend(chunk.token_ids)
                if chunk.logprobs:
                    self.logprobs.extend(chunk.logprobs)
                self.reasoning += chunk.reasoning
                self.tool_calls.extend(chunk.tool_calls or [])
                yield chunk
            self.done = True
        finally:
            if not self.done:
                self.close()

    def close(self) -> None:
        if not self.done:
            self._chunks.close()
            if not self.stats.stop_reason:
                self.stats.stop_reason = "cancelled"
            self.done = True

    def result(self) -> Generation:
        """Run to the end (non-streaming use); returns self with .text, .ids and .stats filled in."""
        for _ in self:
            pass
        return self

    def as_dict(self) -> dict:
        extra = {"reasoning": self.reasoning} if self.reasoning else {}
        if self.tool_calls:
            extra["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls]
        return {
            "text": self.text,
            **extra,
            "ids": self.ids,
            "prompt_ids": self.prompt_ids,
            "stop_reason": self.stats.stop_reason,
            "stats": self.stats.as_dict(),
        }
