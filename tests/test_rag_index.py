"""The SQLite index: incremental re-indexing, deletions, interrupted runs, model mixing, filters, search.

Most tests use a tiny deterministic embedder (hashed bag of words: texts sharing words get similar vectors)
so that they test the index, not the model, and run in milliseconds; one test runs the real MiniLM
encoder end to end.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from pellucid.rag import ingest
from pellucid.rag.index import Filter, ModelRecord, RagIndex, RagIndexError, fts_query
from pellucid.rag.ingest import find_files, update_index
from pellucid.rag.retrieve import Retriever, SearchOptions, reciprocal_rank_fusion


class WordHashEmbedder:
    """Bag of words hashed into 64 dims, L2-normalised; one token per word plus [CLS]/[SEP]."""

    name = source = "word-hash"
    dim, max_tokens, fingerprint = 64, 128, "f" * 64

    def __init__(self):
        self.embedded: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def embed(self, texts, *, batch_size: int = 32) -> torch.Tensor:
        self.embedded += texts
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return torch.nn.functional.normalize(out, dim=1)


DOCS = {
    "cats.md": "# Cats\n\n## Feeding\n\nCats eat fish and chicken twice a day.\n\n## Sleep\n\nCats sleep sixteen hours.",
    "dogs.txt": "Dogs need a walk every morning and love to fetch sticks.",
    "sub/coffee.md": "# Coffee\n\nEspresso is brewed at nine bar of pressure.",
    "sub/tea.html": "<title>Tea</title><h1>Tea</h1><p>Green tea is steeped at eighty degrees.</p>",
}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "notes"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def index(tmp_path):
    with RagIndex(tmp_path / "index.db") as index:
        yield index


def _consistent(index: RagIndex) -> None:
    """Every chunk has a document and an FTS row, and nothing else exists."""
    db = index.db
    assert db.execute("SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM chunks_fts").fetchone()[0] == index.count_chunks()
    assert db.execute("SELECT count(*) FROM chunks_fts WHERE rowid NOT IN (SELECT id FROM chunks)").fetchone()[0] == 0


def test_index_then_reindex_only_changed_files(index, corpus):
    embedder = WordHashEmbedder()
    report = update_index(index, embedder, [find_files(corpus)], tags={"owner": "me"})
    assert (len(report.added), report.unchanged, report.failed) == (4, 0, [])
    assert index.count_documents() == 4 and index.count_chunks() == 5  # cats.md has two sections
    _consistent(index)

    embedder.embedded.clear()
    report = update_index(index, embedder, [find_files(corpus)])
    assert (report.added, report.updated, report.unchanged, report.chunks) == ([], [], 4, 0)
    assert embedder.embedded == []

    (corpus / "dogs.txt").write_text("Dogs need two walks a day.")
    (corpus / "sub" / "coffee.md").unlink()
    (corpus / "new.txt").write_text("Parrots can talk.")
    report = update_index(index, embedder, [find_files(corpus)])
    assert [p.rsplit("/", 1)[-1] for p in report.updated] == ["dogs.txt"]
    assert [p.rsplit("/", 1)[-1] for p in report.added] == ["new.txt"]
    assert [p.rsplit("/", 1)[-1] for p in report.removed] == ["coffee.md"]
    assert embedder.embedded == ["dogs\n\nDogs need two walks a day.", "new\n\nParrots can talk."]
    assert {d.relpath for d in index.documents()} == {"cats.md", "dogs.txt", "new.txt", "sub/tea.html"}
    assert all(d.tags == {"owner": "me"} for d in index.documents() if d.relpath != "new.txt")
    _consistent(index)


def test_indexing_a_single_file_does_not_delete_its_neighbours(index, corpus):
    embedder = WordHashEmbedder()
    update_index(index, embedder, [find_files(corpus)])
    report = update_index(index, embedder, [find_files(corpus / "dogs.txt")])
    assert (report.removed, report.unchanged) == ([], 1)
    assert index.count_documents() == 4


def test_walk_skips_hidden_files_other_suffixes_and_symlinked_duplicates(corpus):
    (corpus / ".secret.md").write_text("hidden")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "notes.md").write_text("hidden too")
    (corpus / "image.png").write_bytes(b"\x89PNG")
    (corpus / "zz-link.md").symlink_to(corpus / "cats.md")
    source = find_files(corpus)
    assert source.walked and [f.relative_to(corpus).as_posix() for f in source.files] == sorted(DOCS)
    assert not find_files(corpus / "cats.md").walked


def test_changed_chunk_settings_rechunk(index, corpus):
    from pellucid.rag.chunk import ChunkSettings

    embedder = WordHashEmbedder()
    update_index(index, embedder, [find_files(corpus)])
    report = update_index(index, embedder, [find_files(corpus)], settings=ChunkSettings(64, 0.1))
    assert len(report.updated) == 4


class Interrupt(Exception):
    pass


def test_an_interrupted_run_leaves_a_consistent_index_and_resumes(index, corpus, monkeypatch):
    monkeypatch.setattr(ingest, "EMBED_BATCH_CHUNKS", 4)  # a batch every file or two
    embedder = WordHashEmbedder()
    calls = 0
    real_embed = embedder.embed

    def failing_embed(texts, **kw):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Interrupt  # as Ctrl-C would, in the middle of the run
        return real_embed(texts, **kw)

    monkeypatch.setattr(embedder, "embed", failing_embed)
    with pytest.raises(Interrupt):
        update_index(index, embedder, [find_files(corpus)])
    done = index.count_documents()
    assert 0 < done < len(list(corpus.rglob("*.*")))
    _consistent(index)

    monkeypatch.setattr(embedder, "embed", real_embed)
    report = update_index(index, embedder, [find_files(corpus)])
    assert report.unchanged == done and len(report.added) == index.count_documents() - done
    _consistent(index)


def test_refuses_to_mix_embedding_models(index, corpus):
    update_index(index, WordHashEmbedder(), [find_files(corpus)])
    other = ModelRecord("other-model", 64, "0" * 64)
    with pytest.raises(RagIndexError, match="another model.*--reembed"):
        index.bind_model(other)
    index.bind_model(other, replace=True)
    assert index.model == other and index.count_chunks() == 0
    _consistent(index)


def test_search_modes_filters_and_threshold(index, corpus):
    update_index(index, WordHashEmbedder(), [find_files(corpus)], tags={"lang": "en"})
    # Re-indexing an unchanged file re-tags it without re-embedding; its path is now relative to sub/.
    update_index(index, WordHashEmbedder(), [find_files(corpus / "sub" / "tea.html")], tags={"lang": "fr"})
    retriever = Retriever(index, WordHashEmbedder())
    for mode in ("dense", "sparse", "hybrid"):
        hits = retriever.search("how many hours do cats sleep", SearchOptions(k=3, mode=mode))
        assert (hits[0].relpath, hits[0].section) == ("cats.md", "Sleep"), mode
    hits = retriever.search("tea", SearchOptions(k=10, mode="sparse"))
    assert [h.relpath for h in hits] == ["tea.html"]
    assert hits[0].title == "Tea" and hits[0].tags == {"lang": "fr"}

    def relpaths(query, *where, mode="hybrid"):
        options = SearchOptions(k=10, mode=mode, filters=[Filter.parse(w) for w in where])
        return {h.relpath for h in retriever.search(query, options)}

    assert relpaths("cats dogs coffee tea", "path=*/sub/*") == {"sub/coffee.md", "tea.html"}
    assert relpaths("cats dogs coffee tea", "type=md", mode="dense") == {"cats.md", "sub/coffee.md"}
    assert relpaths("cats", "section=Feed*") == {"cats.md"}
    assert relpaths("cats dogs", "lang=en") == {"cats.md", "dogs.txt", "sub/coffee.md"}
    assert relpaths("cats dogs", "lang=fr", "type=html") == {"tea.html"}
    assert relpaths("cats dogs", "lang=de") == set()
    with pytest.raises(RagIndexError, match="key=value"):
        Filter.parse("nonsense")

    similar = retriever.search("cats sleep sixteen hours", SearchOptions(k=10, min_similarity=0.5))
    assert [h.section for h in similar] == ["Sleep"]


def test_hnsw_above_the_threshold_matches_exact_search(tmp_path, corpus):
    embedder = WordHashEmbedder()
    with RagIndex(tmp_path / "exact.db") as exact, RagIndex(tmp_path / "ann.db", ann_threshold=2) as ann:
        for index in (exact, ann):
            update_index(index, embedder, [find_files(corpus)])
        assert ann.has_fresh_ann() and not exact.has_fresh_ann()
        query = embedder.embed(["cats sleep hours"])[0].numpy()
        (ann_ids, ann_scores), (exact_ids, exact_scores) = zip(*ann.dense(query, 3)), zip(*exact.dense(query, 3))
        assert ann_ids == exact_ids and ann_scores == pytest.approx(exact_scores, abs=1e-6)
        (corpus / "dogs.txt").write_text("Dogs sleep too.")
        update_index(ann, embedder, [find_files(corpus)])
        assert ann.has_fresh_ann()  # rebuilt and stored after the change
        ids = ann.allowed_chunks([Filter.parse("path=dogs.txt")])
        assert [i for i, _ in ann.dense(query, 3, [Filter.parse("path=dogs.txt")])] == sorted(ids)


def test_fts_query_is_always_valid_syntax(index, corpus):
    update_index(index, WordHashEmbedder(), [find_files(corpus)])
    for query in ['"unbalanced', "cats AND OR NOT", "NEAR(cats dogs)", "col:cats", "-cats*", "^", "what is it"]:
        index.sparse(query, 5)  # no sqlite3.OperationalError
    assert fts_query("What is the espresso pressure?") == '"espresso" OR "pressure"'
    assert fts_query("what is it") == '"what" OR "is" OR "it"'  # only stopwords: keep them


def test_rrf_fuses_by_rank():
    fused = reciprocal_rank_fusion([[(1, 0.9), (2, 0.8)], [(2, 12.0), (3, 5.0)]], k=60)
    assert [i for i, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_not_an_index(tmp_path):
    (tmp_path / "x.db").write_text("not sqlite at all, just text" * 100)
    with pytest.raises(RagIndexError, match="not a pellucid index"):
        RagIndex(tmp_path / "x.db")
    with pytest.raises(RagIndexError, match="no index at"):
        RagIndex(tmp_path / "missing.db", create=False)


def test_real_encoder_end_to_end(index, corpus, minilm_path):
    from pellucid.engine.embed import load_embedder

    embedder = load_embedder(minilm_path, device="cpu")
    update_index(index, embedder, [find_files(corpus)])
    assert index.model.dim == 384 and index.model.sha256 == embedder.fingerprint
    ids, matrix = index.vectors()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)
    assert max(r[0] for r in index.db.execute("SELECT n_tokens FROM chunks")) <= embedder.max_tokens
    hits = Retriever(index, embedder).search("what temperature for green tea?", SearchOptions(k=1, mode="dense"))
    assert hits[0].relpath == "sub/tea.html"
