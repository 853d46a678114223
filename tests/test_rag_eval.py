"""Retrieval evaluation: the metrics by hand, QRELS parsing, and a real corpus (a Debian FAQ extract).

The FAQ extract (tests/data/debian_faq, 40 question/answer sections; see its README for provenance and
licence) is indexed with the real MiniLM encoder; each question must find its answer, whose document
does not contain the question. The floors below sit ~0.1 under what was measured (docs/benchmarks.md),
so they catch a broken stage (a dense search returning noise scores ~0.1, a sparse one ~0) without
flaking on a changed tie order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pellucid import cli
from pellucid.errors import PellucidError
from pellucid.rag.evaluate import judge, query_metrics, read_qrels

FAQ = Path(__file__).parent / "data" / "debian_faq" / "faq.jsonl"


def test_metrics_by_hand():
    marks = judge(["a.md", "x/b.md", "c.md", "b.md"], ["b.md", "c.md"])  # bare name b.md matches x/b.md once
    assert marks == [False, True, True, False]
    m = query_metrics(marks, n_relevant=2, ks=(1, 2, 10))
    assert (m["recall@1"], m["recall@2"], m["recall@10"]) == (0.0, 0.5, 1.0)
    assert m["mrr@10"] == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert judge(["notes/a.md"], ["a.md"]) == [True] and judge(["notes/a.md"], ["other/a.md"]) == [False]
    assert query_metrics([False] * 10, 1, (1,))["ndcg@10"] == 0.0


def test_qrels_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "relevant": ["a.md"]}\n{"question": "no query key"}\n')
    with pytest.raises(PellucidError, match="bad.jsonl:2"):
        read_qrels(bad)
    bad.write_text("\n")
    with pytest.raises(PellucidError, match="no queries"):
        read_qrels(bad)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"query": "q", "relevant": "a.md"}\n')
    assert read_qrels(ok)[0].relevant == ("a.md",)


@pytest.fixture(scope="module")
def faq_corpus(tmp_path_factory, minilm_path):
    """The extract as Markdown files plus qrels.jsonl, indexed into index.db with the CLI."""
    root = tmp_path_factory.mktemp("faq")
    lines = []
    for entry in map(json.loads, FAQ.read_text().splitlines()):
        doc = root / "docs" / f"{entry['id']}.md"
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(f"# {entry['chapter']}\n\n{entry['answer']}\n")
        lines.append(json.dumps({"query": entry["question"], "relevant": [f"{entry['id']}.md"]}))
    (root / "qrels.jsonl").write_text("\n".join(lines) + "\n")
    db = str(root / "index.db")
    assert cli.main(["rag", "index", str(root / "docs"), "--db", db, "--embed-model", str(minilm_path)]) == 0
    return root


def test_debian_faq_retrieval(faq_corpus, capsys):
    capsys.readouterr()
    db = str(faq_corpus / "index.db")
    assert cli.main(["rag", "eval", str(faq_corpus / "qrels.jsonl"), "--db", db, "--json", "--no-rerank"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"dense", "sparse", "hybrid"}
    assert set(results["dense"]) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
    floors = {"dense": 0.8, "sparse": 0.6, "hybrid": 0.77}  # measured 0.897, 0.702, 0.871
    for mode, floor in floors.items():
        assert results[mode]["ndcg@10"] >= floor, (mode, results[mode])
        assert results[mode]["recall@10"] >= results[mode]["recall@5"] >= results[mode]["recall@1"]
    assert results["hybrid"]["recall@10"] >= 0.85


@pytest.mark.slow
def test_eval_with_rerank_table(faq_corpus, tmp_path, capsys):
    """hybrid+rerank through the CLI on two queries (the LLM reranker reads 2 x 2 passages)."""
    qrels = tmp_path / "two.jsonl"
    qrels.write_text("".join((faq_corpus / "qrels.jsonl").read_text().splitlines(keepends=True)[:2]))
    capsys.readouterr()
    db = str(faq_corpus / "index.db")
    assert cli.main(["rag", "eval", str(qrels), "--db", db, "--k", "1,3", "--rerank-depth", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["mode", "recall@1", "recall@3", "mrr@10", "ndcg@10"]
    assert [line.split()[0] for line in out[1:]] == ["dense", "sparse", "hybrid", "hybrid+rerank"]
