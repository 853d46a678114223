"""Perplexity: exp(mean negative log-likelihood) of a text's tokens under the model, as llama-perplexity reports.

`perplexity` follows llama.cpp's `llama-perplexity`: the tokens are cut into windows of `ctx`, each window is
evaluated from scratch (its first token replaced by BOS when the model adds one), and only the second half
of each window is scored, so every scored token has at least ctx/2 tokens of context. The ± it reports is
llama.cpp's too: the standard error of the mean NLL, carried through exp (ppl * sqrt(var(nll) / (n - 1))).

`sequence_perplexity` scores every token after the first of one window: the number the llama.cpp fixture's
`perplexity` entry holds, and the natural measure for a short text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pellucid.errors import PellucidError

LOGIT_ROWS = 128  # logits are computed this many positions at a time: Gemma's 262k vocab makes a row 1 MB


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float  # the ± llama-perplexity prints
    n_windows: int
    n_scored: int  # tokens whose NLL went into the mean
    window_nll: list[float]  # mean NLL of each window's scored tokens, in order


def perplexity(
    model,
    token_ids: Sequence[int],
    ctx: int = 512,
    *,
    bos_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """llama-perplexity's measure over windows of `ctx` tokens, scoring the second half of each.

    `bos_id`: the model's BOS token when its tokenizer adds one (it then replaces each window's first token,
    as llama.cpp does); None otherwise. `progress(done, total)` is called after each window.
    """
    if ctx < 4:
        raise ValueError(f"a perplexity window needs at least 4 tokens, not {ctx}")
    n_windows = len(token_ids) // ctx
    if n_windows == 0:
        raise PellucidError(
            f"the text has {len(token_ids):,} tokens, fewer than one window of {ctx:,}; use a longer text or a "
            f"smaller context (or sequence_perplexity for a short text)"
        )
    first = ctx // 2
    nlls, window_nll = [], []
    for w in range(n_windows):
        window = list(token_ids[w * ctx : (w + 1) * ctx])
        if bos_id is not None:
            window[0] = bos_id
        nll = token_nll(model, window, first)
        nlls.append(nll)
        window_nll.append(nll.mean().item())
        if progress is not None:
            progress(w + 1, n_windows)
    return _summarize(torch.cat(nlls), window_nll)


def sequence_perplexity(model, token_ids: Sequence[int]) -> PerplexityResult:
    """exp(mean NLL of tokens 2..n) over one window holding the whole sequence (BOS included if wanted)."""
    if len(token_ids) < 2:
        raise PellucidError("perplexity needs at least two tokens: the first is context, the rest are scored")
    nll = token_nll(model, list(token_ids), 0)
    return _summarize(nll, [nll.mean().item()])


@torch.inference_mode()
def token_nll(model, token_ids: list[int], first: int) -> torch.Tensor:
    """-log p(token[i+1] | tokens[..i]) for i = first .. n-2, in float64, from one forward pass."""
    tokens = torch.tensor([token_ids], device=model.device)
    # Through a KV cache when it stores keys/values in another type than f32, so the score counts its rounding (as
    # llama-perplexity's does: its attention always reads the cache)
    rounded = getattr(model, "kv_types", ("f32", "f32")) != ("f32", "f32")
    cache = model.make_cache(capacity=len(token_ids)) if rounded else None
    hidden = model.hidden(tokens, cache)[0, first:-1]  # (n_scored, hidden): positions whose next token is scored
    targets = tokens[0, first + 1 :]
    out = []
    for start in range(0, hidden.shape[0], LOGIT_ROWS):
        logits = model.logits(hidden[start : start + LOGIT_ROWS])  # float32
        out.append(F.cross_entropy(logits, targets[start : start + LOGIT_ROWS], reduction="none"))
    return torch.cat(out).cpu().double()  # float64 on the CPU: MPS has no float64


def _summarize(nll: torch.Tensor, window_nll: list[float]) -> PerplexityResult:
    n = nll.numel()
    mean = nll.mean().item()
    ppl = math.exp(mean)
    variance = (nll.pow(2).mean().item() - mean * mean) if n > 1 else 0.0
    stderr = ppl * math.sqrt(variance / (n - 1)) if variance > 0 else 0.0
    return PerplexityResult(ppl, stderr, len(window_nll), n, window_nll)
