"""Index the workspace into chunks and embed pending chunks. Callers own no transaction:
each step here opens its own, because embedding calls must not hold one open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sqlalchemy import delete, func, text, update
from sqlmodel import Session, col, select

from shared.clock import utcnow
from shared.db import Database
from shared.jobs.models import JobRun
from shared.retrieval.chunking import chunk_file
from shared.retrieval.embedders import Embedder
from shared.retrieval.errors import EmbeddingError
from shared.retrieval.models import Chunk, EmbeddingSpace, IndexedFile, IndexStatus
from shared.retrieval.vectors import (
    check_vector_support,
    ensure_hnsw_index,
    has_vector_column,
    store_vectors,
)
from shared.retrieval.walker import walk_workspace

log = structlog.get_logger(__name__)

#: The name of the index job in the job registry.
INDEX_JOB = "index_workspace"
#: Receives each batch of pending chunk ids to embed (an enqueuer, or a direct call).
SendBatch = Callable[[list[int]], None]


@dataclass
class IndexReport:
    files_added: int = 0
    files_changed: int = 0
    files_deleted: int = 0
    files_unchanged: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    # Chunks that kept their vector because their file changed elsewhere.
    chunks_reused: int = 0
    pending: int = 0
    batches: int = 0
    model: str | None = None
    model_changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedReport:
    embedded: int = 0
    copied: int = 0
    skipped: int = 0
    dimension: int | None = None
    errors: list[str] = field(default_factory=list)


def chunk_sha256(path: str, text: str) -> str:
    return hashlib.sha256(f"{path}\0{text}".encode()).hexdigest()


def embedding_input(path: str, text: str) -> str:
    """Return the text sent to the embedder: the path first, so file names count."""
    return f"{path}\n{text}"


def switch_space(db: Database, model: str, *, clear: bool = False) -> bool:
    """Make ``model`` the index's embedding space; return whether it changed.

    A change clears every stored vector, so that vectors of two models never mix and
    every chunk is embedded again. ``clear`` does the same for an unchanged model, such
    as one that a provider updated under the same name.
    """
    with db.write() as session:
        space = _space(session)
        if space.model == model and not clear:
            return False
        if space.model is None:
            log.info("embedding model set", model=model)
        elif space.model != model:
            log.info(
                "embedding model changed; every chunk will be embedded again",
                old_model=space.model,
                new_model=model,
            )
        else:
            log.info("full index: every chunk will be embedded again", model=model)
        changed = space.model != model
        space.model = model
        space.dimension = None
        session.add(space)
        session.execute(update(Chunk).values(model=None, dimension=None, embedding=None))
        _clear_vector_column(session)
        return changed


def index_workspace(
    db: Database,
    root: Path,
    *,
    model: str | None,
    max_file_bytes: int,
    batch_size: int,
    send_batch: SendBatch,
    full: bool = False,
) -> IndexReport:
    """Bring the chunks in step with the files under ``root``; send pending batches.

    Only new and changed files are chunked again, and a chunk whose text is unchanged
    keeps its vector. ``full`` chunks every file and embeds every chunk again. Chunks of
    deleted files are removed.
    ``model`` None means no embedder: chunks serve full-text search only.
    """
    report = IndexReport(model=model)
    if model is not None:
        report.model_changed = switch_space(db, model, clear=full)

    with db.read() as session:
        known = {row.path: row.content_sha256 for row in session.exec(select(IndexedFile))}
    seen: set[str] = set()
    for found in walk_workspace(root, max_file_bytes=max_file_bytes):
        seen.add(found.path)
        digest = hashlib.sha256(found.text.encode()).hexdigest()
        previous = known.get(found.path)
        if previous == digest and not full:
            report.files_unchanged += 1
            continue
        if previous is None:
            report.files_added += 1
        else:
            report.files_changed += 1
        _replace_file(db, found.path, found.text, digest, found.size_bytes, report)

    deleted = sorted(set(known) - seen)
    if deleted:
        _delete_files(db, deleted, report)
    _finish_run(db)

    if model is not None:
        for batch in pending_batches(db, batch_size):
            send_batch(batch)
            report.batches += 1
            report.pending += len(batch)
    return report


def _replace_file(
    db: Database, path: str, text: str, digest: str, size_bytes: int, report: IndexReport
) -> None:
    drafts = chunk_file(path, text)
    with db.write() as session:
        old = list(session.exec(select(Chunk).where(Chunk.path == path)))
        vectors = {c.content_sha256: c for c in old if c.embedding is not None}
        session.execute(delete(Chunk).where(col(Chunk.path) == path))
        for draft in drafts:
            sha = chunk_sha256(path, draft.text)
            kept = vectors.get(sha)
            session.add(
                Chunk(
                    path=path,
                    start_line=draft.start_line,
                    end_line=draft.end_line,
                    text=draft.text,
                    content_sha256=sha,
                )
            )
            if kept is not None:
                report.chunks_reused += 1
        session.flush()
        _restore_vectors(session, path, vectors)
        file_row = session.get(IndexedFile, path) or IndexedFile(
            path=path, content_sha256=digest, size_bytes=size_bytes
        )
        file_row.content_sha256 = digest
        file_row.size_bytes = size_bytes
        file_row.chunk_count = len(drafts)
        file_row.indexed_at = utcnow()
        session.add(file_row)
    report.chunks_removed += len(old)
    report.chunks_added += len(drafts)


def _restore_vectors(session: Session, path: str, vectors: dict[str, Chunk]) -> None:
    """Give the new chunks of ``path`` the vectors of old chunks with the same text."""
    if not vectors:
        return
    fresh = session.exec(select(Chunk).where(Chunk.path == path)).all()
    by_model: dict[str, list[tuple[int, str, list[float]]]] = {}
    for chunk in fresh:
        source = vectors.get(chunk.content_sha256)
        if source is None or source.model is None or chunk.id is None:
            continue
        row = (chunk.id, chunk.content_sha256, _floats(source))
        by_model.setdefault(source.model, []).append(row)
    for model, rows in by_model.items():
        store_vectors(session, model, rows)


def _floats(chunk: Chunk) -> list[float]:
    assert chunk.embedding is not None
    return [float(x) for x in np.frombuffer(chunk.embedding, dtype="<f4")]


def _delete_files(db: Database, paths: list[str], report: IndexReport) -> None:
    with db.write() as session:
        for start in range(0, len(paths), 500):
            part = paths[start : start + 500]
            removed = session.execute(delete(Chunk).where(col(Chunk.path).in_(part)))
            report.chunks_removed += removed.rowcount or 0  # type: ignore[attr-defined]
            session.execute(delete(IndexedFile).where(col(IndexedFile.path).in_(part)))
    report.files_deleted += len(paths)


def _finish_run(db: Database) -> None:
    with db.write() as session:
        space = _space(session)
        space.last_indexed_at = utcnow()
        session.add(space)


def pending_batches(db: Database, batch_size: int) -> Iterable[list[int]]:
    """Yield the ids of chunks without a vector, ``batch_size`` at a time, in id order."""
    with db.read() as session:
        ids = session.exec(
            select(Chunk.id).where(col(Chunk.model).is_(None)).order_by(col(Chunk.id))
        ).all()
    chunk_ids = [int(i) for i in ids if i is not None]
    for start in range(0, len(chunk_ids), batch_size):
        yield chunk_ids[start : start + batch_size]


def embed_chunks(db: Database, embedder: Embedder, chunk_ids: list[int]) -> EmbedReport:
    """Embed the chunks among ``chunk_ids`` that have no vector yet, and store them.

    Idempotent per chunk: chunks that already have a vector of the active model are
    skipped, and a chunk whose text hash matches an embedded chunk copies its vector
    instead of calling the provider. Raises EmbeddingError when the embedder's model is
    not the index's active model or returns a dimension other than the learned one,
    and EmbeddingUnavailableError (from the provider) to be retried later.
    """
    report = EmbedReport()
    with db.read() as session:
        space = _space(session)
        if space.model != embedder.key:
            raise EmbeddingError(
                f"this worker embeds with {embedder.key!r} but the index uses "
                f"{space.model!r}; run an index job (POST /api/index) so the index "
                "switches models, or give every process the same FOXCTL_EMBEDDING_* settings"
            )
        todo = list(
            session.exec(
                select(Chunk).where(col(Chunk.id).in_(chunk_ids), col(Chunk.model).is_(None))
            )
        )
        report.skipped = len(chunk_ids) - len(todo)
        copies = _copies(session, embedder.key, {c.content_sha256 for c in todo})
    if not todo:
        return report

    needed = [c for c in todo if c.content_sha256 not in copies]
    vectors = embedder.embed([embedding_input(c.path, c.text) for c in needed])
    rows = [
        (c.id, c.content_sha256, vector)
        for c, vector in zip(needed, vectors, strict=True)
        if c.id is not None
    ]
    rows += [
        (c.id, c.content_sha256, copies[c.content_sha256])
        for c in todo
        if c.id is not None and c.content_sha256 in copies
    ]
    report.dimension = _check_dimension(space, rows)

    with db.write() as session:
        # The row lock orders concurrent first batches, so one creates the HNSW index.
        current = _space(session, lock=True)
        if current.model != embedder.key:
            # The index switched models while this batch was being embedded.
            report.skipped += len(rows)
            return report
        if current.dimension is None:
            current.dimension = report.dimension
            session.add(current)
            ensure_hnsw_index(session, report.dimension)
        store_vectors(session, embedder.key, rows)
    report.embedded = len(needed)
    report.copied = len(todo) - len(needed)
    return report


def _copies(session: Session, model: str, hashes: set[str]) -> dict[str, list[float]]:
    if not hashes:
        return {}
    rows = session.exec(
        select(Chunk).where(col(Chunk.content_sha256).in_(hashes), Chunk.model == model)
    ).all()
    return {row.content_sha256: _floats(row) for row in rows}


def _check_dimension(space: EmbeddingSpace, rows: list[tuple[Any, str, list[float]]]) -> int:
    dimensions = {len(vector) for _, _, vector in rows}
    if len(dimensions) != 1:
        raise EmbeddingError(f"the embedder returned mixed dimensions {sorted(dimensions)}")
    dimension = dimensions.pop()
    if space.dimension is not None and dimension != space.dimension:
        raise EmbeddingError(
            f"model {space.model!r} returned vectors of dimension {dimension}, but the index "
            f"learned dimension {space.dimension} from it; a model that changed under the "
            "same name needs a new FOXCTL_EMBEDDING_MODEL value or a full re-index "
            "(POST /api/index with full=true)"
        )
    return dimension


def record_error(db: Database, message: str | None) -> None:
    with db.write() as session:
        space = _space(session)
        space.last_error = message
        session.add(space)


def index_status(db: Database, *, require_vector: bool = False) -> IndexStatus:
    """Count files, chunks and pending chunks; describe the model and the last run."""
    with db.read() as session:
        space = _space(session)
        files = session.exec(select(func.count()).select_from(IndexedFile)).one()
        chunks = session.exec(select(func.count()).select_from(Chunk)).one()
        embedded = session.exec(
            select(func.count()).select_from(Chunk).where(Chunk.model == space.model)
        ).one()
        run = session.exec(
            select(JobRun).where(JobRun.name == INDEX_JOB).order_by(col(JobRun.id).desc()).limit(1)
        ).first()
        mode = check_vector_support(session.connection(), required=require_vector)
    return IndexStatus(
        files=files,
        chunks=chunks,
        embedded=embedded if space.model else 0,
        pending=chunks - embedded if space.model else 0,
        model=space.model,
        dimension=space.dimension,
        vector_search=mode if space.model else "off",
        last_run_id=run.id if run else None,
        last_run_status=run.status if run else None,
        last_indexed_at=space.last_indexed_at,
        last_error=space.last_error,
    )


def _space(session: Session, *, lock: bool = False) -> EmbeddingSpace:
    space = session.get(EmbeddingSpace, 1, with_for_update=lock)
    if space is None:
        space = EmbeddingSpace(id=1)
        session.add(space)
        session.flush()
    return space


def _clear_vector_column(session: Session) -> None:
    if has_vector_column(session.connection()):
        session.execute(text("UPDATE index_chunks SET embedding_vector = NULL"))
