"""Retrieval quality on a real corpus nobody here wrote: the Debian FAQ, whose section titles are questions.

    apt-get install debian-faq                     # HTML under /usr/share/doc/debian/FAQ
    .venv/bin/python benchmarks/rag_eval.py        # build the corpus, index it, print the table
    .venv/bin/python benchmarks/rag_eval.py --extract tests/data/debian_faq/faq.jsonl --n 40

(Docker images often exclude /usr/share/doc from packages; then `apt-get download debian-faq && dpkg-deb
-x debian-faq_*.deb DIR` and pass --faq-dir DIR/usr/share/doc/debian/FAQ.)

The evaluation set: every FAQ section whose heading is a question ("7.2. What is a Debian control file?")
and whose answer has at least MIN_WORDS words becomes one document, `<chapter>/<number>.md`, holding the
chapter title as its heading and the answer *without* the question; the query is the question. So a system
scores only if it finds the answer from what the question asks, not by matching the heading. Answers
quote other sections' titles in cross-references ("see Section 12.1, "What other documentation
exists..."), which makes realistic near-misses.

Also measured: the time to index (chunk + embed + write) and the time per query of each mode.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FAQ_DIR = Path("/usr/share/doc/debian/FAQ")
MIN_WORDS = 15
QUESTION_HEADING = re.compile(r"^(\d+(?:\.\d+)+)\.\s+(.*\?.*)$")


@dataclass
class Entry:
    id: str  # "<chapter file stem>/<section number>", the document's path without ".md"
    chapter: str
    question: str
    answer: str


def faq_entries(faq_dir: Path) -> list[Entry]:
    from pellucid.rag.documents import read_document

    pages = sorted(faq_dir.glob("*.en.html"))
    if not pages:
        sys.exit(f"no *.en.html under {faq_dir}: install the debian-faq package (see this file's docstring)")
    entries = []
    for page in pages:
        doc = read_document(page)
        for section in doc.sections:
            match = QUESTION_HEADING.match(section.headings[-1]) if section.headings else None
            if match and len(section.text.split()) >= MIN_WORDS:
                stem = page.name.removesuffix(".en.html")
                entries.append(Entry(f"{stem}/{match.group(1)}", doc.title, match.group(2), section.text))
    return entries


def write_corpus(entries: list[Entry], folder: Path) -> Path:
    """One Markdown file per answer (chapter title as heading, no question) and qrels.jsonl; returns qrels."""
    docs = folder / "docs"
    for e in entries:
        path = docs / f"{e.id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {e.chapter}\n\n{e.answer}\n", encoding="utf-8")
    qrels = folder / "qrels.jsonl"
    qrels.write_text("".join(json.dumps({"query": e.question, "relevant": [f"{e.id}.md"]}) + "\n" for e in entries))
    return qrels


def run(entries: list[Entry], rerank_model: str | None, methods: list[str], rerank_depth: int, every: int = 1) -> None:
    import pellucid
    from pellucid.engine.embed import load_embedder
    from pellucid.rag.evaluate import evaluate, read_qrels
    from pellucid.rag.index import RagIndex
    from pellucid.rag.ingest import find_files, update_index
    from pellucid.rag.rerank import LLMReranker
    from pellucid.rag.retrieve import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        qrels = read_qrels(write_corpus(entries, Path(tmp)))[::every]  # every document stays indexed
        embedder = load_embedder("minilm-l6")
        with RagIndex(Path(tmp) / "index.db") as index:
            report = update_index(index, embedder, [find_files(Path(tmp) / "docs")])
            print(f"indexed {index.count_documents()} documents, {index.count_chunks()} chunks: {report.summary()}")
            retriever = Retriever(index, embedder)
            started = time.perf_counter()
            results = evaluate(retriever, qrels)
            per_query = (time.perf_counter() - started) / len(qrels)
            print(f"{len(qrels)} queries, dense + sparse + hybrid: {per_query * 1000:.1f} ms per query (all three)")
            llm = pellucid.load(rerank_model) if rerank_model and methods else None
            for method in methods if llm else []:
                reranker = LLMReranker(llm, method=method)
                started = time.perf_counter()
                progress = _progress(f"rerank ({method})", len(qrels), started)
                reranked = evaluate(retriever, qrels, reranker=reranker, rerank_depth=rerank_depth, on_query=progress)
                seconds = (time.perf_counter() - started) / len(qrels)
                print(f"hybrid+rerank, {reranker.name}, depth {rerank_depth}: {seconds:.2f} s per query")
                results[f"hybrid+rerank ({method})"] = reranked["hybrid+rerank"]
                print(f"  {method}: {json.dumps({k: round(v, 3) for k, v in reranked['hybrid+rerank'].items()})}")
    names = list(next(iter(results.values())))
    print("\n| mode | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for mode, metrics in results.items():
        print(f"| {mode} | " + " | ".join(f"{metrics[n]:.3f}" for n in names) + " |")


def _progress(label: str, total: int, started: float):
    """An on_query callback that prints a line every 10 queries (a full rerank run takes a while on a CPU)."""
    done = 0

    def on_query() -> None:
        nonlocal done
        done += 1
        if done % 10 == 0 or done == total:
            print(
                f"  {label}: {done}/{total} queries, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True
            )

    return on_query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faq-dir", type=Path, default=FAQ_DIR)
    parser.add_argument(
        "--extract", type=Path, help="write every n-th entry to this JSONL file (the test set) and stop"
    )
    parser.add_argument("--n", type=int, default=40, help="entries in the extract (default 40)")
    parser.add_argument("--rerank-model", default="smollm2-135m", help="'' to skip hybrid+rerank")
    parser.add_argument("--rerank-method", action="append", help="query-likelihood and/or yes (default: both)")
    parser.add_argument("--rerank-depth", type=int, default=10)
    parser.add_argument("--every", type=int, default=1, help="query every n-th question only (reranking is slow)")
    args = parser.parse_args()
    entries = faq_entries(args.faq_dir)
    if args.extract:
        step = len(entries) / args.n
        chosen = [entries[int(i * step)] for i in range(args.n)]
        args.extract.parent.mkdir(parents=True, exist_ok=True)
        args.extract.write_text("".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in chosen))
        print(f"wrote {len(chosen)} of {len(entries)} entries to {args.extract}")
        return
    methods = args.rerank_method or ["query-likelihood", "yes"]
    run(entries, args.rerank_model or None, methods, args.rerank_depth, args.every)


if __name__ == "__main__":
    main()
