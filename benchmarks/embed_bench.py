"""Embedding throughput: pellucid's encoder against sentence-transformers on the same chunks, in one run.

    .venv/bin/python benchmarks/embed_bench.py [--n 512] [--batch-size 32] [--repeats 5]

The texts are RAG chunks as `pellucid rag index` makes them (title + section context, up to MiniLM's 256
tokens) from Python's own documentation (the `pydoc_data.topics` module that ships with every Python, PSF
licence), so the benchmark runs offline and the same anywhere. Both sides embed the same list with the same
batch size and thread count, alternately, `--repeats` times; we report the median chunks/s of each and
the ratio, and check that the vectors agree (cosine).

sentence-transformers sorts a batch list by character length and pads each batch to its longest text;
pellucid sorts by token count (it tokenizes first), so batches pad less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chunks_of_python_docs(embedder, n: int) -> list[str]:
    import pydoc_data.topics

    from pellucid.rag.chunk import chunk_document
    from pellucid.rag.documents import Document, Section

    topics = pydoc_data.topics.topics
    texts: list[str] = []
    for name in sorted(topics):
        doc = Document(Path(name), f"Python reference: {name}", [Section([], topics[name])])
        texts += [c.embed_text for c in chunk_document(doc, embedder.count_tokens, embedder.max_tokens)]
        if len(texts) >= n:
            break
    return texts[:n]


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from pellucid import store
    from pellucid.engine.embed import load_embedder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--n", type=int, default=512, help="chunks to embed (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    embedder = load_embedder(args.model, device="cpu")
    oracle = SentenceTransformer(str(store.resolve(args.model).path), device="cpu")
    texts = chunks_of_python_docs(embedder, args.n)
    tokens = [min(embedder.count_tokens(t), embedder.max_tokens) for t in texts]
    print(f"{len(texts)} chunks, {statistics.mean(tokens):.0f} tokens on average (max {max(tokens)}), "
          f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip

    ours, theirs = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        a = embedder.embed(texts, batch_size=args.batch_size)
        ours.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        b = oracle.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
        theirs.append(len(texts) / (time.perf_counter() - started))
    cosine = torch.nn.functional.cosine_similarity(a, b.cpu(), dim=1)
    print(
        f"pellucid               {statistics.median(ours):7.1f} chunks/s  (runs: {', '.join(f'{x:.1f}' for x in ours)})"
    )
    print(
        f"sentence-transformers  {statistics.median(theirs):7.1f} chunks/s  (runs: {', '.join(f'{x:.1f}' for x in theirs)})"
    )
    print(f"ratio {statistics.median(ours) / statistics.median(theirs):.2f}x; cosine min {cosine.min():.7f}")


if __name__ == "__main__":
    main()
