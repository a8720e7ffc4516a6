"""Sessions: a conversation with one agent, and the messages in it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import Column, ForeignKey, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime
from shared.validation import NonBlankText, StoredText


class BusyPolicy(StrEnum):
    """Policy for a new message while the session's turn is queued or running."""

    enqueue = "enqueue"
    reject = "reject"
    interrupt = "interrupt"


class MessageRole(StrEnum):
    user = "user"
    assistant = "assistant"


class AgentSession(SQLModel, table=True):
    __tablename__ = "sessions"

    id: str = Field(primary_key=True, max_length=40)
    agent_id: str = Field(
        sa_column=Column(String(40), ForeignKey("agents.id"), nullable=False, index=True)
    )
    title: str = Field(default="", max_length=200)
    busy_policy: str = Field(default=BusyPolicy.enqueue.value, max_length=20)
    # Counters that number turns and events in this session. Bumping one takes the
    # session's row lock, which orders concurrent writers.
    turn_count: int = Field(default=0)
    event_count: int = Field(default=0)
    # Continuation turns run since the last user message (autonomous and proactive modes).
    auto_turns: int = Field(default=0)
    # When the scheduler next queues a think or tick turn, in seconds since the epoch.
    next_wake_at: float | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "idempotency_key", name="uq_messages_idempotency"),
        Index("ix_messages_session_created", "session_id", "created_at"),
        Index("ix_messages_session_position", "session_id", "position"),
    )

    id: str = Field(primary_key=True, max_length=40)
    session_id: str = Field(
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    )
    role: str = Field(max_length=20)
    content: str = Field(sa_column=Column(Text, nullable=False))
    turn_id: str | None = Field(default=None, max_length=40)
    # Order in the session: 2n-1 for the message that started turn n, 2n for its reply.
    # A reply therefore sorts before messages posted while its turn ran.
    position: int = Field(default=0)
    idempotency_key: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent_id: StoredText = PydanticField(
        min_length=1, max_length=100, description="agent id or name"
    )
    title: StoredText = PydanticField(default="", max_length=200)
    busy_policy: BusyPolicy | None = None


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: NonBlankText = PydanticField(min_length=1, max_length=200_000)


class SessionOut(BaseModel):
    id: str
    agent_id: str
    title: str
    busy_policy: BusyPolicy
    turn_count: int
    created_at: datetime
    updated_at: datetime


class MessageOut(BaseModel):
    id: str
    session_id: str
    role: MessageRole
    content: str
    turn_id: str | None
    position: int
    created_at: datetime


class MessageAccepted(BaseModel):
    """Response to a posted message: the stored message and the turn that will reply."""

    message_id: str
    turn_id: str
    session_id: str
    status: str
    replayed: bool = PydanticField(description="true when Idempotency-Key matched an earlier post")
