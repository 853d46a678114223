"""Dense search: the chunks whose vectors have the largest inner product with the query's.

Vectors are L2-normalised, so the inner product is the cosine similarity. Up to `ANN_THRESHOLD` chunks an
exact search (one matrix-vector product) is both the fastest and the most accurate choice: 100k x 384
float32 is 150 MB and a product over it takes milliseconds. Above that, a faiss HNSW graph (hierarchical
navigable small world: greedy walks down a layered neighbour graph) answers in well under a millisecond
at a recall near 1, for a build cost paid once per index change.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

ANN_THRESHOLD = 100_000
HNSW_M = 32  # neighbours per node: faiss's recommended range is 16-64; more = better recall, more memory
HNSW_EF_CONSTRUCTION = 80  # candidate list while building (faiss's default 40 loses recall on text vectors)
HNSW_EF_SEARCH = 128  # candidate list while searching; raised to k when k is larger


class ExactSearch:
    def __init__(self, ids: np.ndarray, matrix: np.ndarray):
        self.ids = ids  # (N,) int64 chunk ids
        self.matrix = matrix  # (N, dim) float32

    def search(self, query: np.ndarray, k: int, allowed: Iterable[int] | None = None) -> list[tuple[int, float]]:
        scores = self.matrix @ query  # (N,)
        if allowed is not None:
            keep = np.isin(self.ids, np.fromiter(allowed, dtype=np.int64))
            scores = np.where(keep, scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top]


class HNSWSearch:
    def __init__(self, index):
        self.index = index  # a faiss.IndexIDMap over an IndexHNSWFlat (inner product)

    @classmethod
    def build(cls, ids: np.ndarray, matrix: np.ndarray) -> HNSWSearch:
        import faiss

        hnsw = faiss.IndexHNSWFlat(matrix.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap(hnsw)
        index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), ids.astype(np.int64))
        return cls(index)

    @classmethod
    def from_bytes(cls, data: bytes) -> HNSWSearch:
        import faiss

        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int, allowed: Iterable[int] | None = None) -> list[tuple[int, float]]:
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = max(HNSW_EF_SEARCH, k)
        if allowed is not None:
            allowed = np.fromiter(allowed, dtype=np.int64)
            if allowed.size == 0:
                return []
            params.sel = faiss.IDSelectorBatch(allowed)  # IndexIDMap translates it to its internal ids
        scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
