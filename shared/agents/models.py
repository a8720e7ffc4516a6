"""Agents: a role, a system prompt, a model and a tool profile."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class AgentRole(StrEnum):
    overseer = "overseer"
    researcher = "researcher"
    coder = "coder"
    planner = "planner"
    reviewer = "reviewer"


class Agent(SQLModel, table=True):
    __tablename__ = "agents"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100, unique=True)
    role: str = Field(max_length=20)
    system_prompt: str = Field(default="", sa_column=Column(Text, nullable=False))
    model: str | None = Field(default=None, max_length=200)
    model_settings: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    tool_profile: str = Field(default="default", max_length=100)
    max_iterations: int = Field(default=8)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AgentCreate(BaseModel):
    """Fields a client sends to create an agent."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = PydanticField(min_length=1, max_length=100, pattern=_NAME_PATTERN)
    role: AgentRole
    system_prompt: str = PydanticField(default="", max_length=100_000)
    model: str | None = PydanticField(default=None, min_length=1, max_length=200)
    model_settings: dict[str, Any] = PydanticField(default_factory=dict)
    tool_profile: str = PydanticField(default="default", min_length=1, max_length=100)
    max_iterations: int = PydanticField(default=8, ge=1, le=100)


class AgentUpdate(BaseModel):
    """Fields a client may change; omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = PydanticField(
        default=None, min_length=1, max_length=100, pattern=_NAME_PATTERN
    )
    role: AgentRole | None = None
    system_prompt: str | None = PydanticField(default=None, max_length=100_000)
    model: str | None = PydanticField(default=None, min_length=1, max_length=200)
    model_settings: dict[str, Any] | None = None
    tool_profile: str | None = PydanticField(default=None, min_length=1, max_length=100)
    max_iterations: int | None = PydanticField(default=None, ge=1, le=100)


class AgentOut(BaseModel):
    id: str
    name: str
    role: AgentRole
    system_prompt: str
    model: str | None
    model_settings: dict[str, Any]
    tool_profile: str
    max_iterations: int
    created_at: datetime
    updated_at: datetime
