"""API tokens. Only a SHA-256 hash of each token is stored."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
