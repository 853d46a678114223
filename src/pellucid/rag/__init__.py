"""Retrieval-augmented generation: ask questions of your own documents, with citations.

The loop, one module per step, in the order data flows:

    documents.py  a file (txt, md, html, pdf) -> title + sections with their heading paths
    chunk.py      sections -> overlapping chunks of at most N encoder tokens, each with title/heading context
    (embedding)   pellucid.engine.embed: chunk text -> unit vectors (all-MiniLM-L6-v2 by default)
    index.py      one SQLite file: documents, chunks, vectors, an FTS5 full-text index, the model's identity
    vectors.py    dense search: exact below 100k chunks, a faiss HNSW graph above
    ingest.py     `rag index`: walk folders, re-embed only changed files, drop deleted ones, in transactions
    retrieve.py   dense, sparse (BM25) and hybrid (reciprocal rank fusion) search, filters, similarity floor
    rerank.py     re-score the top candidates with the local LLM (query likelihood, or P("yes"))
    prompt.py     the answer prompt: neutralised, fenced, numbered sources; citations in the answer
    answer.py     fit sources into the model's context and stream the answer
    evaluate.py   `rag eval`: Recall@k, MRR@10, nDCG@10 against known question -> document judgements

The commands are in pellucid.cli.rag; the benchmark on the Debian FAQ is benchmarks/rag_eval.py.
"""

# Here rather than in rerank.py and retrieve.py, which import torch and numpy: the command line's parser
# offers them as choices and defaults, and building it must not cost `pellucid run` an import of torch.
RERANK_METHODS = ("query-likelihood", "yes")  # how the LLM scores a pair: rerank.py
RERANK_DEPTH = 10  # each candidate costs one LLM forward pass over ~300 tokens
