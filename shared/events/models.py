"""Events: every step of a turn, numbered per session."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class EventType(StrEnum):
    message_created = "message.created"
    turn_queued = "turn.queued"
    turn_started = "turn.started"
    turn_cancel_requested = "turn.cancel_requested"
    context_injected = "context.injected"
    model_called = "model.called"
    tool_called = "tool.called"
    tool_result = "tool.result"
    turn_requeued = "turn.requeued"
    turn_succeeded = "turn.succeeded"
    turn_failed = "turn.failed"
    turn_cancelled = "turn.cancelled"
    agent_ended = "agent.ended"
    #: Live only, never persisted: a piece of reply text as the model streams it.
    turn_delta = "turn.delta"


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_events_session_seq"),
        Index("ix_events_turn", "turn_id"),
    )

    # A global, increasing cursor for listing events across sessions.
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    session_id: str = Field(
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    )
    seq: int
    turn_id: str | None = Field(default=None, max_length=40)
    type: str = Field(max_length=40)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class EventOut(BaseModel):
    id: int
    session_id: str
    seq: int
    turn_id: str | None
    type: str
    data: dict[str, Any]
    created_at: datetime
