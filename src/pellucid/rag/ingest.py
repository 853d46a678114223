"""`rag index`: files on disk -> chunks and vectors in the index, re-embedding only what changed.

For each PATH (a file or a folder, walked recursively; hidden files and folders are skipped):

1. hash every readable file (sha256 of its bytes); a file whose hash and chunk settings match the index is
   left alone (its mtime and tags are refreshed);
2. documents under an indexed folder that are no longer on disk leave the index;
3. new and changed files are read, chunked and embedded, a batch of files at a time, and each batch is
   written in one transaction. Ctrl-C (or a crash) loses at most the batch in flight: the index stays
   consistent, and the next run re-embeds only what is still missing.

A file that cannot be read (a damaged PDF, not UTF-8) is reported and skipped, not fatal.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pellucid.errors import PellucidError
from pellucid.rag.chunk import Chunk, ChunkSettings, chunk_document
from pellucid.rag.documents import SUFFIXES, DocumentError, read_document
from pellucid.rag.index import DocumentRecord, ModelRecord, RagIndex

EMBED_BATCH_CHUNKS = 256  # chunks embedded (and files committed) together: big enough to batch well


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks: int = 0  # chunks embedded in this run
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.updated)} updated", f"{self.unchanged} unchanged",
                 f"{len(self.removed)} removed"]  # fmt: skip
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{', '.join(parts)}; {self.chunks} chunks embedded in {self.seconds:.1f} s"


@dataclass
class _Pending:
    record: DocumentRecord
    chunks: list[Chunk] | None  # None: the content is unchanged; only its facts (mtime, tags, root) changed
    is_new: bool = False


def model_record(embedder) -> ModelRecord:
    """What the index records: how to load the model again, its dimension, the sha256 of its weights."""
    return ModelRecord(embedder.source, embedder.dim, embedder.fingerprint)


@dataclass
class Source:
    """One PATH argument: the files to index, and the root their relative paths start from."""

    root: Path
    files: list[Path]
    walked: bool  # a folder: it owns every document under it, so ones missing on disk are deleted


def find_files(path: str | Path) -> Source:
    """A folder's readable files (by suffix, recursively, hidden ones skipped), or one file."""
    path = Path(path).expanduser().resolve()
    if path.is_file():
        return Source(path.parent, [path], walked=False)
    if not path.is_dir():
        raise PellucidError(f"no such file or folder: {path}")
    files, targets = [], set()
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(folder) / name
            if name.startswith(".") or file.suffix.lower() not in SUFFIXES or file.resolve() in targets:
                continue  # hidden, not a document, or a symlink to a file we already have
            targets.add(file.resolve())
            files.append(file)
    return Source(path, files, walked=True)


def update_index(
    index: RagIndex,
    embedder,
    sources: Sequence[Source],
    *,
    tags: dict[str, str] | None = None,
    settings: ChunkSettings | None = None,
    reembed: bool = False,
    on_file: Callable[[], None] | None = None,
) -> IndexReport:
    """Bring the index up to date with `sources` (from `find_files`). `on_file` is called once per file
    examined (a progress bar)."""
    started = time.perf_counter()
    settings = settings or ChunkSettings()
    index.bind_model(model_record(embedder), replace=reembed)
    report = IndexReport()
    _remove_deleted(index, sources, report)
    pending: list[_Pending] = []
    refresh: list[DocumentRecord] = []
    for source in sources:
        for file in source.files:
            item = _examine(index, source.root, file, tags or {}, settings, embedder, report)
            if item is not None and item.chunks is None:
                refresh.append(item.record)
            elif item is not None:
                pending.append(item)
                if sum(len(p.chunks) for p in pending) >= EMBED_BATCH_CHUNKS:
                    _embed_and_write(index, embedder, pending, report)
                    pending = []
            if on_file:
                on_file()
    _embed_and_write(index, embedder, pending, report)
    if refresh:
        with index.transaction():  # one commit for all of them: a commit per file is slow on big trees
            for record in refresh:
                index.update_document_facts(record)
    _refresh_ann(index)
    report.seconds = time.perf_counter() - started
    return report


def count_files(sources: Sequence[Source]) -> int:
    return sum(len(s.files) for s in sources)


def _remove_deleted(index: RagIndex, sources: Sequence[Source], report: IndexReport) -> None:
    on_disk = {str(f) for s in sources for f in s.files}
    gone = [p for s in sources if s.walked for p in index.paths_under(str(s.root)) if p not in on_disk]
    gone = list(dict.fromkeys(gone))
    if gone:
        with index.transaction():
            for path in gone:
                index.delete_document(path)
        report.removed += gone


def _examine(index, root: Path, file: Path, tags, settings, embedder, report) -> _Pending | None:
    """What to do with one file: nothing, refresh its facts (same content), or read and chunk it for embedding."""
    try:
        data = file.read_bytes()
        stat = file.stat()
    except OSError as e:
        report.failed.append((str(file), e.strerror or str(e)))
        return None
    record = DocumentRecord(
        path=str(file),
        root=str(root),
        relpath=file.relative_to(root).as_posix(),
        title="",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        mtime=stat.st_mtime,
        tags=dict(tags),
        chunking=settings.describe(),
    )
    existing = index.document(record.path)
    if existing is not None and existing.sha256 == record.sha256 and existing.chunking == record.chunking:
        report.unchanged += 1
        record.title, record.tags = existing.title, {**existing.tags, **record.tags}
        facts = (record.root, record.relpath, record.mtime, record.tags)
        return (
            _Pending(record, None)
            if facts != (existing.root, existing.relpath, existing.mtime, existing.tags)
            else None
        )
    try:
        doc = read_document(file)
    except DocumentError as e:
        report.failed.append((str(file), str(e)))
        return None
    record.title = doc.title
    if existing is not None:
        record.tags = {**existing.tags, **record.tags}
    chunks = chunk_document(doc, embedder.count_tokens, embedder.max_tokens, settings)
    return _Pending(record, chunks, is_new=existing is None)


def _embed_and_write(index: RagIndex, embedder, pending: list[_Pending], report: IndexReport) -> None:
    if not pending:
        return
    texts = [c.embed_text for p in pending for c in p.chunks]
    vectors = embedder.embed(texts).numpy() if texts else np.zeros((0, embedder.dim), np.float32)
    with index.transaction():
        start = 0
        for p in pending:
            index.put_document(p.record, p.chunks, vectors[start : start + len(p.chunks)])
            start += len(p.chunks)
    for p in pending:
        (report.added if p.is_new else report.updated).append(p.record.path)
    report.chunks += len(texts)


def _refresh_ann(index: RagIndex) -> None:
    """Above the threshold, store a fresh HNSW graph now, so that searches never pay for building it."""
    if index.count_chunks() <= index.ann_threshold:
        index.drop_ann()  # exact search below the threshold; a stale graph must not linger
    elif not index.has_fresh_ann():
        index.build_ann()
