"""Turns, and the lease that lets one worker at a time run a session's turns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import Column, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class TurnTrigger(StrEnum):
    """Origin of a turn: a user message, a continuation, a think cycle or a tick."""

    message = "message"
    continuation = "continuation"
    think = "think"
    tick = "tick"


class TurnStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (TurnStatus.queued.value, TurnStatus.running.value)
FINAL_STATUSES = (
    TurnStatus.succeeded.value,
    TurnStatus.failed.value,
    TurnStatus.cancelled.value,
)


class Turn(SQLModel, table=True):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("session_id", "number", name="uq_turns_session_number"),
        Index("ix_turns_status_session", "status", "session_id"),
        Index("ix_turns_session_status_number", "session_id", "status", "number"),
    )

    id: str = Field(primary_key=True, max_length=40)
    session_id: str = Field(
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    )
    # Position in the session: turns run in this order.
    number: int
    message_id: str = Field(max_length=40)
    trigger: str = Field(default=TurnTrigger.message.value, max_length=20)
    status: str = Field(default=TurnStatus.queued.value, max_length=20)
    cancel_requested: bool = Field(default=False)
    attempts: int = Field(default=0)
    reply_message_id: str | None = Field(default=None, max_length=40)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    model_calls: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class SessionLease(SQLModel, table=True):
    """Who may run a session's turns, until when, and the fencing token they hold.

    ``token`` grows by one on every claim. A write made for a turn checks that the
    lease still carries the writer's token, so a holder that lost its lease (it paused
    past ``expires_at`` and another worker claimed) cannot commit anything late.
    """

    __tablename__ = "session_leases"

    session_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
        )
    )
    holder: str | None = Field(default=None, max_length=200)
    token: int = Field(default=0)
    # Seconds since the epoch, by the holder's clock.
    expires_at: float = Field(default=0.0, sa_column=Column(Float, nullable=False, default=0.0))
    # When a reconciler last re-enqueued this session, so that it is not woken again
    # before its wake-up had time to arrive.
    woken_at: float | None = Field(default=None)


class TurnOut(BaseModel):
    id: str
    session_id: str
    number: int
    message_id: str
    trigger: TurnTrigger
    status: TurnStatus
    cancel_requested: bool
    attempts: int
    reply_message_id: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    model_calls: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
