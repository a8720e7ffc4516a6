from __future__ import annotations

from shared.errors import ConflictError, FoxctlError, NotFoundError


class TurnNotFound(NotFoundError):
    code = "turn_not_found"


class TurnFinished(ConflictError):
    code = "turn_finished"


class LeaseLost(FoxctlError):
    """The session's lease now carries another token: stop and write nothing more."""

    code = "lease_lost"
