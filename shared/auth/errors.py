from __future__ import annotations

from shared.errors import AuthError, NotFoundError


class InvalidToken(AuthError):
    code = "invalid_token"


class TokenNotFound(NotFoundError):
    code = "token_not_found"
