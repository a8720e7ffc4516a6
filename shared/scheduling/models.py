"""Leader leases and the record of fired schedule slots."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Float
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class LeaderLease(SQLModel, table=True):
    """Lease of a named role (such as the scheduler): its holder and expiry."""

    __tablename__ = "leader_leases"

    name: str = Field(primary_key=True, max_length=100)
    holder: str | None = Field(default=None, max_length=200)
    token: int = Field(default=0)
    # Seconds since the epoch, by the holder's clock.
    expires_at: float = Field(default=0.0, sa_column=Column(Float, nullable=False, default=0.0))


class ScheduleFire(SQLModel, table=True):
    """One fired slot of a scheduled job; the primary key makes each slot fire once."""

    __tablename__ = "schedule_fires"

    job: str = Field(primary_key=True, max_length=100)
    # The slot's scheduled time, in seconds since the epoch.
    slot: float = Field(sa_column=Column(Float, primary_key=True))
    fired_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    holder: str = Field(max_length=200)
