"""Short-lived tokens that let a browser open the console WebSocket of one session.

Browsers cannot set an Authorization header on a WebSocket, so a page first asks
``POST /api/sessions/{id}/console-token`` with its bearer token and then passes the
result in the ``token`` query parameter. A token is ``<expiry>.<signature>``: the expiry
in Unix seconds and an HMAC-SHA256 of the session id and expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pydantic import BaseModel

CONSOLE_TOKEN_TTL_S = 60


def issue_console_token(secret: bytes, session_id: str, *, now: float | None = None) -> str:
    expires_at = int(now if now is not None else time.time()) + CONSOLE_TOKEN_TTL_S
    return f"{expires_at}.{_sign(secret, session_id, expires_at)}"


def console_token_valid(
    secret: bytes, session_id: str, token: str, *, now: float | None = None
) -> bool:
    """Tell whether ``token`` was issued for ``session_id`` and has not expired."""
    expiry_text, _, signature = token.partition(".")
    if not expiry_text.isdigit() or not signature:
        return False
    expires_at = int(expiry_text)
    if expires_at < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature, _sign(secret, session_id, expires_at))


def _sign(secret: bytes, session_id: str, expires_at: int) -> str:
    message = f"console:{session_id}:{expires_at}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class ConsoleTokenOut(BaseModel):
    token: str
    session_id: str
    expires_in_s: int
