"""Agents: a role, a system prompt, a model and a tool profile."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime
from shared.validation import JsonObject, StoredText


class AgentRole(StrEnum):
    overseer = "overseer"
    researcher = "researcher"
    coder = "coder"
    planner = "planner"
    reviewer = "reviewer"


class AgentMode(StrEnum):
    """How an agent's turns start."""

    #: One turn per user message.
    reactive = "reactive"
    #: After a user message, up to ``max_auto_turns`` continuation turns, then stop.
    autonomous = "autonomous"
    #: Autonomous, then a think turn every ``think_interval_s`` while the agent is active.
    proactive = "proactive"
    #: One turn every ``tick_interval_s`` until the agent calls ``end_tick``.
    tick = "tick"


class AgentStatus(StrEnum):
    active = "active"
    #: Stopped by a user: nothing more runs.
    stopped = "stopped"
    #: A tick agent that called end_tick: no further ticks.
    ended = "ended"


ToolProfile = Literal["default", "read-only", "none"]

#: Tools an agent's allowlist may name.
KNOWN_TOOLS = ("code_grep", "end_tick", "fs_list_dir", "fs_read_file", "fs_write_file")
ToolName = Literal["code_grep", "end_tick", "fs_list_dir", "fs_read_file", "fs_write_file"]


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
    # Tool names that replace the profile's; None means the profile decides.
    tools: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    max_iterations: int = Field(default=8)
    mode: str = Field(default=AgentMode.reactive.value, max_length=20)
    status: str = Field(default=AgentStatus.active.value, max_length=20)
    max_auto_turns: int = Field(default=5)
    think_interval_s: int = Field(default=300)
    tick_interval_s: int = Field(default=60)
    # None: inject workspace search results only for models that use tools poorly.
    inject_context: bool | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AgentCreate(BaseModel):
    """Fields a client sends to create an agent."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = PydanticField(min_length=1, max_length=100, pattern=_NAME_PATTERN)
    role: AgentRole
    system_prompt: StoredText = PydanticField(default="", max_length=100_000)
    model: StoredText | None = PydanticField(default=None, min_length=1, max_length=200)
    model_settings: JsonObject = PydanticField(default_factory=dict)
    tool_profile: ToolProfile = "default"
    tools: list[ToolName] | None = None
    max_iterations: int = PydanticField(default=8, ge=1, le=100)
    mode: AgentMode = AgentMode.reactive
    max_auto_turns: int = PydanticField(default=5, ge=0, le=1000)
    think_interval_s: int = PydanticField(default=300, ge=5, le=86_400)
    tick_interval_s: int = PydanticField(default=60, ge=5, le=86_400)
    inject_context: bool | None = None


class AgentUpdate(BaseModel):
    """Fields a client may change; omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = PydanticField(
        default=None, min_length=1, max_length=100, pattern=_NAME_PATTERN
    )
    role: AgentRole | None = None
    system_prompt: StoredText | None = PydanticField(default=None, max_length=100_000)
    model: StoredText | None = PydanticField(default=None, min_length=1, max_length=200)
    model_settings: JsonObject | None = None
    tool_profile: ToolProfile | None = None
    tools: list[ToolName] | None = None
    max_iterations: int | None = PydanticField(default=None, ge=1, le=100)
    mode: AgentMode | None = None
    max_auto_turns: int | None = PydanticField(default=None, ge=0, le=1000)
    think_interval_s: int | None = PydanticField(default=None, ge=5, le=86_400)
    tick_interval_s: int | None = PydanticField(default=None, ge=5, le=86_400)
    inject_context: bool | None = None


class AgentOut(BaseModel):
    id: str
    name: str
    role: AgentRole
    system_prompt: str
    model: str | None
    model_settings: dict[str, Any]
    tool_profile: str
    tools: list[str] | None
    max_iterations: int
    mode: AgentMode
    status: AgentStatus
    max_auto_turns: int
    think_interval_s: int
    tick_interval_s: int
    inject_context: bool | None
    created_at: datetime
    updated_at: datetime
