"""Error kinds shared by every domain.

Each domain raises its own subclasses; the web tier maps the kinds below to HTTP status
codes in one place. ``code`` is a stable machine-readable word, ``message`` says what
failed, on which value, and what to do.
"""

from __future__ import annotations

from typing import Any


class FoxctlError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInputError(FoxctlError):
    code = "invalid_input"


class NotFoundError(FoxctlError):
    code = "not_found"


class ConflictError(FoxctlError):
    code = "conflict"


class AuthError(FoxctlError):
    code = "unauthorized"


class UnavailableError(FoxctlError):
    """A backing service (database, broker) failed; the caller may try again later."""

    code = "unavailable"
