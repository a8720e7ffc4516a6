from __future__ import annotations

from shared.errors import ConflictError, NotFoundError


class SessionNotFound(NotFoundError):
    code = "session_not_found"


class SessionBusy(ConflictError):
    """A message arrived while a turn runs and the session's policy is ``reject``."""

    code = "session_busy"


class IdempotencyKeyReused(ConflictError):
    code = "idempotency_key_reused"
