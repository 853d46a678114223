"""Reranking: score (query, passage) pairs jointly, after retrieval has narrowed the candidates.

Retrieval scores a query and a passage separately (one vector each, or word overlap); a reranker reads
them together, which is slower but can judge whether the passage actually answers the question. It runs on
the first few dozen candidates only (`retrieve.RERANK_DEPTH`).

A cross-encoder (a BERT trained to score pairs, such as cross-encoder/ms-marco-MiniLM-L-6-v2, saved as a
Hugging Face folder with safetensors) is the usual tool: `CrossEncoderReranker`, chosen by `load_reranker`
when --rerank-model names such a folder. None is in pellucid's catalog, so by default the local LLM scores
pairs, in one of two ways; nothing is generated, each pair costs one forward pass (batched):

- "query-likelihood" (the default): the mean log-probability of the query's tokens after "Passage: ...
  Please write a question based on this passage. Question:". A passage that answers the question makes
  the question predictable. This is UPR (Sachan et al., "Improving Passage Retrieval with Zero-Shot
  Question Generation", 2022), and it asks the model only to continue text, which small models do well.
- "yes": P(yes) / (P(yes) + P(no)) for the first token of the answer to "Does the passage contain the
  answer to the question? Answer with yes or no." in the chat template. It needs a model that can judge
  relevance; SmolLM2-135M answers "No" to nearly everything, and on the Debian FAQ evaluation it made
  ranking worse (docs/benchmarks.md), so it is there to compare, and for larger models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pellucid.rag import RERANK_METHODS as METHODS
from pellucid.rag.prompt import neutralise, special_token_pattern

MAX_PASSAGE_TOKENS = 320  # a chunk is at most ~256 encoder tokens; LLM tokenizers need somewhat more
QUERY_LIKELIHOOD_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
YES_NO_QUESTION = "Does the passage contain the answer to the question? Answer with yes or no."
YES_WORDS = ("Yes", "yes", " Yes", " yes")
NO_WORDS = ("No", "no", " No", " no")


class LLMReranker:
    """Scores (query, passage) pairs with a causal LM; higher = more relevant. See the module docstring."""

    def __init__(self, llm, *, method: str = "query-likelihood", batch_size: int = 4, max_passage_tokens: int = MAX_PASSAGE_TOKENS):  # fmt: skip
        if method not in METHODS:
            raise ValueError(f"unknown rerank method {method!r}; use one of {', '.join(METHODS)}")
        self.llm = llm
        self.method = method
        self.name = f"{llm.name} ({method})"
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.special = special_token_pattern(llm.tokenizer)
        self.yes_ids = _first_token_ids(llm.tokenizer, YES_WORDS)
        self.no_ids = _first_token_ids(llm.tokenizer, NO_WORDS)

    @torch.inference_mode()
    def score(self, query: str, passages: list[str]) -> list[float]:
        score_batch = self._query_likelihood if self.method == "query-likelihood" else self._yes_probability
        scores: list[float] = []
        for start in range(0, len(passages), self.batch_size):
            scores += score_batch(query, passages[start : start + self.batch_size])
        return scores

    def _passage(self, passage: str) -> str:
        tokenizer = self.llm.tokenizer
        ids = tokenizer.encode(passage, add_special=False)
        if len(ids) > self.max_passage_tokens:
            passage = tokenizer.decode(ids[: self.max_passage_tokens]) + " [...]"
        return neutralise(passage, self.special)

    def _query_likelihood(self, query: str, passages: list[str]) -> list[float]:
        """Mean log P(query token | passage prompt, earlier query tokens)."""
        tokenizer = self.llm.tokenizer
        query_ids = tokenizer.encode(" " + query.strip(), add_special=False)
        prompts = [
            tokenizer.encode(QUERY_LIKELIHOOD_PROMPT.format(passage=self._passage(p)), add_special=True)
            for p in passages
        ]
        # The logits at position i predict token i + 1: the query's tokens are predicted from len(prompt) - 1 on.
        rows = [list(range(len(p) - 1, len(p) - 1 + len(query_ids))) for p in prompts]
        hidden = last_hidden_rows(self.llm.model, [p + query_ids for p in prompts], rows)
        target = torch.tensor(query_ids)
        scores = []
        for h in hidden:  # (n_query, hidden)
            logprobs = torch.log_softmax(self.llm.model.logits(h).float(), dim=-1)
            scores.append(float(logprobs[torch.arange(len(query_ids)), target.to(logprobs.device)].mean()))
        return scores

    def _yes_probability(self, query: str, passages: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for the first token of the chat model's answer."""
        prompts = [
            self.llm.chat_prompt_ids(
                [{"role": "user", "content": f"Passage:\n{self._passage(p)}\n\nQuestion: {query}\n\n{YES_NO_QUESTION}"}]
            )
            for p in passages
        ]
        hidden = last_hidden_rows(self.llm.model, prompts, [[len(p) - 1] for p in prompts])
        logprobs = torch.log_softmax(self.llm.model.logits(torch.cat(hidden)).float(), dim=-1)  # (B, vocab)
        yes = torch.logsumexp(logprobs[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logprobs[:, self.no_ids], dim=-1)
        return torch.sigmoid(yes - no).tolist()


def last_hidden_rows(model, sequences: list[list[int]], rows: list[list[int]]) -> list[torch.Tensor]:
    """One batched forward pass; for sequence i, the final hidden states at positions rows[i] (n_i, hidden).

    Sequences are right-padded: in a causal model no real token attends to the pads after it, so the
    positions we read are exactly what each sequence alone would give."""
    longest = max(len(s) for s in sequences)
    tokens = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, ids in enumerate(sequences):
        tokens[i, : len(ids)] = torch.tensor(ids)
    hidden = model.hidden(tokens.to(model.device))  # (B, T, hidden)
    return [hidden[i, torch.tensor(r, device=hidden.device)] for i, r in enumerate(rows)]


def _first_token_ids(tokenizer, words) -> list[int]:
    return sorted({tokenizer.encode(w, add_special=False)[0] for w in words})


class CrossEncoderReranker:
    """A BERT cross-encoder: [CLS] query [SEP] passage [SEP] -> one relevance logit."""

    def __init__(self, folder: Path, *, device=None, batch_size: int = 16):
        from pellucid.device import pick_device
        from pellucid.formats.safetensors import HFFolder
        from pellucid.model.bert import load_bert_classifier
        from pellucid.tokenizer import load_tokenizer

        with HFFolder(folder) as hf:
            self.model = load_bert_classifier(hf, device=pick_device(device))
        self.tokenizer = load_tokenizer(folder)
        self.name = Path(folder).name
        self.batch_size = batch_size
        self.max_tokens = self.model.encoder.config.max_positions
        limit = _read_json(Path(folder) / "tokenizer_config.json").get("model_max_length")
        if isinstance(limit, int) and 0 < limit < self.max_tokens:
            self.max_tokens = limit

    def pair_ids(self, query: str, passage: str) -> tuple[list[int], list[int]]:
        """(token ids, segment ids) of the pair, cut longest-first to max_tokens as HF tokenizers do."""
        tok = self.tokenizer
        q = tok.encode(query, add_special=False, parse_special=True)
        p = tok.encode(passage, add_special=False, parse_special=True)
        n_q, n_p = _longest_first(len(q), len(p), self.max_tokens - 3)
        ids = [tok.bos_id, *q[:n_q], tok.eos_id, *p[:n_p], tok.eos_id]  # [CLS] q [SEP] p [SEP]
        return ids, [0] * (n_q + 2) + [1] * (n_p + 1)

    @torch.inference_mode()
    def score(self, query: str, passages: list[str]) -> list[float]:
        """The relevance logit of each pair (for a two-label head: log P(relevant))."""
        scores: list[float] = []
        for start in range(0, len(passages), self.batch_size):
            pairs = [self.pair_ids(query, p) for p in passages[start : start + self.batch_size]]
            longest = max(len(ids) for ids, _ in pairs)
            tokens = torch.zeros(len(pairs), longest, dtype=torch.long)
            types, mask = torch.zeros_like(tokens), torch.zeros_like(tokens)
            for row, (ids, segments) in enumerate(pairs):
                tokens[row, : len(ids)], types[row, : len(ids)], mask[row, : len(ids)] = (
                    torch.tensor(ids), torch.tensor(segments), 1
                )  # fmt: skip
            device = self.model.device
            logits = self.model(tokens.to(device), mask.to(device), types.to(device)).float()  # (B, n_labels)
            scores += (logits[:, 0] if logits.shape[1] == 1 else logits.log_softmax(-1)[:, 1]).tolist()
        return scores


def load_reranker(model: str | None = None, *, method: str = METHODS[0], device=None, llm=None):
    """A cross-encoder when MODEL is a BERT sequence-classification folder; else an LLMReranker over MODEL
    (None = `llm` if given, else the default model)."""
    import pellucid
    from pellucid.store import resolve

    if model is None and llm is not None:
        return LLMReranker(llm, method=method)
    resolved = resolve(model)
    if resolved.kind == "hf":
        architectures = _read_json(resolved.path / "config.json").get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            return CrossEncoderReranker(resolved.path, device=device)
    return LLMReranker(pellucid.load(resolved, device=device), method=method)


def _longest_first(n_first: int, n_second: int, budget: int) -> tuple[int, int]:
    """Lengths after removing tokens from the longer sequence until both fit `budget` (ties: split evenly)."""
    excess = n_first + n_second - budget
    if excess <= 0:
        return n_first, n_second
    cut = min(abs(n_first - n_second), excess)  # first bring the longer one down to the other's length
    if n_first > n_second:
        n_first -= cut
    else:
        n_second -= cut
    excess -= cut
    return n_first - (excess + 1) // 2, n_second - excess // 2


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
