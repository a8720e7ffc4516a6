"""Chat conversations mapped to sessions, received platform updates, pending replies."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Float, ForeignKey, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class Platform(StrEnum):
    telegram = "telegram"
    discord = "discord"
    teams = "teams"


class DeliveryStatus(StrEnum):
    pending = "pending"
    done = "done"
    #: The platform rejected the reply (an expired interaction token, a deleted chat).
    failed = "failed"


class ChatConversation(SQLModel, table=True):
    """One platform conversation (platform, tenant, chat, thread) and its session."""

    __tablename__ = "chat_conversations"
    __table_args__ = (
        UniqueConstraint(
            "platform", "tenant", "chat_id", "thread_id", name="uq_chat_conversations_key"
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    platform: str = Field(max_length=20)
    tenant: str = Field(default="", max_length=100)
    chat_id: str = Field(max_length=200)
    thread_id: str = Field(default="", max_length=200)
    session_id: str = Field(
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    )
    # What a later, proactive reply needs (Teams conversation reference, Telegram chat).
    reference: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class ChatUpdate(SQLModel, table=True):
    """A platform delivery already accepted; the primary key makes retries harmless."""

    __tablename__ = "chat_updates"

    platform: str = Field(primary_key=True, max_length=20)
    delivery_id: str = Field(primary_key=True, max_length=200)
    turn_id: str | None = Field(default=None, max_length=40)
    # The prune_chat_updates job deletes rows older than FOXCTL_CHAT_UPDATE_RETENTION.
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)


class ChatDelivery(SQLModel, table=True):
    """A reply to send to a platform for one turn, and how far sending has got."""

    __tablename__ = "chat_deliveries"
    # The delivery reconciler looks for pending rows not updated for a while.
    __table_args__ = (Index("ix_chat_deliveries_status_updated_at", "status", "updated_at"),)

    id: str = Field(primary_key=True, max_length=40)
    platform: str = Field(max_length=20)
    session_id: str = Field(
        sa_column=Column(String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    )
    turn_id: str = Field(max_length=40, index=True)
    # Reply destination: chat and message ids, an interaction token, a service URL.
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The placeholder message that edits go to, once it was sent.
    placeholder: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    chunks_sent: int = Field(default=0)
    status: str = Field(default=DeliveryStatus.pending.value, max_length=20)
    # Grows by one on every claim; each write of a delivery attempt checks it.
    claim_token: int = Field(default=0)
    # Seconds since the epoch, by the claimer's clock. Until then, another attempt may
    # not claim the delivery: one is running, or a retry is scheduled for that time.
    claimed_until: float = Field(default=0.0, sa_column=Column(Float, nullable=False, default=0.0))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    # Touched by every write of an attempt, so its age is how long the delivery made no
    # progress.
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
