"""The RAG index: one SQLite file holding documents, chunks, their vectors and a full-text index.

    documents   one row per indexed file: path, title, sha256 of its bytes, mtime, user tags (JSON), and
                how it was chunked; a file whose hash and chunking are unchanged is never re-embedded
    chunks      one row per chunk: its document, section, text, token count, and its vector (float32 bytes)
    chunks_fts  an FTS5 table over (title, section, text) with the porter stemmer; rowid = chunks.id;
                sparse retrieval ranks it with FTS5's bm25()
    meta        the embedding model (name, dimension, sha256 of its weights): vectors from two models are
                not comparable, so an index refuses a second model
    ann         a serialised faiss HNSW graph, kept only above vectors.ANN_THRESHOLD chunks

Why SQLite: one file that a user can copy, back up or delete; transactions, so a file's chunks and vectors
land together or not at all (an interrupted `rag index` leaves the index as it was after the last
committed file, and the next run picks up where it stopped); FTS5 ships with Python's sqlite3.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pellucid.errors import PellucidError
from pellucid.rag.chunk import Chunk
from pellucid.rag.vectors import ANN_THRESHOLD, ExactSearch, HNSWSearch

SCHEMA_VERSION = "1"
ANN_PART_BYTES = 256 << 20  # the HNSW graph is stored in parts: SQLite caps one value at 1 GB

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- absolute
    root TEXT NOT NULL,             -- the folder it was indexed under
    relpath TEXT NOT NULL,          -- path relative to root: what evaluation files name
    title TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    chunking TEXT NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    section TEXT NOT NULL,
    context TEXT NOT NULL,
    text TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(title, section, text, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS ann (part INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

# Words too common to help a bag-of-words match (Lucene's English stop set, plus question words).
_STOPWORDS_TEXT = """a an and are as at be but by for if in into is it no not of on or such that the their then there
these they this to was will with what which who whom how why when where do does did can could should would i you me
my we our your"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


class RagIndexError(PellucidError):
    """The index cannot serve this request (another model's vectors, a bad filter, a corrupt file)."""


@dataclass(frozen=True)
class ModelRecord:
    name: str  # a store name, or an absolute folder path: what load_embedder takes to load it again
    dim: int
    sha256: str


@dataclass
class DocumentRecord:
    path: str
    root: str
    relpath: str
    title: str
    sha256: str
    size: int
    mtime: float
    tags: dict[str, str] = field(default_factory=dict)
    chunking: str = ""
    id: int | None = None


@dataclass
class Hit:
    """A retrieved chunk with its document's facts; `score` is the ranking score of the stage that made it."""

    chunk_id: int
    score: float
    text: str = ""
    section: str = ""
    context: str = ""
    title: str = ""
    path: str = ""
    relpath: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # per stage: dense, sparse, rrf, rerank


@dataclass(frozen=True)
class Filter:
    """`--where key=value`: value is a glob pattern (* and ?), matched case-sensitively."""

    key: str
    pattern: str

    @classmethod
    def parse(cls, text: str) -> Filter:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise RagIndexError(f"--where takes key=value (e.g. type=md, path=notes/*, lang=en), not {text!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key.strip()):
            raise RagIndexError(f"--where key {key!r} may use only letters, digits, '_', '.', '-'")
        return cls(key.strip(), value.strip())

    def sql(self) -> tuple[str, list[str]]:
        """A WHERE clause over documents `d` (and chunks `c`), with its parameters."""
        if self.key == "path":
            return "(d.relpath GLOB ? OR d.path GLOB ?)", [self.pattern, self.pattern]
        if self.key == "type":
            return "lower(d.path) GLOB ?", ["*." + self.pattern.lower().lstrip(".")]
        if self.key in ("title", "root"):
            return f"d.{self.key} GLOB ?", [self.pattern]
        if self.key == "section":
            return "c.section GLOB ?", [self.pattern]
        return "json_extract(d.tags, ?) GLOB ?", [f'$."{self.key}"', self.pattern]


class RagIndex:
    """An open index file. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, ann_threshold: int = ANN_THRESHOLD, create: bool = True):
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise RagIndexError(f"no index at {self.path}; build one with `pellucid rag index FOLDER --db {self.path}`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ann_threshold = ann_threshold
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (see `transaction`).
            # timeout: another `rag index` holding the write lock is waited for, not reported as an error.
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self.db.executescript(SCHEMA)
            version = self._meta("schema")
        except sqlite3.DatabaseError as e:
            raise RagIndexError(f"{self.path} is not a pellucid index ({e}); pass another --db") from None
        if version is None:
            self._set_meta("schema", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise RagIndexError(
                f"{self.path} uses index schema {version}; this pellucid reads {SCHEMA_VERSION}. Rebuild it."
            )
        self._dense_cache: tuple[int, ExactSearch | HNSWSearch] | None = None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RagIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside land together or not at all (Ctrl-C included)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta ---------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        """Bumped by every change to the chunks: a cached or stored ANN graph from another generation is stale."""
        return int(self._meta("generation") or 0)

    def _bump_generation(self) -> None:
        self._set_meta("generation", str(self.generation + 1))

    @property
    def model(self) -> ModelRecord | None:
        name, dim, sha = self._meta("embed_model"), self._meta("embed_dim"), self._meta("embed_sha256")
        return ModelRecord(name, int(dim), sha) if name and dim and sha else None

    def bind_model(self, record: ModelRecord, *, replace: bool = False) -> None:
        """Record the embedding model of an empty index, or check that `record` is the one it holds.
        `replace` drops every document first (a full re-embed with another model)."""
        current = self.model
        if current is not None and current.sha256 == record.sha256 and current.dim == record.dim:
            return
        if current is not None and not replace and self.count_chunks():
            raise RagIndexError(
                f"{self.path} holds vectors from {current.name} ({current.dim} dims, weights sha256 "
                f"{current.sha256[:12]}), and {record.name} ({record.dim} dims, sha256 {record.sha256[:12]}) is "
                f"another model: their vectors are not comparable. Re-embed everything with it (add --reembed), "
                f"use --embed-model {current.name}, or index into another --db."
            )
        with self.transaction():
            if replace:
                for (path,) in self.db.execute("SELECT path FROM documents").fetchall():
                    self._delete(path)
            self._set_meta("embed_model", record.name)
            self._set_meta("embed_dim", str(record.dim))
            self._set_meta("embed_sha256", record.sha256)

    # -- documents ----------------------------------------------------------------------------------------
    def document(self, path: str) -> DocumentRecord | None:
        row = self.db.execute(
            "SELECT path, root, relpath, title, sha256, size, mtime, tags, chunking, id FROM documents WHERE path = ?",
            (path,),
        ).fetchone()
        return _document(row) if row else None

    def documents(self) -> list[DocumentRecord]:
        rows = self.db.execute(
            "SELECT path, root, relpath, title, sha256, size, mtime, tags, chunking, id FROM documents ORDER BY path"
        )
        return [_document(row) for row in rows]

    def paths_under(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        rows = self.db.execute("SELECT path FROM documents WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        return [r[0] for r in rows]

    def put_document(self, doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Replace `doc.path`'s chunks with `chunks` (call inside `transaction()`)."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        self._delete(doc.path)
        cur = self.db.execute(
            "INSERT INTO documents (path, root, relpath, title, sha256, size, mtime, tags, chunking, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (doc.path, doc.root, doc.relpath, doc.title, doc.sha256, doc.size, doc.mtime, json.dumps(doc.tags),
             doc.chunking, time.time()),
        )  # fmt: skip
        doc_id = cur.lastrowid
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for chunk, vector in zip(chunks, vectors):
            cur = self.db.execute(
                "INSERT INTO chunks (doc_id, ordinal, section, context, text, n_tokens, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc_id, chunk.ordinal, chunk.section, chunk.context, chunk.text, chunk.n_tokens, vector.tobytes()),
            )
            self.db.execute(
                "INSERT INTO chunks_fts (rowid, title, section, text) VALUES (?, ?, ?, ?)",
                (cur.lastrowid, doc.title, chunk.section, chunk.text),
            )
        self._bump_generation()

    def update_document_facts(self, doc: DocumentRecord) -> None:
        """An unchanged file that moved roots, got a new mtime or new tags: no re-embedding needed."""
        self.db.execute(
            "UPDATE documents SET root = ?, relpath = ?, mtime = ?, tags = ? WHERE path = ?",
            (doc.root, doc.relpath, doc.mtime, json.dumps(doc.tags), doc.path),
        )

    def delete_document(self, path: str) -> None:
        """Remove a document and its chunks (call inside `transaction()`)."""
        self._delete(path)

    def _delete(self, path: str) -> None:
        row = self.db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        if row is None:
            return
        self.db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE doc_id = ?)", row)
        self.db.execute("DELETE FROM chunks WHERE doc_id = ?", row)
        self.db.execute("DELETE FROM documents WHERE id = ?", row)
        self._bump_generation()

    def count_chunks(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def count_documents(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    # -- chunks -------------------------------------------------------------------------------------------
    def hits(self, scored: Sequence[tuple[int, float]], stage: str) -> list[Hit]:
        """Full Hits for (chunk id, score) pairs, in the given order."""
        if not scored:
            return []
        ids = [i for i, _ in scored]
        rows = self.db.execute(
            "SELECT c.id, c.text, c.section, c.context, d.title, d.path, d.relpath, d.tags FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        by_id = {r[0]: r for r in rows}
        hits = []
        for chunk_id, score in scored:
            if chunk_id in by_id:
                _, text, section, context, title, path, relpath, tags = by_id[chunk_id]
                hits.append(Hit(chunk_id, score, text, section, context, title, path, relpath, json.loads(tags),
                                {stage: score}))  # fmt: skip
        return hits

    def allowed_chunks(self, filters: Sequence[Filter]) -> set[int] | None:
        """The chunk ids that pass every filter (None = no filters)."""
        if not filters:
            return None
        where, params = _where(filters)
        rows = self.db.execute(f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {where}", params)
        return {r[0] for r in rows}

    # -- sparse: FTS5 + BM25 ------------------------------------------------------------------------------
    def sparse(self, query: str, k: int, filters: Sequence[Filter] = ()) -> list[tuple[int, float]]:
        """The k chunks that best match `query`'s words by BM25 (score = -bm25(): higher is better)."""
        match = fts_query(query)
        if not match:
            return []
        where, params = _where(filters)
        rows = self.db.execute(
            "SELECT c.id, bm25(chunks_fts) AS rank FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
            f"JOIN documents d ON d.id = c.doc_id WHERE chunks_fts MATCH ? AND {where} ORDER BY rank LIMIT ?",
            [match, *params, k],
        )
        return [(chunk_id, -rank) for chunk_id, rank in rows]

    # -- dense: exact or HNSW -----------------------------------------------------------------------------
    def dense(self, vector: np.ndarray, k: int, filters: Sequence[Filter] = ()) -> list[tuple[int, float]]:
        """The k chunks whose vectors are most similar to `vector` (cosine)."""
        search = self.dense_search()
        if search is None:
            return []
        return search.search(np.asarray(vector, dtype=np.float32), k, self.allowed_chunks(filters))

    def dense_search(self) -> ExactSearch | HNSWSearch | None:
        """Exact search below the ANN threshold; above it the stored HNSW graph (rebuilt if stale)."""
        generation = self.generation
        if self._dense_cache is not None and self._dense_cache[0] == generation:
            return self._dense_cache[1]
        if self.count_chunks() == 0:
            return None
        search: ExactSearch | HNSWSearch
        if self.count_chunks() > self.ann_threshold:
            search = self._stored_ann(generation) or self.build_ann()
        else:
            search = ExactSearch(*self.vectors())
        self._dense_cache = (generation, search)
        return search

    def similarities(self, ids: Sequence[int], vector: np.ndarray) -> list[tuple[int, float]]:
        """(id, cosine similarity to `vector`) for the given chunks."""
        if not ids:
            return []
        rows = self.db.execute(
            f"SELECT id, embedding FROM chunks WHERE id IN ({','.join('?' * len(ids))})", list(ids)
        ).fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return list(zip((r[0] for r in rows), (matrix @ np.asarray(vector, dtype=np.float32)).tolist()))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), matrix (N, dim)) of every chunk."""
        rows = self.db.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, matrix

    def build_ann(self) -> HNSWSearch:
        """Build the HNSW graph over every vector and store it in the index (one transaction)."""
        search = HNSWSearch.build(*self.vectors())
        data = search.to_bytes()
        with self.transaction():
            self.db.execute("DELETE FROM ann")
            for part, start in enumerate(range(0, len(data), ANN_PART_BYTES)):
                self.db.execute(
                    "INSERT INTO ann (part, data) VALUES (?, ?)", (part, data[start : start + ANN_PART_BYTES])
                )
            self._set_meta("ann_generation", str(self.generation))
        return search

    def drop_ann(self) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM ann")
            self.db.execute("DELETE FROM meta WHERE key = 'ann_generation'")

    def has_fresh_ann(self) -> bool:
        return self._meta("ann_generation") == str(self.generation)

    def _stored_ann(self, generation: int) -> HNSWSearch | None:
        if self._meta("ann_generation") != str(generation):
            return None
        data = b"".join(r[0] for r in self.db.execute("SELECT data FROM ann ORDER BY part"))
        return HNSWSearch.from_bytes(data) if data else None


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression for free text: its words, quoted (so no word is read as FTS syntax), ORed
    (BM25 rewards chunks that match more of them), without stopwords unless nothing else is left."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    content = [w for w in words if w not in STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(content))


def _where(filters: Iterable[Filter]) -> tuple[str, list[str]]:
    clauses, params = ["1"], []
    for f in filters:
        clause, values = f.sql()
        clauses.append(clause)
        params.extend(values)
    return " AND ".join(clauses), params


def _document(row) -> DocumentRecord:
    path, root, relpath, title, sha, size, mtime, tags, chunking, doc_id = row
    return DocumentRecord(path, root, relpath, title, sha, size, mtime, json.loads(tags), chunking, doc_id)
