"""Errors of the chat adapters."""

from __future__ import annotations

from shared.errors import AuthError, FoxctlError


class ChatError(FoxctlError):
    """Base error of the chat domain."""

    code = "chat_error"


class SignatureInvalid(AuthError):
    """A webhook request failed its platform's verification; nothing was stored."""

    code = "invalid_signature"


class PlatformError(ChatError):
    """A platform API call failed in a way that retrying will not fix."""

    code = "platform_error"


class RateLimited(ChatError):
    """The platform returned 429 or 5xx, or was unreachable; retry after ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s
