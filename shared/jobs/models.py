"""Runs of maintenance jobs and what they did."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class JobStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class JobRun(SQLModel, table=True):
    __tablename__ = "job_runs"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100, index=True)
    # Who started it: cli, schedule or api.
    origin: str = Field(max_length=20)
    status: str = Field(default=JobStatus.running.value, max_length=20)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class JobRunOut(BaseModel):
    id: str
    name: str
    origin: str
    status: JobStatus
    params: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    started_at: datetime
    finished_at: datetime | None
