"""Sampling: pick the next token from the model's logits, the way llama.cpp does.

The chain, in llama.cpp's default order (common/sampling.cpp), each step a small pure function:

    penalties -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw from softmax

- penalties (`apply_penalties`) look at the last `repeat_last_n` tokens of the history: a repeated token's
  logit is divided by `repeat_penalty` when positive and multiplied when not (so it always gets less likely),
  then `count * frequency_penalty + presence_penalty` is subtracted.
- top-k keeps the k highest logits (k <= 0: off).
- typical-p keeps the tokens whose surprise -log p is closest to the entropy, until their mass exceeds p.
- top-p keeps the smallest set of most likely tokens whose probability sums to at least p.
- min-p keeps tokens with p >= min_p * p_max (relative to the most likely token still in the set).
- temperature divides the remaining logits; the draw samples from their softmax with a seeded generator.

Temperature <= 0 means greedy: the first highest logit after the chain, which is what llama.cpp's temperature
sampler does at 0 (with typical-p off that is simply the argmax of the penalized logits).

The truncation steps work on `Candidates`, the token ids still in play and their logits (llama.cpp's
llama_token_data_array): top-k uses torch.topk, so with the default k=40 nothing ever sorts the whole
vocabulary; only top-p or typical-p without top-k sort it (a few ms at 262k tokens). The draw runs on the CPU
with the sampler's own torch.Generator, so a seed gives the same tokens on any device, in any process.

`token_logprobs` reports what OpenAI's `logprobs` reports: log-probabilities from the log-softmax of the raw
logits, i.e. the model's own distribution before penalties, truncation and temperature, so the numbers mean the
same thing whatever the sampling settings. (llama.cpp's server reports post-sampling probabilities instead.)
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from pellucid.errors import PellucidError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes a 64-bit seed


class SamplingParamsError(PellucidError, ValueError):
    """A sampling parameter is out of range (a user error, e.g. a bad request to the server)."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings with llama.cpp's defaults (common/common.h, common_params_sampling)."""

    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # how many recent tokens the penalties look at; 0: off, -1: the whole history
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_keep: int = 0  # truncation samplers keep at least this many tokens (llama.cpp's min_keep)
    seed: int | None = None  # None: a fresh random seed (recorded on the Sampler)
    logprobs: int | None = None  # report this many top alternatives per token; None: no logprobs

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        _check_int("top_k", self.top_k, low=0, hint="0 disables top-k")
        _check_number("top_p", self.top_p, low=0.0, high=1.0, hint="1.0 disables top-p")
        _check_number("min_p", self.min_p, low=0.0, high=1.0, hint="0.0 disables min-p")
        _check_number("typical_p", self.typical_p, low=0.0, high=1.0, hint="1.0 disables typical sampling")
        _check_number("repeat_penalty", self.repeat_penalty, low=0.0, hint="1.0 disables it", open_low=True)
        _check_int("repeat_last_n", self.repeat_last_n, low=-1, hint="0 disables penalties, -1 uses all tokens")
        _check_number("presence_penalty", self.presence_penalty)
        _check_number("frequency_penalty", self.frequency_penalty)
        _check_int("min_keep", self.min_keep, low=0)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED, hint="or None for a random seed")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, hint="or None for no logprobs")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalties_active(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )


def _check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    hint: str = "",
    open_low: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingParamsError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'>' if open_low else '>='} {low}" if high is None else f"in [{low}, {high}]"
        raise SamplingParamsError(f"{name} must be {bounds}, got {value!r}" + (f" ({hint})" if hint else ""))


def _check_int(name: str, value: object, *, low: int, high: int | None = None, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SamplingParamsError(f"{name} must be {bounds}, got {value!r}" + (f" ({hint})" if hint else ""))


# ---------------------------------------------------------------------------------------------------------
# The samplers. Each is a pure function; none modifies its input.


def apply_penalties(
    logits: torch.Tensor,
    history: Sequence[int] | torch.Tensor,
    *,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> torch.Tensor:
    """Penalize tokens seen in the last `repeat_last_n` tokens of `history` (llama.cpp's penalties sampler).

    logits: (vocab,). Returns new logits; a token seen `count` times gets
    `logit / repeat_penalty` (logit > 0) or `logit * repeat_penalty` (logit <= 0), minus
    `count * frequency_penalty + presence_penalty`.
    """
    if repeat_last_n == 0 or len(history) == 0:
        return logits
    if repeat_penalty == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0:
        return logits
    recent = torch.as_tensor(history, dtype=torch.long)
    if repeat_last_n > 0:
        recent = recent[-repeat_last_n:]
    ids, counts = torch.unique(recent.to(logits.device), return_counts=True)
    seen = logits[ids]
    seen = torch.where(seen <= 0, seen * repeat_penalty, seen / repeat_penalty)
    seen = seen - counts.to(seen.dtype) * frequency_penalty - presence_penalty
    out = logits.clone()
    out[ids] = seen
    return out


@dataclass(frozen=True)
class Candidates:
    """The tokens still in play: their logits (n,) and ids (n,); `sorted` means the logits descend.

    `ids` is None while the candidates are the whole vocabulary in order (ids == positions): building a
    262k-long arange on every step would cost more than the sampling itself.
    """

    logits: torch.Tensor
    ids: torch.Tensor | None = None
    sorted: bool = False

    @staticmethod
    def all(logits: torch.Tensor) -> Candidates:
        """Every token of the vocabulary. logits: (vocab,)."""
        return Candidates(logits)

    def __len__(self) -> int:
        return self.logits.shape[0]

    def token_ids(self) -> torch.Tensor:
        return torch.arange(len(self), device=self.logits.device) if self.ids is None else self.ids

    def take(self, index: torch.Tensor, *, sorted: bool | None = None) -> Candidates:
        """The candidates at `index` (positions, or a boolean mask)."""
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        ids = index if self.ids is None else self.ids[index]
        return Candidates(self.logits[index], ids, self.sorted if sorted is None else sorted)

    def first(self, n: int) -> Candidates:
        return self.take(torch.arange(min(n, len(self)), device=self.logits.device))

    def descending(self) -> Candidates:
        if self.sorted:
            return self
        order = torch.argsort(self.logits, descending=True, stable=True)
        return self.take(order, sorted=True)

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)


def top_k(c: Candidates, k: int) -> Candidates:
    """Keep the k highest logits, sorted (k <= 0: unchanged)."""
    if k <= 0:
        return c
    if c.sorted:
        return c.first(k)
    _, index = torch.topk(c.logits, min(k, len(c)))
    return c.take(index, sorted=True)


def typical_p(c: Candidates, p: float, min_keep: int = 0) -> Candidates:
    """Locally typical sampling: keep tokens whose surprise is closest to the entropy, until their mass > p."""
    if p >= 1.0 or len(c) <= 1:
        return c
    c = c.descending()
    probs = c.probs()
    log_probs = torch.log(probs)
    entropy = -(probs * torch.nan_to_num(log_probs, neginf=0.0)).sum()  # 0 * log 0 = 0
    order = torch.argsort((-log_probs - entropy).abs(), stable=True)
    cumulative = torch.cumsum(probs[order], dim=0)
    over = (cumulative > p) & (torch.arange(len(c), device=order.device) >= min_keep - 1)
    return c.take(order[: _first_true(over, default=len(c)) + 1], sorted=False)


def top_p(c: Candidates, p: float, min_keep: int = 0) -> Candidates:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return c
    probs = c.probs()
    k = len(c) if c.sorted else min(256, len(c))
    while True:  # like llama.cpp, look at the top 256 first and sort everything only if they are not enough
        top_probs, index = (probs[:k], None) if c.sorted else torch.topk(probs, k)
        cumulative = torch.cumsum(top_probs, dim=0)
        over = (cumulative >= p) & (torch.arange(k, device=probs.device) + 1 >= min_keep)
        n_keep = _first_true(over, default=-1) + 1
        if n_keep > 0 or k == len(c):
            n_keep = n_keep or len(c)
            return c.first(n_keep) if index is None else c.take(index[:n_keep], sorted=True)
        k = min(k * 8, len(c))


def min_p(c: Candidates, p: float, min_keep: int = 0) -> Candidates:
    """Keep tokens with probability >= p * (probability of the most likely token)."""
    if p <= 0.0 or len(c) == 0:
        return c
    threshold = c.logits.max() + math.log(p)  # p_i >= p * p_max  <=>  logit_i >= max_logit + log p
    keep = c.logits >= threshold
    if int(keep.sum()) >= max(min_keep, 1):
        return c.take(keep)
    return top_k(c, max(min_keep, 1))


def apply_temperature(c: Candidates, temperature: float) -> Candidates:
    """Divide the logits by the temperature; at <= 0 keep only the (first) highest logit, i.e. greedy."""
    if temperature <= 0:
        return c.first(1) if c.sorted else c.take(c.logits.argmax().reshape(1))
    return replace(c, logits=c.logits / temperature)


def draw(c: Candidates, generator: torch.Generator) -> int:
    """Sample a token id from softmax(c.logits) by inverting the cumulative distribution at a uniform draw.

    Runs on the CPU with the sampler's generator, so a seed gives the same token on any device.
    """
    if len(c) == 1:
        return int(c.token_ids()[0])
    cumulative = torch.cumsum(torch.softmax(c.logits.to("cpu", torch.float64), dim=0), dim=0)
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    index = torch.searchsorted(cumulative, u * cumulative[-1], right=True).clamp_(max=len(c) - 1)
    return int(c.token_ids().cpu()[index])


def _first_true(mask: torch.Tensor, default: int) -> int:
    """Index of the first True in a 1-D boolean mask, or `default` when there is none."""
    if not bool(mask.any()):
        return default
    return int(mask.to(torch.uint8).argmax())  # argmax returns the first maximal index


# ---------------------------------------------------------------------------------------------------------
# The sampler: the chain above with its own random generator.


class Sampler:
    """Samples token after token with fixed `params`; owns a seeded torch.Generator (see `.seed`)."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def __repr__(self) -> str:
        return f"Sampler(seed={self.seed}, params={self.params})"

    def sample(self, logits: torch.Tensor, history: Sequence[int] | torch.Tensor = ()) -> int:
        """The next token id. logits: (vocab,) for the last position; history: the token ids so far (the
        penalties look at its last repeat_last_n; llama.cpp's server includes the prompt's tokens)."""
        if logits.dim() != 1:
            raise ValueError(f"sample() takes the logits of one position, shape (vocab,), got {tuple(logits.shape)}")
        p = self.params
        logits = logits.detach().float()
        if p.penalties_active:
            logits = apply_penalties(
                logits,
                history,
                repeat_penalty=p.repeat_penalty,
                repeat_last_n=p.repeat_last_n,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
            )
        if p.greedy and p.typical_p >= 1.0:
            return int(logits.argmax())  # top-k, top-p and min-p always keep the most likely token
        c = Candidates.all(logits)
        c = top_k(c, p.top_k)  # llama.cpp's top-k has no min_keep
        c = typical_p(c, p.typical_p, p.min_keep)
        c = top_p(c, p.top_p, p.min_keep)
        c = min_p(c, p.min_p, p.min_keep)
        c = apply_temperature(c, p.temperature)
        return draw(c, self.generator)


def make_sampler(params: SamplingParams | None = None) -> Sampler:
    """A Sampler for `params` (llama.cpp's defaults when None)."""
    return Sampler(params or SamplingParams())


# ---------------------------------------------------------------------------------------------------------
# Logprobs, as OpenAI reports them.


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log-probability and the top alternatives, best first: [(token_id, logprob), ...]."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, token_id: int, top_n: int = 0) -> TokenLogprobs:
    """log_softmax of the raw logits (vocab,): the model's distribution, before any sampling step."""
    log_probs = torch.log_softmax(logits.detach().float(), dim=0)
    top: list[tuple[int, float]] = []
    if top_n > 0:
        values, ids = torch.topk(log_probs, min(top_n, log_probs.shape[0]))
        top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist())]
    return TokenLogprobs(token_id=int(token_id), logprob=float(log_probs[token_id]), top=top)


__all__ = [
    "Candidates",
    "Sampler",
    "SamplingParams",
    "SamplingParamsError",
    "TokenLogprobs",
    "apply_penalties",
    "apply_temperature",
    "draw",
    "make_sampler",
    "min_p",
    "token_logprobs",
    "top_k",
    "top_p",
    "typical_p",
]
