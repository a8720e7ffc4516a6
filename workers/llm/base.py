"""The seam between the turn runner and chat models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import FoxctlError


class ModelError(FoxctlError):
    """The model could not answer: bad key, unknown model, unreachable or broken server."""

    code = "model_error"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    # JSON text exactly as the model produced it; tools parse and validate it.
    arguments: str


@dataclass(frozen=True)
class ModelReply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatModel(Protocol):
    """A chat model that can answer with text or with tool calls."""

    name: str

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelReply:
        """Return the model's next message for ``messages`` (OpenAI chat format).

        Raises ModelError when the provider cannot produce an answer.
        """
        ...
