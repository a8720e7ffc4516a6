"""The seam between the turn runner and chat models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import FoxctlError

#: Receives each piece of streamed reply text.
DeltaCallback = Callable[[str], None]


class ModelError(FoxctlError):
    """The model returned no reply: bad key, unknown model, unreachable or broken server."""

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
    """A chat model that replies with text or with tool calls."""

    name: str
    #: The provider setting that selects this client, such as ``openai_compat``.
    provider: str

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        on_delta: DeltaCallback | None = None,
    ) -> ModelReply:
        """Return the model's next message for ``messages`` (OpenAI chat format).

        ``tools`` uses the OpenAI ``tools`` format. When ``on_delta`` is given, the model
        streams and ``on_delta`` receives each piece of reply text as it arrives; the
        returned reply still holds the whole text. Raises ModelError when the provider
        cannot produce an answer.
        """
        ...
