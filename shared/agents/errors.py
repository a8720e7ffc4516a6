from __future__ import annotations

from shared.errors import ConflictError, NotFoundError


class AgentNotFound(NotFoundError):
    code = "agent_not_found"


class AgentNameTaken(ConflictError):
    code = "agent_name_taken"


class AgentInUse(ConflictError):
    code = "agent_in_use"


class AgentNotActive(ConflictError):
    """The agent was stopped (or ended its tick loop) and runs nothing until started."""

    code = "agent_not_active"
