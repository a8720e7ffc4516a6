"""Artifact metadata and the references that keep artifacts from garbage collection."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, false
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime

#: Length of ``sha256:`` plus 64 hex digits.
DIGEST_LENGTH = 71
DEFAULT_MEDIA_TYPE = "application/octet-stream"


class OwnerKind(StrEnum):
    """What holds a reference to an artifact."""

    message = "message"
    turn = "turn"
    session = "session"


class Artifact(SQLModel, table=True):
    """One stored object. The row exists while the store holds (or is writing) its bytes."""

    __tablename__ = "artifacts"
    __table_args__ = (Index("ix_artifacts_pinned_last_put", "pinned", "last_put_at"),)

    digest: str = Field(primary_key=True, max_length=DIGEST_LENGTH)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    media_type: str = Field(
        default=DEFAULT_MEDIA_TYPE,
        max_length=200,
        sa_column_kwargs={"server_default": DEFAULT_MEDIA_TYPE},
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    # Every upload of the digest moves this forward; gc measures age from it, so an
    # uploader has the whole gc cutoff to add its reference.
    last_put_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    # A pinned artifact is never collected, referenced or not.
    pinned: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ArtifactReference(SQLModel, table=True):
    """A message, turn or session that needs an artifact kept.

    The foreign key to ``artifacts`` is what makes gc and a new reference exclude each
    other: inserting a reference locks the artifact row against deletion (PostgreSQL
    takes ``FOR KEY SHARE``), and deleting a referenced artifact row fails. Deleting a
    session deletes its references with it.
    """

    __tablename__ = "artifact_references"
    __table_args__ = (
        Index("ix_artifact_references_session", "session_id"),
        Index("ix_artifact_references_owner", "owner_kind", "owner_id"),
    )

    digest: str = Field(
        sa_column=Column(String(DIGEST_LENGTH), ForeignKey("artifacts.digest"), primary_key=True)
    )
    owner_kind: str = Field(primary_key=True, max_length=20)
    owner_id: str = Field(primary_key=True, max_length=40)
    session_id: str | None = Field(
        default=None,
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class ArtifactOut(BaseModel):
    digest: str
    size_bytes: int
    media_type: str
    created_at: datetime
    last_put_at: datetime
    pinned: bool

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls.model_validate(artifact, from_attributes=True)


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]
    # Pass as ``cursor`` to get the next page; None on the last page.
    next_cursor: str | None
