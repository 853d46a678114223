"""Retrieval: a query -> the chunks most likely to answer it, dense, sparse or both fused.

- dense: cosine similarity between the query's embedding and each chunk's (meaning, paraphrase);
- sparse: BM25 over the chunks' words with FTS5 (rare words, names, error codes, exact terms);
- hybrid: reciprocal rank fusion of the two lists, score(chunk) = sum over lists of 1 / (RRF_K + rank).
  RRF needs no score calibration between the two (cosines and BM25 live on different scales), and k = 60
  is the constant of the paper that introduced it (Cormack, Clarke & Buettcher, SIGIR 2009).

An optional `min_similarity` drops the tail: hits whose cosine similarity to the query is below it, in any
mode (a sparse hit on one shared word can be about something else entirely). An optional reranker then
re-scores the first `rerank_depth` candidates (see rerank.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pellucid.rag import RERANK_DEPTH
from pellucid.rag.index import Filter, Hit, RagIndex, RagIndexError

MODES = ("dense", "sparse", "hybrid")
RRF_K = 60
CANDIDATES = 50  # how deep each list goes before fusion: fusion can lift a chunk that one list ranks low


@dataclass
class SearchOptions:
    k: int = 10
    mode: str = "hybrid"
    filters: Sequence[Filter] = field(default_factory=tuple)
    min_similarity: float | None = None
    rerank_depth: int = RERANK_DEPTH


class Retriever:
    """An open index and (loaded on first need) the embedding model that built it."""

    def __init__(self, index: RagIndex, embedder=None, *, device=None):
        self.index = index
        self._embedder = embedder
        self._device = device
        self._last_query: tuple[str, np.ndarray] | None = None  # evaluation searches one query in every mode

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = embedder_for(self.index, device=self._device)
        return self._embedder

    def query_vector(self, query: str) -> np.ndarray:
        if self._last_query is None or self._last_query[0] != query:
            self._last_query = (query, self.embedder.embed([query])[0].numpy())
        return self._last_query[1]

    def search(self, query: str, options: SearchOptions | None = None, reranker=None) -> list[Hit]:
        """The best `options.k` chunks for `query`."""
        options = options or SearchOptions()
        if options.mode not in MODES:
            raise RagIndexError(f"unknown search mode {options.mode!r}; use one of {', '.join(MODES)}")
        depth = max(options.k, options.rerank_depth if reranker else 0, CANDIDATES)
        vector = self.query_vector(query) if options.mode != "sparse" or options.min_similarity is not None else None
        hits = self._candidates(query, vector, options, depth)
        if options.min_similarity is not None:
            hits = [h for h in hits if h.scores["similarity"] >= options.min_similarity]
        if reranker is not None:
            hits = rerank(reranker, query, hits, options.rerank_depth)
        return hits[: options.k]

    def _candidates(self, query: str, vector, options: SearchOptions, depth: int) -> list[Hit]:
        index, filters = self.index, options.filters
        if options.mode == "dense":
            hits = index.hits(index.dense(vector, depth, filters), "dense")
        elif options.mode == "sparse":
            hits = index.hits(index.sparse(query, depth, filters), "sparse")
        else:
            dense = index.dense(vector, depth, filters)
            sparse = index.sparse(query, depth, filters)
            hits = index.hits(reciprocal_rank_fusion([dense, sparse]), "rrf")
            _attach(hits, "dense", dense)
            _attach(hits, "sparse", sparse)
        if vector is not None:
            _attach(hits, "similarity", index.similarities([h.chunk_id for h in hits], vector))
        return hits


def reciprocal_rank_fusion(rankings: Sequence[Sequence[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked lists of (id, score): each id scores sum(1 / (k + rank)), ranks counted from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def rerank(reranker, query: str, hits: list[Hit], depth: int) -> list[Hit]:
    """Re-order the first `depth` hits by the reranker's relevance score; the rest keep their order after."""
    head, tail = hits[:depth], hits[depth:]
    scores = reranker.score(query, [passage_text(h) for h in head])
    head = [replace(h, score=float(s), scores={**h.scores, "rerank": float(s)}) for h, s in zip(head, scores)]
    return sorted(head, key=lambda h: -h.score) + tail  # sorted() is stable: ties keep the retrieval order


def passage_text(hit: Hit) -> str:
    return f"{hit.context}\n\n{hit.text}" if hit.context else hit.text


def embedder_for(index: RagIndex, *, device=None):
    """The embedding model that built `index`, checked against the weights' sha256 it recorded."""
    from pellucid.engine.embed import load_embedder

    record = index.model
    if record is None:
        raise RagIndexError(f"{index.path} is empty; add documents with `pellucid rag index FOLDER --db {index.path}`")
    embedder = load_embedder(record.name, device=device)
    if embedder.fingerprint != record.sha256:
        raise RagIndexError(
            f"the embedding model {record.name} is not the one that built {index.path} (weights sha256 "
            f"{embedder.fingerprint[:12]}, the index has {record.sha256[:12]}): its vectors would not be "
            f"comparable. Re-embed: `pellucid rag index FOLDER... --db {index.path} --reembed`."
        )
    return embedder


def _attach(hits: list[Hit], stage: str, scored: Sequence[tuple[int, float]]) -> None:
    by_id = dict(scored)
    for hit in hits:
        if hit.chunk_id in by_id:
            hit.scores[stage] = by_id[hit.chunk_id]
