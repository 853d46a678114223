"""Generation: prefill a prompt, then sample one token at a time, streaming text and stats.

Three layers, each usable on its own (as in mlx-lm):

1. `Session.generate_ids` — tokens. Keeps one KV cache and the token ids it holds. A new prompt that starts
   with ids already in the cache (the same system prompt, the next turn of a chat) only prefills what is
   new: the cache is trimmed back to the shared prefix instead of recomputed.
2. `stream_text` — text. Turns ids into UTF-8-safe text pieces and applies stop strings, which never leak
   into the output: text that might be the start of a stop string is held back until it cannot be.
3. `Generation` (engine/results.py, torch-free) — what `pellucid.load(...).generate()` returns: an iterator
   of `Chunk`s (text + token ids [+ logprobs]) whose last chunk carries `GenerationStats`; `.text`, `.ids`
   and `.stats` fill in as it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pellucid.engine.results import Chunk, GenerationStats
from pellucid.engine.sampling import Sampler, TokenLogprobs, token_logprobs
from pellucid.errors import ContextLengthError, PellucidError

PREFILL_CHUNK = 512  # prompt tokens per forward pass (llama.cpp's default n_ubatch): bounds activation memory


class EmptyPromptError(PellucidError, ValueError):
    """A generation was asked for with no prompt tokens at all."""


def check_prompt(
    prompt_ids: Iterable[int],
    capacity: int,
    context_length: int,
    *,
    where: str = "the context",
    remedy: str = "raise --ctx",
) -> list[int]:
    """The prompt as a list of ints, or a clear error: it is empty, or it leaves no room in `capacity` for a
    generated token. Shared by `Session.generate` and the server's scheduler (`where`/`remedy` word it)."""
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise EmptyPromptError("the prompt is empty: the model needs at least one token to continue")
    if len(prompt_ids) >= capacity:
        raise ContextLengthError(
            f"the prompt is {len(prompt_ids):,} tokens but {where} holds {capacity:,} tokens (the prompt plus at "
            f"least one generated token must fit). Shorten the prompt or {remedy} (this model supports up to "
            f"{context_length:,})."
        )
    return prompt_ids


@dataclass
class _Step:
    """One sampled token (internal to the token layer)."""

    token_id: int
    logprobs: TokenLogprobs | None


class Session:
    """One sequence's KV cache plus the token ids it holds, reused across calls (prefix caching)."""

    def __init__(self, model, capacity: int):
        self.model = model
        self.cache = model.make_cache(batch_size=1, capacity=capacity)
        self.tokens: list[int] = []  # the ids whose keys/values are in the cache, in order
        self._dirty = False  # a forward pass was interrupted: the cache may be half-updated

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def reset(self) -> None:
        self.cache.reset()
        self.tokens = []
        self._dirty = False

    def _reuse_prefix(self, prompt_ids: Sequence[int]) -> int:
        """Trim the cache to the longest prefix it shares with `prompt_ids`; returns how many ids are reused."""
        if self._dirty:
            self.reset()
        shared = 0
        for a, b in zip(self.tokens, prompt_ids):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(prompt_ids) - 1)  # the last prompt token must run to give the next logits
        drop = len(self.tokens) - shared
        if drop and not self.cache.can_trim(drop):
            self.reset()  # e.g. a sliding-window ring that has already overwritten what we would keep
            return 0
        if drop:
            self.cache.trim(drop)
            del self.tokens[shared:]
        return shared

    @torch.inference_mode()
    def _forward_last(self, ids: Sequence[int]) -> torch.Tensor:
        """Feed `ids` through the model into the cache; logits (vocab,) of the last position."""
        self._dirty = True
        hidden = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = torch.tensor([list(ids[start : start + PREFILL_CHUNK])], device=self.model.device)
            hidden = self.model.hidden(chunk, self.cache)
        logits = self.model.logits(hidden[:, -1:])[0, -1]
        self.tokens.extend(int(i) for i in ids)
        self._dirty = False
        return logits

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        sampler: Sampler,
        *,
        max_tokens: int,
        stop_ids: Iterable[int] = (),
        logprobs: int | None = None,
        stats: GenerationStats | None = None,
        constraint=None,
    ) -> Iterator[_Step]:
        """Prefill `prompt_ids` (reusing the cached prefix) and yield sampled tokens until a stop condition.

        A stop token is not yielded. `stats` (if given) is filled in as generation proceeds. `constraint` (an
        engine.constrain.Constraint) masks the logits before each sample and follows the sampled tokens.
        """
        stats = stats if stats is not None else GenerationStats()
        prompt_ids = check_prompt(prompt_ids, self.capacity, self.model.config.context_length)
        stop_ids = frozenset(stop_ids)
        start = time.perf_counter()
        stats.prompt_tokens = len(prompt_ids)
        stats.cached_tokens = self._reuse_prefix(prompt_ids)
        logits = self._forward_last(prompt_ids[stats.cached_tokens :])
        history = list(prompt_ids)
        stats.prefill_s = time.perf_counter() - start
        first_token_at = None
        while True:
            if stats.generated_tokens >= max_tokens:
                stats.stop_reason = "length"
                return
            token = sampler.sample(logits if constraint is None else constraint.mask(logits), history)
            if first_token_at is None:
                first_token_at = time.perf_counter()
                stats.ttft_s = first_token_at - start
            if token in stop_ids:
                stats.stop_reason, stats.stop_detail = "stop", f"token {token}"
                return
            if constraint is not None:
                constraint.accept(token)
            step = _Step(token, token_logprobs(logits, token, logprobs) if logprobs is not None else None)
            history.append(token)
            stats.generated_tokens += 1
            yield step
            stats.decode_s = time.perf_counter() - first_token_at
            if stats.generated_tokens >= max_tokens:
                stats.stop_reason = "length"
                return
            if len(self.tokens) + 1 > self.capacity:
                stats.stop_reason, stats.stop_detail = "context", f"the context of {self.capacity:,} tokens is full"
                return
            logits = self._forward_last([token])
            stats.decode_s = time.perf_counter() - first_token_at


class StopStrings:
    """Finds stop strings in streamed text, holding back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """(text safe to emit now, the stop string that matched or None)."""
        if not self.stops:
            return text, None
        self._pending += text
        hits = [(self._pending.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            index, stop = min(hits)
            out, self._pending = self._pending[:index], ""
            return out, stop
        keep = self._longest_partial_match()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out, None

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _longest_partial_match(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best


def stream_text(
    steps: Iterator[_Step],
    decoder,
    stats: GenerationStats,
    *,
    stop_strings: Sequence[str] = (),
) -> Iterator[Chunk]:
    """Text chunks from token steps; the last chunk has the stats. Stop strings end generation unseen."""
    stops = StopStrings(stop_strings)
    ids: list[int] = []  # ids whose text is not yet emitted
    lps: list[TokenLogprobs] = []
    try:
        for step in steps:
            ids.append(step.token_id)
            if step.logprobs is not None:
                lps.append(step.logprobs)
            text, matched = stops.feed(decoder.push(step.token_id))
            if matched is not None:
                stats.stop_reason, stats.stop_detail = "stop", f"stop string {matched!r}"
                yield Chunk(text, ids, lps or None)
                ids, lps = [], []
                break
            if text:
                yield Chunk(text, ids, lps or None)
                ids, lps = [], []
        else:
            text, matched = stops.feed(decoder.flush())
            if matched is not None:
                stats.stop_reason, stats.stop_detail = "stop", f"stop string {matched!r}"
            tail = text + stops.flush()
            if tail or ids:
                yield Chunk(tail, ids, lps or None)
                ids, lps = [], []
    finally:
        steps.close()  # stops the token generator (and its timers) whether we broke out or were closed
    yield Chunk("", ids, lps or None, stats=stats)
