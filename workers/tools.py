"""Tools an agent may call, grouped in profiles.

NOTE: no workspace tools exist yet, so every profile is empty and a tool call gets a
tool error the model can read. The agent runtime adds the workspace tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from workers.llm.base import ToolCall


class Tool(Protocol):
    name: str

    def spec(self) -> dict[str, Any]:
        """Return the OpenAI ``tools`` entry describing this tool."""
        ...

    def run(self, arguments: dict[str, Any]) -> str:
        """Run the tool; raise ToolError for a failure the model should see."""
        ...


class ToolError(Exception):
    """A tool failed in a way the model can read and react to."""


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    output: str
    ok: bool


class ToolRegistry:
    def __init__(self, profiles: dict[str, list[Tool]] | None = None) -> None:
        self._profiles = profiles or {}

    def specs(self, profile: str) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._profiles.get(profile, [])]

    def run(self, profile: str, call: ToolCall) -> ToolResult:
        """Run one tool call; failures come back as a result with ``ok=False``."""
        tool = next((t for t in self._profiles.get(profile, []) if t.name == call.name), None)
        if tool is None:
            return _error(call, f"tool {call.name!r} is not in tool profile {profile!r}")
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError as error:
            return _error(call, f"arguments are not valid JSON: {error}")
        if not isinstance(arguments, dict):
            return _error(call, "arguments must be a JSON object")
        try:
            return ToolResult(call.id, call.name, tool.run(arguments), ok=True)
        except ToolError as error:
            return _error(call, str(error))


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call.id, call.name, f"error: {message}", ok=False)
