"""Retrieval commands: embed, and rag index/search/ask/eval.

The index is one SQLite file: `--db FILE`, default `$PELLUCID_HOME/rag/index.db` (next to the model store,
`~/.cache/pellucid/rag/index.db`). One default collection, rather than a file in the current folder, means
`rag search` and `rag ask` find what `rag index` stored from whatever folder they run in, and the index never
lands inside the notes it indexes; documents are stored by absolute path. Use --db for separate collections.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pellucid import store
from pellucid.cli.common import command, positive_int, print_json, stream_to_stdout, table
from pellucid.errors import PellucidError

DEFAULT_EMBED_MODEL = "minilm-l6"


def default_db() -> Path:
    return store.home() / "rag" / "index.db"


def _add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None, metavar="FILE", help=f"the index file (default: {default_db()})")


def _db(args) -> Path:
    return args.db if args.db is not None else default_db()


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PellucidError(f"{flag} takes key=value, not {item!r}")
        out[key.strip()] = value.strip()
    return out


# -- embed ----------------------------------------------------------------------------------------------


def _add_embed(commands) -> None:
    p = command(commands, "embed", cmd_embed, "print the embedding vector of each text")
    p.add_argument("model", metavar="MODEL", help=f"an embedding model, e.g. {DEFAULT_EMBED_MODEL}")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed; - reads one text per line from stdin")
    p.add_argument("--json", action="store_true", help='print {"model", "dim", "embeddings": [[...], ...]}')
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")


def cmd_embed(args) -> int:
    """Embed each TEXT with MODEL (a BERT sentence-embedding model such as minilm-l6): pooled and
    L2-normalised as the model's sentence-transformers config says. Prints one vector per line."""
    from pellucid.engine.embed import load_embedder

    texts = [line for line in sys.stdin.read().splitlines() if line.strip()] if args.texts == ["-"] else args.texts
    embedder = load_embedder(store.resolve(args.model), device=args.device)
    vectors = embedder.embed(texts, batch_size=args.batch_size)
    truncated = sum(embedder.count_tokens(t) > embedder.max_tokens for t in texts)
    if truncated:
        print(f"warning: {truncated} text(s) exceed {embedder.max_tokens} tokens and were truncated", file=sys.stderr)
    if args.json:
        print_json(
            {
                "model": embedder.name,
                "dim": embedder.dim,
                "embeddings": [[round(x, 7) for x in v] for v in vectors.tolist()],
            }
        )
        return 0
    print(f"{embedder.name}: {len(texts)} vector(s) of {embedder.dim} dims", file=sys.stderr)
    for vector in vectors.tolist():
        print(" ".join(f"{x:.6f}" for x in vector))
    return 0


# -- rag ------------------------------------------------------------------------------------------------


def _add_rag(commands) -> None:
    p = command(commands, "rag", cmd_rag, "ask questions of your own documents: index, search, ask, eval")
    p.set_defaults(rag_parser=p)
    sub = p.add_subparsers(title="rag commands", metavar="COMMAND")
    for add in (_add_index, _add_search, _add_ask, _add_eval):
        add(sub)


def cmd_rag(args) -> int:
    """Retrieval-augmented generation over your own files: `rag index FOLDER` chunks and embeds them into
    one SQLite file, `rag search QUERY` finds passages, `rag ask QUESTION` answers with citations, and
    `rag eval QRELS.jsonl` measures retrieval against known answers."""
    args.rag_parser.print_help()
    return 2


# -- rag index ------------------------------------------------------------------------------------------


def _add_index(sub) -> None:
    p = command(sub, "index", cmd_index, "add files or folders to the index (txt, md, html, pdf)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (walked recursively)")
    _add_db_arg(p)
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag on every file (repeatable); search with --where KEY=VALUE",
    )
    p.add_argument(
        "--embed-model",
        default=None,
        metavar="MODEL",
        help=f"embedding model for a new index (default {DEFAULT_EMBED_MODEL})",
    )
    p.add_argument(
        "--chunk-tokens",
        type=positive_int,
        default=None,
        help="tokens per chunk, capped by the encoder's limit (default 300)",
    )
    p.add_argument(
        "--overlap", type=float, default=None, help="overlap between chunks, a fraction of a chunk (default 0.15)"
    )
    p.add_argument(
        "--reembed", action="store_true", help="drop every vector and re-embed everything (to change models)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")


def cmd_index(args) -> int:
    """Chunk and embed PATHs into the index. Only new and changed files are embedded (by content hash);
    files deleted from an indexed folder leave the index. Interrupting is safe: what was committed stays,
    and the next run continues."""
    from pellucid.engine.embed import load_embedder
    from pellucid.progress import ProgressBar
    from pellucid.rag.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, ChunkSettings
    from pellucid.rag.index import RagIndex
    from pellucid.rag.ingest import count_files, find_files, update_index

    tags = _key_values(args.tag, "--tag")
    try:
        settings = ChunkSettings(
            args.chunk_tokens or DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP if args.overlap is None else args.overlap
        )
    except ValueError as e:
        raise PellucidError(str(e)) from None
    sources = [find_files(p) for p in args.paths]
    with RagIndex(_db(args)) as index:
        recorded = index.model
        name = args.embed_model or (recorded.name if recorded else DEFAULT_EMBED_MODEL)
        embedder = load_embedder(name, device=args.device)
        with ProgressBar(count_files(sources), "indexing", unit="files") as bar:
            report = update_index(
                index, embedder, sources, tags=tags, settings=settings, reembed=args.reembed, on_file=bar.update
            )
        for path, why in report.failed:
            print(f"warning: skipped {path}: {why}", file=sys.stderr)
        print(f"{index.path}: {report.summary()}")
        print(f"{index.count_documents()} documents, {index.count_chunks()} chunks, embedded with {embedder.name}")
    return 0


# -- rag search -----------------------------------------------------------------------------------------


def _add_retrieval_args(p: argparse.ArgumentParser, k: int) -> None:
    _add_db_arg(p)
    p.add_argument("--k", type=positive_int, default=k, help=f"how many chunks (default {k})")
    p.add_argument(
        "--mode",
        choices=("dense", "sparse", "hybrid"),
        default="hybrid",
        help="retrieval (default hybrid: RRF of dense and BM25)",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep documents whose KEY matches VALUE (* and ? wildcards): path, title, section, type, root or a --tag key; repeatable",
    )
    p.add_argument(
        "--min-similarity",
        type=float,
        default=None,
        metavar="S",
        help="drop hits whose cosine similarity to the query is below S",
    )
    p.add_argument("--rerank", action="store_true", help="re-score the top candidates with a local LLM")
    _add_rerank_args(p)
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")


def _add_rerank_args(p: argparse.ArgumentParser) -> None:
    from pellucid.rag import RERANK_DEPTH, RERANK_METHODS

    p.add_argument(
        "--rerank-model",
        metavar="MODEL",
        help=f"a cross-encoder folder (BertForSequenceClassification) or an LLM (default {store.DEFAULT_MODEL})",
    )
    p.add_argument(
        "--rerank-method",
        choices=RERANK_METHODS,
        default=RERANK_METHODS[0],
        help="query-likelihood: how well the passage predicts the question (default); yes: P(yes) to 'does it answer?'",
    )
    p.add_argument(
        "--rerank-depth",
        type=positive_int,
        default=RERANK_DEPTH,
        help=f"candidates (chunks) to re-score (default {RERANK_DEPTH})",
    )


def _search_options(args):
    from pellucid.rag.index import Filter
    from pellucid.rag.retrieve import SearchOptions

    filters = [Filter.parse(w) for w in args.where]
    return SearchOptions(
        k=args.k, mode=args.mode, filters=filters, min_similarity=args.min_similarity, rerank_depth=args.rerank_depth
    )


def _reranker(args, llm=None):
    """The reranker the flags ask for: a cross-encoder folder, or an LLM (`llm` unless --rerank-model)."""
    from pellucid.rag.rerank import load_reranker

    return load_reranker(args.rerank_model, method=args.rerank_method, device=args.device, llm=llm)


def _add_search(sub) -> None:
    p = command(sub, "search", cmd_search, "find the chunks that best match a query")
    p.add_argument("query", metavar="QUERY")
    _add_retrieval_args(p, k=10)
    p.add_argument("--json", action="store_true", help="print the hits as JSON, with every stage's score")


def cmd_search(args) -> int:
    """Search the index. hybrid (the default) fuses dense (embedding cosine) and sparse (BM25) rankings by
    reciprocal rank fusion (k = 60); --rerank then re-scores the top candidates with a local LLM."""
    from pellucid.rag.index import RagIndex
    from pellucid.rag.retrieve import Retriever

    with RagIndex(_db(args), create=False) as index:
        retriever = Retriever(index, device=args.device)
        reranker = _reranker(args) if args.rerank else None
        hits = retriever.search(args.query, _search_options(args), reranker=reranker)
    if args.json:
        print_json([_hit_json(rank, h) for rank, h in enumerate(hits, 1)])
        return 0
    if not hits:
        print("no matches", file=sys.stderr)
        return 0
    for rank, hit in enumerate(hits, 1):
        where = f"  {hit.section}" if hit.section else ""
        print(f"{rank:>2}. {hit.score:.4f}  {hit.relpath}  [{hit.title}]{where}")
        preview = " ".join(hit.text.split())
        print(f"    {preview[:200]}{'...' if len(preview) > 200 else ''}")
    return 0


def _hit_json(rank: int, hit) -> dict:
    return {
        "rank": rank,
        "score": hit.score,
        "scores": hit.scores,
        "path": hit.path,
        "relpath": hit.relpath,
        "title": hit.title,
        "section": hit.section,
        "tags": hit.tags,
        "text": hit.text,
    }


# -- rag ask --------------------------------------------------------------------------------------------


def _add_ask(sub) -> None:
    p = command(sub, "ask", cmd_ask, "answer a question from the indexed documents, with citations")
    p.add_argument("question", metavar="QUESTION", help="the question; - reads standard input")
    p.add_argument(
        "--model", default=None, metavar="MODEL", help=f"the chat model that answers (default {store.DEFAULT_MODEL})"
    )
    _add_retrieval_args(p, k=5)
    p.add_argument("-n", "--max-tokens", type=positive_int, default=None, help="longest answer in tokens (default 400)")
    p.add_argument(
        "--ctx", type=positive_int, default=None, help="context window in tokens (default: min(model's, 4096))"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the same answer every time (default 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed when sampling")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt sent to the model (stderr)")


def cmd_ask(args) -> int:
    """Retrieve the best chunks for QUESTION, fit them into the model's context (dropping the lowest-ranked
    first), stream an answer that cites them like [2], then list the cited sources. Retrieved text is
    treated as data: special-token text and instruction-like lines in it are neutralised."""
    import pellucid
    from pellucid.rag.answer import DEFAULT_ANSWER_TOKENS, Answerer
    from pellucid.rag.index import RagIndex
    from pellucid.rag.retrieve import Retriever

    question = sys.stdin.read().strip() if args.question == "-" else args.question
    llm = pellucid.load(store.resolve(args.model), device=args.device, ctx=args.ctx)
    reranker = _reranker(args, llm) if args.rerank else None
    with RagIndex(_db(args), create=False) as index:
        hits = Retriever(index, device=args.device).search(question, _search_options(args), reranker=reranker)
    answerer = Answerer(llm, max_tokens=args.max_tokens or DEFAULT_ANSWER_TOKENS)
    plan = answerer.plan(question, hits)
    if plan.dropped:
        print(f"note: {len(plan.dropped)} source(s) did not fit in the {llm.ctx:,}-token context", file=sys.stderr)
    if args.show_prompt:
        print(llm.detokenize(plan.prompt_ids), file=sys.stderr)
    sampling = {"temperature": args.temperature} | ({"seed": args.seed} if args.seed is not None else {})
    generation = answerer.generate(plan, **sampling)
    stream_to_stdout(generation)
    _print_sources(plan, generation.text)
    print(f"[{generation.stats.summary()}]", file=sys.stderr)
    return 0


def _print_sources(plan, answer: str) -> None:
    if not plan.sources:
        print("\nNothing relevant was found in the index.")
        return
    if cited := plan.cited(answer):
        print("\nSources:")
    elif cited := plan.supporting(answer):
        print("\nThe answer cites no source by number; these share most of its words:")
    else:
        print("\nThe answer cites no source. Retrieved:")
        cited = plan.sources
    for source in cited:
        print(f"  [{source.number}] {source.label}  ({source.hit.relpath})")


# -- rag eval -------------------------------------------------------------------------------------------


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k takes a comma-separated list of cutoffs like 1,5,10, not {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError("cutoffs must be positive")
    return ks


def _add_eval(sub) -> None:
    p = command(sub, "eval", cmd_eval, "measure retrieval against known answers (Recall@k, MRR@10, nDCG@10)")
    p.add_argument("qrels", metavar="QRELS.jsonl", help='one {"query": "...", "relevant": ["doc", ...]} per line')
    _add_db_arg(p)
    p.add_argument("--k", type=_ks, default=(1, 5, 10), help="Recall cutoffs (default 1,5,10)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"dense": {"recall@1", ...}, "sparse": ..., "hybrid": ..., "hybrid+rerank": ...}',
    )
    _add_rerank_args(p)
    p.add_argument("--no-rerank", action="store_true", help="skip hybrid+rerank (it runs the LLM once per candidate)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the best available)")


def cmd_eval(args) -> int:
    """Evaluate retrieval on QRELS (queries with their relevant documents, as paths relative to the indexed
    folder or bare file names). Ranks documents by their best chunk and reports Recall@k, MRR@10 and nDCG@10
    for dense, sparse, hybrid and hybrid+rerank."""
    from pellucid.progress import ProgressBar
    from pellucid.rag.evaluate import evaluate, read_qrels
    from pellucid.rag.index import RagIndex
    from pellucid.rag.retrieve import Retriever

    qrels = read_qrels(args.qrels)
    reranker = None if args.no_rerank else _reranker(args)
    with RagIndex(_db(args), create=False) as index, ProgressBar(len(qrels), "evaluating", unit="queries") as bar:
        results = evaluate(
            Retriever(index, device=args.device), qrels, ks=args.k, reranker=reranker,
            rerank_depth=args.rerank_depth, on_query=bar.update,
        )  # fmt: skip
    if args.json:
        print_json({mode: {name: round(v, 4) for name, v in metrics.items()} for mode, metrics in results.items()})
        return 0
    names = list(next(iter(results.values())))
    rows = [("mode", *names)] + [(mode, *(f"{m[n]:.3f}" for n in names)) for mode, m in results.items()]
    print(table(rows))
    print(f"{len(qrels)} queries; documents ranked by their best chunk", file=sys.stderr)
    return 0


COMMANDS: list = [_add_embed, _add_rag]
