"""Garbage collection: delete artifacts that are unpinned, unreferenced and old.

Age is measured from ``last_put_at``, which every upload of the digest moves forward, so
an uploader has the whole cutoff to add a reference to what it stored.

Locking protocol. An upload must never end with a metadata row whose bytes gc deleted.
Both sides meet at the artifact's metadata row and touch the store's digest key only
while they hold that row:

- upload (``store_upload``): stage the bytes out of gc's sight (a temp file, ``tmp:``
  chunks or a temporary S3 key), then upsert the row (PostgreSQL: the upsert locks it
  until commit; SQLite: the write transaction holds the database's write lock), then
  check the digest key and publish the staged copy if it is absent, then commit.
- gc, once per candidate, in its own write transaction: lock the row with
  ``SELECT … FOR UPDATE``, re-check pinned, age and references in a new statement,
  delete the row, delete the bytes, commit.

If gc locks first, the upload's upsert waits, then inserts a fresh row and, because gc
has deleted the bytes by then, publishes its staged copy. If the upload locks first,
gc waits, and its re-check sees the new ``last_put_at`` and keeps the artifact. The
re-check is a separate statement because under READ COMMITTED each statement sees
everything committed before it started, including references added while gc waited.
Adding a reference takes ``FOR KEY SHARE`` on the row, which conflicts with gc's lock.
On SQLite, ``BEGIN IMMEDIATE`` serialises every write transaction, so the steps never
interleave.

gc deletes the row before the bytes, so a failed store delete rolls the row back.
NOTE: if the commit fails after the bytes are gone, the row outlives its bytes; reads
then raise ArtifactNotFound, and the next upload of the digest stores the bytes again.
Bytes whose upload transaction rolled back after publishing have no row, and gc does
not look for such orphans yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, delete, exists, false, func, select

from shared.cas.errors import ArtifactStoreUnavailable
from shared.cas.models import Artifact, ArtifactReference
from shared.cas.stores.base import ArtifactStore
from shared.clock import utcnow
from shared.db import Database

log = structlog.get_logger(__name__)

_BATCH_SIZE = 200


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    cutoff: datetime
    # Artifacts deleted, or in a dry run those that would be deleted.
    deleted: int
    deleted_bytes: int
    # Artifacts present when the run started that it did not delete.
    kept: int
    kept_bytes: int
    # Candidates whose bytes the store failed to delete; their rows were kept.
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "failed": self.failed,
        }


def collect_garbage(
    database: Database,
    store: ArtifactStore,
    *,
    older_than_s: float,
    dry_run: bool = False,
    max_delete: int | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Delete unpinned, unreferenced artifacts last uploaded more than ``older_than_s`` ago.

    Opens its own short transactions, one per deleted artifact, so it never holds a lock
    across the whole run. ``max_delete`` caps the deletions (or, in a dry run, the
    count reported). A store failure on one artifact is logged and counted in ``failed``.
    """
    if older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0, not {older_than_s}")
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    total, total_bytes = _count_artifacts(database)

    deleted = deleted_bytes = failed = 0
    after: str | None = None
    while max_delete is None or deleted < max_delete:
        batch = _find_candidates(database, cutoff, after)
        if not batch:
            break
        for digest, size_bytes in batch:
            after = digest
            if max_delete is not None and deleted >= max_delete:
                break
            outcome = _collect_one(database, store, digest, cutoff, dry_run=dry_run)
            if outcome == "failed":
                failed += 1
            elif outcome == "deleted":
                deleted += 1
                deleted_bytes += size_bytes

    report = GcReport(
        dry_run=dry_run,
        cutoff=cutoff,
        deleted=deleted,
        deleted_bytes=deleted_bytes,
        kept=max(total - deleted, 0),
        kept_bytes=max(total_bytes - deleted_bytes, 0),
        failed=failed,
    )
    log.info("cas gc finished", **report.as_dict())
    return report


def _collectable(cutoff: datetime) -> ColumnElement[bool]:
    artifacts = Artifact.__table__  # type: ignore[attr-defined]
    references = ArtifactReference.__table__  # type: ignore[attr-defined]
    referenced = exists().where(references.c.digest == artifacts.c.digest)
    return and_(
        artifacts.c.pinned == false(),
        artifacts.c.last_put_at < cutoff,
        ~referenced,
    )


def _count_artifacts(database: Database) -> tuple[int, int]:
    artifacts = Artifact.__table__  # type: ignore[attr-defined]
    query = select(func.count(), func.coalesce(func.sum(artifacts.c.size_bytes), 0))
    with database.read() as db:
        count, size_bytes = db.execute(query.select_from(artifacts)).one()
    return int(count), int(size_bytes)


def _find_candidates(
    database: Database, cutoff: datetime, after: str | None
) -> list[tuple[str, int]]:
    artifacts = Artifact.__table__  # type: ignore[attr-defined]
    query = (
        select(artifacts.c.digest, artifacts.c.size_bytes)
        .where(_collectable(cutoff))
        .order_by(artifacts.c.digest)
        .limit(_BATCH_SIZE)
    )
    if after is not None:
        query = query.where(artifacts.c.digest > after)
    with database.read() as db:
        return [(str(digest), int(size)) for digest, size in db.execute(query).all()]


def _collect_one(
    database: Database, store: ArtifactStore, digest: str, cutoff: datetime, *, dry_run: bool
) -> str:
    """Delete one artifact if it is still collectable; return deleted, kept or failed."""
    artifacts = Artifact.__table__  # type: ignore[attr-defined]
    if dry_run:
        with database.read() as db:
            still = db.execute(
                select(artifacts.c.digest).where(artifacts.c.digest == digest, _collectable(cutoff))
            ).first()
        return "kept" if still is None else "deleted"

    try:
        with database.write() as db:
            lock = select(artifacts.c.digest).where(artifacts.c.digest == digest).with_for_update()
            if db.execute(lock).first() is None:
                return "kept"
            recheck = select(artifacts.c.digest).where(
                artifacts.c.digest == digest, _collectable(cutoff)
            )
            if db.execute(recheck).first() is None:
                return "kept"
            db.execute(delete(artifacts).where(artifacts.c.digest == digest))
            store.delete(digest)
    except ArtifactStoreUnavailable as error:
        log.warning("cas gc could not delete an artifact", digest=digest, error=str(error))
        return "failed"
    log.debug("cas gc deleted an artifact", digest=digest)
    return "deleted"
