"""The port that the chat-delivery worker sends replies through, one per platform."""

from __future__ import annotations

from typing import Any, Protocol


class ReplyClient(Protocol):
    #: The platform's longest message, in characters.
    max_chars: int

    def start(self, target: dict[str, Any], placeholder_text: str) -> dict[str, Any]:
        """Show typing and send the placeholder; return what ``edit`` needs to find it."""
        ...

    def edit(self, target: dict[str, Any], placeholder: dict[str, Any], text: str) -> None:
        """Replace the placeholder's text."""
        ...

    def send(self, target: dict[str, Any], text: str) -> None:
        """Send one more message to the conversation."""
        ...
