"""`rag eval`: how well does retrieval find the documents that answer known questions?

A QRELS file (TREC's name for query relevance judgements) has one JSON object per line:

    {"query": "How do I upgrade Debian?", "relevant": ["uptodate/9.1.md"]}

A relevant doc is a path relative to the folder that was indexed, or a bare file name (which matches that
name in any folder). Results are ranked by *document*: a document ranks where its best chunk ranks. For
each mode (dense, sparse, hybrid, hybrid+rerank) we report, averaged over the queries:

- Recall@k: the share of a query's relevant documents found in the first k;
- MRR@10: 1 / rank of the first relevant document (0 if none is in the first 10);
- nDCG@10: sum over the first 10 of rel_i / log2(i + 1), divided by the same sum for a perfect ranking
  (binary relevance), so 1.0 means every relevant document came first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pellucid.errors import PellucidError
from pellucid.rag.index import Hit
from pellucid.rag.retrieve import RERANK_DEPTH, Retriever, SearchOptions, rerank

EVAL_CHUNKS = 100  # chunks retrieved per query: enough to rank 10 distinct documents
DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class Qrel:
    query: str
    relevant: tuple[str, ...]


def read_qrels(path: str | Path) -> list[Qrel]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PellucidError(f"cannot read {path}: {e.strerror or e}") from None
    qrels = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            query, relevant = item["query"], item["relevant"]
        except (ValueError, KeyError, TypeError):
            raise PellucidError(
                f'{path}:{number}: expected {{"query": "...", "relevant": ["doc", ...]}}, got {line[:80]!r}'
            ) from None
        if isinstance(relevant, str):
            relevant = [relevant]
        if not isinstance(query, str) or not relevant or not all(isinstance(r, str) for r in relevant):
            raise PellucidError(f"{path}:{number}: 'query' must be text and 'relevant' a non-empty list of paths")
        qrels.append(Qrel(query, tuple(relevant)))
    if not qrels:
        raise PellucidError(f"{path} has no queries")
    return qrels


def ranked_documents(hits: Sequence[Hit]) -> list[str]:
    """Documents (relative paths) in the order of their best chunk."""
    return list(dict.fromkeys(h.relpath for h in hits))


def judge(ranked: Sequence[str], relevant: Sequence[str]) -> list[bool]:
    """For each ranked document, whether it is a relevant one not already counted higher up."""
    found: set[str] = set()
    marks = []
    for doc in ranked:
        name = doc.rsplit("/", 1)[-1]
        spec = next((r for r in relevant if r not in found and (r == doc or ("/" not in r and r == name))), None)
        if spec is not None:
            found.add(spec)
        marks.append(spec is not None)
    return marks


def query_metrics(marks: Sequence[bool], n_relevant: int, ks: Sequence[int]) -> dict[str, float]:
    metrics = {f"recall@{k}": sum(marks[:k]) / n_relevant for k in ks}
    first = next((i for i, m in enumerate(marks[:10], 1) if m), None)
    metrics["mrr@10"] = 1.0 / first if first else 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, m in enumerate(marks[:10], 1) if m)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(n_relevant, 10) + 1))
    metrics["ndcg@10"] = dcg / ideal
    return metrics


def evaluate(
    retriever: Retriever,
    qrels: Sequence[Qrel],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    reranker=None,
    rerank_depth: int = RERANK_DEPTH,
    on_query: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean metrics per mode: dense, sparse, hybrid, and hybrid+rerank when a reranker is given."""
    modes = ["dense", "sparse", "hybrid"] + (["hybrid+rerank"] if reranker is not None else [])
    totals = {mode: {} for mode in modes}
    for qrel in qrels:
        runs: dict[str, list[Hit]] = {}
        for mode in ("dense", "sparse", "hybrid"):
            runs[mode] = retriever.search(qrel.query, SearchOptions(k=EVAL_CHUNKS, mode=mode))
        if reranker is not None:
            runs["hybrid+rerank"] = rerank(reranker, qrel.query, list(runs["hybrid"]), rerank_depth)
        for mode, hits in runs.items():
            scores = query_metrics(judge(ranked_documents(hits), qrel.relevant), len(qrel.relevant), ks)
            for name, value in scores.items():
                totals[mode][name] = totals[mode].get(name, 0.0) + value
        if on_query:
            on_query()
    return {mode: {name: value / len(qrels) for name, value in values.items()} for mode, values in totals.items()}
