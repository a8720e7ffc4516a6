"""Garbage collection: delete old artifacts nothing needs, and stored bytes with no row.

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

Orphans. An upload publishes its bytes before it commits, so when its transaction rolls
back after publishing (a failed commit, a killed process) the bytes stay with no row.
After the artifact pass, gc lists the store in batches. An object is an orphan candidate
when no committed row has its digest and the store wrote it before the cutoff. The
cutoff also gives writers that store bytes first and record the row later
(``put_object`` callers) that long. A listing cannot see an upload's uncommitted row,
so gc re-checks each candidate in its own write transaction, on the path an upload's
upsert takes: insert a placeholder row for the digest with ``ON CONFLICT DO NOTHING``,
re-read the object's time of storage, delete the bytes, delete the placeholder, commit.

If an upload's upsert came first, the placeholder insert waits until the upload commits
or rolls back (PostgreSQL waits on the uncommitted key; SQLite's ``BEGIN IMMEDIATE``
waits for the write lock). After a commit the insert does nothing and gc keeps the
bytes. If gc inserted first, the upload's upsert waits until gc commits. By then the
placeholder and the bytes are gone, so the upload inserts its row and publishes its
staged copy. No other transaction ever reads the placeholder, because the transaction
that inserts it also deletes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, and_, delete, exists, false, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from shared.cas.errors import ArtifactNotFound, ArtifactStoreUnavailable
from shared.cas.models import DEFAULT_MEDIA_TYPE, Artifact, ArtifactReference
from shared.cas.stores.base import ArtifactStore, StoredObject
from shared.clock import utcnow
from shared.db import Database

log = structlog.get_logger(__name__)

_BATCH_SIZE = 200

Outcome = Literal["deleted", "kept", "gone", "failed"]


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
    # Stored objects with no artifact row, stored before the cutoff: deleted, or in a dry
    # run those that would be deleted.
    orphans_deleted: int
    orphans_deleted_bytes: int
    # Stored objects with no artifact row that were stored after the cutoff, or that
    # gained a row before gc could delete them. An upload in progress counts here.
    orphans_kept: int
    orphans_kept_bytes: int
    # Orphans whose bytes the store failed to delete.
    orphans_failed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "failed": self.failed,
            "orphans_deleted": self.orphans_deleted,
            "orphans_deleted_bytes": self.orphans_deleted_bytes,
            "orphans_kept": self.orphans_kept,
            "orphans_kept_bytes": self.orphans_kept_bytes,
            "orphans_failed": self.orphans_failed,
        }


@dataclass
class _Tally:
    deleted: int = 0
    deleted_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    failed: int = 0

    def add(self, outcome: Outcome, size_bytes: int) -> None:
        if outcome == "deleted":
            self.deleted += 1
            self.deleted_bytes += size_bytes
        elif outcome == "kept":
            self.kept += 1
            self.kept_bytes += size_bytes
        elif outcome == "failed":
            self.failed += 1


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

    Then delete orphans: stored objects that have no artifact row and were stored more
    than ``older_than_s`` ago. Opens its own short transactions, one per deleted
    artifact or orphan, so it never holds a lock across the whole run. ``max_delete``
    caps the deletions of both kinds together (or, in a dry run, the count reported);
    once it is reached the orphan listing stops, so ``orphans_kept`` covers only the
    objects listed up to then. A store failure on one artifact or orphan is logged and
    counted in ``failed`` or ``orphans_failed``.
    """
    if older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0, not {older_than_s}")
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    total, total_bytes = _count_artifacts(database)

    artifacts = _collect_artifacts(database, store, cutoff, dry_run=dry_run, max_delete=max_delete)
    orphan_budget = None if max_delete is None else max_delete - artifacts.deleted
    orphans = _collect_orphans(database, store, cutoff, dry_run=dry_run, max_delete=orphan_budget)

    report = GcReport(
        dry_run=dry_run,
        cutoff=cutoff,
        deleted=artifacts.deleted,
        deleted_bytes=artifacts.deleted_bytes,
        kept=max(total - artifacts.deleted, 0),
        kept_bytes=max(total_bytes - artifacts.deleted_bytes, 0),
        failed=artifacts.failed,
        orphans_deleted=orphans.deleted,
        orphans_deleted_bytes=orphans.deleted_bytes,
        orphans_kept=orphans.kept,
        orphans_kept_bytes=orphans.kept_bytes,
        orphans_failed=orphans.failed,
    )
    log.info("cas gc finished", **report.as_dict())
    return report


def _collect_artifacts(
    database: Database,
    store: ArtifactStore,
    cutoff: datetime,
    *,
    dry_run: bool,
    max_delete: int | None,
) -> _Tally:
    tally = _Tally()
    after: str | None = None
    while max_delete is None or tally.deleted < max_delete:
        batch = _find_candidates(database, cutoff, after)
        if not batch:
            break
        for digest, size_bytes in batch:
            after = digest
            if max_delete is not None and tally.deleted >= max_delete:
                break
            outcome = _collect_one(database, store, digest, cutoff, dry_run=dry_run)
            tally.add(outcome, size_bytes)
    return tally


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
) -> Outcome:
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


def _collect_orphans(
    database: Database,
    store: ArtifactStore,
    cutoff: datetime,
    *,
    dry_run: bool,
    max_delete: int | None,
) -> _Tally:
    tally = _Tally()
    for batch in store.list_objects(_BATCH_SIZE):
        with_rows = _digests_with_rows(database, [stored.digest for stored in batch])
        for stored in batch:
            if stored.digest in with_rows:
                continue
            if stored.stored_at >= cutoff:
                tally.add("kept", stored.size_bytes)
                continue
            if max_delete is not None and tally.deleted >= max_delete:
                return tally
            outcome = _collect_orphan(database, store, stored, cutoff, dry_run=dry_run)
            tally.add(outcome, stored.size_bytes)
    return tally


def _digests_with_rows(database: Database, digests: list[str]) -> set[str]:
    artifacts = Artifact.__table__  # type: ignore[attr-defined]
    query = select(artifacts.c.digest).where(artifacts.c.digest.in_(digests))
    with database.read() as db:
        return {str(digest) for (digest,) in db.execute(query).all()}


def _collect_orphan(
    database: Database,
    store: ArtifactStore,
    orphan: StoredObject,
    cutoff: datetime,
    *,
    dry_run: bool,
) -> Outcome:
    """Delete an orphan's bytes if it still has no row and is still old enough."""
    if dry_run:
        return "deleted"

    try:
        with database.write() as db:
            if not _claim_digest(db, orphan, cutoff):
                return "kept"
            outcome = _delete_if_stored_before(store, orphan.digest, cutoff)
            _release_claim(db, orphan.digest)
    except ArtifactStoreUnavailable as error:
        log.warning("cas gc could not delete an orphan", digest=orphan.digest, error=str(error))
        return "failed"
    if outcome == "deleted":
        log.debug("cas gc deleted an orphan", digest=orphan.digest)
    return outcome


def _claim_digest(db: Session, orphan: StoredObject, cutoff: datetime) -> bool:
    """Insert a placeholder row for the digest; False when a committed row exists.

    Waits while another transaction has an uncommitted row for the digest, and makes
    an upload's upsert of the digest wait until this transaction ends.
    """
    table = Artifact.__table__  # type: ignore[attr-defined]
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(
        digest=orphan.digest,
        size_bytes=orphan.size_bytes,
        media_type=DEFAULT_MEDIA_TYPE,
        created_at=cutoff,
        last_put_at=cutoff,
        pinned=False,
    )
    statement = statement.on_conflict_do_nothing(index_elements=[table.c.digest])
    return db.execute(statement.returning(table.c.digest)).first() is not None


def _release_claim(db: Session, digest: str) -> None:
    table = Artifact.__table__  # type: ignore[attr-defined]
    db.execute(delete(table).where(table.c.digest == digest))


def _delete_if_stored_before(store: ArtifactStore, digest: str, cutoff: datetime) -> Outcome:
    # The object may have been deleted, or deleted and stored again, since the listing.
    try:
        current = store.stat(digest)
    except ArtifactNotFound:
        return "gone"
    if current.stored_at >= cutoff:
        return "kept"
    store.delete(digest)
    return "deleted"
