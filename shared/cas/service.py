"""Store uploads, read metadata, pin artifacts, and record who references them.

Callers own the transaction (``Database.write()``/``read()``) and commit at their
boundary; nothing here commits. ``shared.cas.gc`` explains the locking that keeps an
upload and garbage collection of the same digest from losing the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from shared.cas.digests import parse_digest
from shared.cas.errors import ArtifactNotFound, InvalidMediaType
from shared.cas.models import (
    DEFAULT_MEDIA_TYPE,
    Artifact,
    ArtifactOut,
    ArtifactPage,
    ArtifactReference,
    OwnerKind,
)
from shared.cas.stores.base import ArtifactStore
from shared.clock import utcnow
from shared.errors import InvalidInputError

MAX_PAGE_SIZE = 1000
_MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(\s*;.*)?", re.ASCII)


@dataclass(frozen=True)
class StoredArtifact:
    artifact: Artifact
    # False when the store already held the digest: no new bytes were stored.
    created: bool


def store_upload(
    db: Session,
    store: ArtifactStore,
    chunks: Iterable[bytes],
    *,
    media_type: str = DEFAULT_MEDIA_TYPE,
    now: datetime | None = None,
) -> StoredArtifact:
    """Stream ``chunks`` into the store and record the artifact's metadata.

    The bytes are staged before the first statement, so pass a session that has not run
    one yet: then no database lock is held while the upload streams. Then the metadata
    row is upserted, which locks it, and only after that the store publishes the bytes
    under their digest. Uploading a digest again stores nothing new (``created`` False)
    and moves ``last_put_at`` forward. Raises InvalidMediaType, DigestMismatch when the
    stored copy does not hash to what was sent, and ArtifactStoreUnavailable.
    """
    media_type = check_media_type(media_type)
    staged = store.stage(chunks)

    try:
        artifact = _upsert_artifact(db, staged.digest, staged.size_bytes, media_type, now)
    except BaseException:
        store.discard(staged)
        raise

    created = store.commit(staged)
    return StoredArtifact(artifact=artifact, created=created)


def _upsert_artifact(
    db: Session, digest: str, size_bytes: int, media_type: str, now: datetime | None
) -> Artifact:
    moment = now or utcnow()
    table = Artifact.__table__  # type: ignore[attr-defined]
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(
        digest=digest,
        size_bytes=size_bytes,
        media_type=media_type,
        created_at=moment,
        last_put_at=moment,
        pinned=False,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.digest],
        set_={"last_put_at": statement.excluded.last_put_at},
    )
    db.exec(statement)
    return get_artifact(db, digest)


def check_media_type(media_type: str) -> str:
    """Return ``media_type`` when it looks like ``type/subtype``; raise InvalidMediaType."""
    if len(media_type) > 200 or _MEDIA_TYPE.fullmatch(media_type) is None:
        raise InvalidMediaType(
            f"invalid media type {media_type[:80]!r}: expected type/subtype such as "
            f"{DEFAULT_MEDIA_TYPE!r}, at most 200 characters",
            media_type=media_type[:80],
        )
    return media_type


def get_artifact(db: Session, digest: str) -> Artifact:
    """Return the artifact's metadata; raise InvalidDigest or ArtifactNotFound."""
    parse_digest(digest)
    query = select(Artifact).where(Artifact.digest == digest)
    artifact = db.exec(query.execution_options(populate_existing=True)).first()
    if artifact is None:
        raise ArtifactNotFound(f"artifact {digest} not found", digest=digest)
    return artifact


def list_artifacts(db: Session, *, limit: int = 50, cursor: str | None = None) -> ArtifactPage:
    """Return up to ``limit`` artifacts in digest order, after ``cursor`` if given.

    ``next_cursor`` of a page is the cursor for the next one; it is None on the last.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(
            f"invalid limit {limit}: expected 1 to {MAX_PAGE_SIZE}", limit=limit
        )
    query = select(Artifact).order_by(col(Artifact.digest)).limit(limit + 1)
    if cursor is not None:
        query = query.where(col(Artifact.digest) > parse_digest(cursor))

    rows = list(db.exec(query).all())
    items = [ArtifactOut.of(artifact) for artifact in rows[:limit]]
    next_cursor = items[-1].digest if len(rows) > limit else None
    return ArtifactPage(items=items, next_cursor=next_cursor)


def pin_artifact(db: Session, digest: str) -> Artifact:
    """Keep the artifact from garbage collection until it is unpinned."""
    return _set_pinned(db, digest, pinned=True)


def unpin_artifact(db: Session, digest: str) -> Artifact:
    """Let garbage collection delete the artifact once nothing references it."""
    return _set_pinned(db, digest, pinned=False)


def _set_pinned(db: Session, digest: str, *, pinned: bool) -> Artifact:
    parse_digest(digest)
    table = Artifact.__table__  # type: ignore[attr-defined]
    result = db.exec(update(table).where(table.c.digest == digest).values(pinned=pinned))
    if result.rowcount == 0:
        raise ArtifactNotFound(f"artifact {digest} not found", digest=digest)
    return get_artifact(db, digest)


def add_reference(
    db: Session,
    digest: str,
    owner_kind: OwnerKind | str,
    owner_id: str,
    *,
    session_id: str | None = None,
) -> bool:
    """Record that ``owner_kind``/``owner_id`` needs the artifact; False if it already did.

    ``session_id`` (an existing session) lets ``release_session_references`` and session
    deletion drop the reference. Raises ArtifactNotFound when the artifact is gone,
    including when garbage collection deleted it first.
    """
    parse_digest(digest)
    kind = _owner_kind(owner_kind)
    # The shared row lock keeps gc, which locks the row for update, from deleting the
    # artifact before this transaction commits. SQLite serialises writers instead.
    locked = db.exec(
        select(Artifact.digest)
        .where(Artifact.digest == digest)
        .with_for_update(key_share=True, read=True)
    ).first()
    if locked is None:
        raise ArtifactNotFound(
            f"artifact {digest} not found; upload it before referencing it", digest=digest
        )

    table = ArtifactReference.__table__  # type: ignore[attr-defined]
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(
        digest=digest,
        owner_kind=kind.value,
        owner_id=owner_id,
        session_id=session_id,
        created_at=utcnow(),
    )
    inserted = db.exec(statement.on_conflict_do_nothing().returning(table.c.digest))
    return inserted.first() is not None


def remove_reference(db: Session, digest: str, owner_kind: OwnerKind | str, owner_id: str) -> bool:
    """Drop one reference; False when there was none."""
    parse_digest(digest)
    kind = _owner_kind(owner_kind)
    table = ArtifactReference.__table__  # type: ignore[attr-defined]
    result = db.exec(
        delete(table).where(
            and_(
                table.c.digest == digest,
                table.c.owner_kind == kind.value,
                table.c.owner_id == owner_id,
            )
        )
    )
    return bool(result.rowcount == 1)


def release_session_references(db: Session, session_id: str) -> int:
    """Drop every reference recorded for the session or owned by it; return how many."""
    table = ArtifactReference.__table__  # type: ignore[attr-defined]
    owned_by_session = and_(
        table.c.owner_kind == OwnerKind.session.value, table.c.owner_id == session_id
    )
    result = db.exec(delete(table).where(or_(table.c.session_id == session_id, owned_by_session)))
    return int(result.rowcount)


def count_references(db: Session, digest: str) -> int:
    """Return how many messages, turns and sessions reference the artifact."""
    parse_digest(digest)
    query = select(func.count()).where(col(ArtifactReference.digest) == digest)
    return int(db.exec(query).one())


def _owner_kind(value: OwnerKind | str) -> OwnerKind:
    try:
        return OwnerKind(value)
    except ValueError:
        raise InvalidInputError(
            f"invalid owner kind {value!r}: expected message, turn or session",
            owner_kind=str(value),
        ) from None


__all__ = [
    "StoredArtifact",
    "add_reference",
    "check_media_type",
    "count_references",
    "get_artifact",
    "list_artifacts",
    "pin_artifact",
    "release_session_references",
    "remove_reference",
    "store_upload",
    "unpin_artifact",
]
