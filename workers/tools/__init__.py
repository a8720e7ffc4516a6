"""Tools an agent may call, and which agent may call which.

Access is deny-by-default: an agent gets the tools of its profile for its role, or the
tools its allowlist names, and writing tools only when its role may write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from workers.llm.base import ToolCall

#: Maximum tool output sent to the model; longer output is cut and marked.
MAX_OUTPUT_BYTES = 64 * 1024

READ_TOOLS = frozenset({"fs_list_dir", "fs_read_file", "code_grep", "semantic_search"})
WRITE_TOOLS = frozenset({"fs_write_file"})
WRITER_ROLES = frozenset({"coder"})

#: Tools each profile grants, before the role's write restriction.
PROFILES: dict[str, frozenset[str]] = {
    "default": READ_TOOLS | WRITE_TOOLS,
    "read-only": READ_TOOLS,
    "none": frozenset(),
}


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


def allowed_tools(role: str, profile: str, allowlist: Iterable[str] | None) -> frozenset[str]:
    """Return the tool names an agent may call.

    An allowlist replaces the profile. Writing tools stay limited to writer roles either
    way; an unknown profile grants nothing.
    """
    names = frozenset(allowlist) if allowlist is not None else PROFILES.get(profile, frozenset())
    if role not in WRITER_ROLES:
        names -= WRITE_TOOLS
    return names


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools = {tool.name: tool for tool in tools}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tools)

    def specs(self, allowed: frozenset[str]) -> list[dict[str, Any]]:
        return [tool.spec() for name, tool in sorted(self._tools.items()) if name in allowed]

    def run(self, allowed: frozenset[str], call: ToolCall) -> ToolResult:
        """Run one tool call; failures come back as a result with ``ok=False``."""
        tool = self._tools.get(call.name)
        if tool is None or call.name not in allowed:
            names = ", ".join(sorted(allowed & self.names)) or "none"
            return _error(call, f"tool {call.name!r} is not available; available tools: {names}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as error:
            return _error(call, f"arguments are not valid JSON: {error}")
        if not isinstance(arguments, dict):
            return _error(call, "arguments must be a JSON object")
        try:
            output = tool.run(arguments)
        except ToolError as error:
            return _error(call, str(error))
        # Output is returned whole; the agent loop stores long output in the artifact
        # store and shows the model a truncated copy.
        return ToolResult(call.id, call.name, output, ok=True)


def truncate(text: str, limit_bytes: int = MAX_OUTPUT_BYTES) -> str:
    """Cut ``text`` to ``limit_bytes`` of UTF-8 and append how many bytes were left out."""
    data = text.encode()
    if len(data) <= limit_bytes:
        return text
    kept = data[:limit_bytes].decode(errors="ignore")
    return f"{kept}\n[output truncated: {len(data) - limit_bytes} of {len(data)} bytes omitted]"


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call.id, call.name, f"error: {message}", ok=False)
