"""Create, check and revoke API tokens. Callers own the transaction."""

from __future__ import annotations

import hashlib
import secrets

from sqlmodel import Session, col, select

from shared.auth.errors import InvalidToken, TokenNotFound
from shared.auth.models import ApiToken
from shared.clock import utcnow
from shared.ids import IdGenerator, ids

TOKEN_PREFIX = "fox_"  # noqa: S105 - a marker that makes leaked tokens easy to scan for


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so one round of SHA-256 is enough; a slow password
    # hash would only add latency to every request.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Session, name: str, *, id_gen: IdGenerator = ids) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the token, which is shown only once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(id=id_gen.new("tok"), name=name, token_hash=hash_token(token))
    db.add(row)
    db.flush()
    return row, token


def verify_token(db: Session, token: str) -> ApiToken:
    """Return the live token row for ``token``; raise InvalidToken otherwise."""
    row = db.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is None or row.revoked_at is not None:
        raise InvalidToken(
            "the bearer token is unknown or revoked; create one with `foxctl tokens create`"
        )
    return row


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.exec(select(ApiToken).order_by(col(ApiToken.id))))


def revoke_token(db: Session, token_id_or_name: str) -> ApiToken:
    row = (
        db.get(ApiToken, token_id_or_name)
        or db.exec(
            select(ApiToken)
            .where(ApiToken.name == token_id_or_name)
            .where(col(ApiToken.revoked_at).is_(None))
        ).first()
    )
    if row is None:
        raise TokenNotFound(
            f"token {token_id_or_name!r} not found by id or name; see `foxctl tokens list`"
        )
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.add(row)
    return row
