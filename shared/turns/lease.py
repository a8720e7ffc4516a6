"""The per-session turn lock: a lease row with an expiry and a fencing token.

Why a row and not an advisory lock: a session-level advisory lock does not survive
PgBouncer in transaction mode, and holding any lock for a whole model call would pin a
pooled connection for minutes. Every operation here is one short statement in its own
transaction (or inside the caller's, for ``fence``), and the same SQL runs on SQLite and
PostgreSQL.

A holder that dies stops renewing; its lease expires after ``ttl_s`` and the next
claim succeeds with a larger token.

NOTE: expiry compares the clocks of different hosts, so hosts need synchronised clocks
(NTP). A skew of ``s`` seconds shortens or lengthens the lease by ``s``.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from shared.clock import Clock, system_clock
from shared.db import Database
from shared.sessions.models import AgentSession
from shared.turns.errors import LeaseLost
from shared.turns.models import SessionLease


class SqlTurnLock:
    """Claim, renew, check and release session leases in the database."""

    def __init__(self, db: Database, *, ttl_s: float, clock: Clock = system_clock) -> None:
        self._db = db
        self.ttl_s = ttl_s
        self._clock = clock

    def claim(self, session_id: str, holder: str) -> int | None:
        """Take the session's lease if it is free or expired.

        Returns the new fencing token, or None when another holder's lease is live.
        """
        now = self._clock.now()
        with self._db.write() as db:
            _ensure_row(db, session_id)
            table = SessionLease.__table__  # type: ignore[attr-defined]
            statement = (
                update(table)
                .where(table.c.session_id == session_id)
                .where(or_(table.c.holder.is_(None), table.c.expires_at <= now))
                .values(holder=holder, token=table.c.token + 1, expires_at=now + self.ttl_s)
                .returning(table.c.token)
            )
            return db.exec(statement).scalar_one_or_none()

    def renew(self, session_id: str, token: int) -> bool:
        """Push the expiry forward; False when the lease was lost to a newer token."""
        with self._db.write() as db:
            return self._extend(db, session_id, token)

    def fence(self, db: Session, session_id: str, token: int) -> None:
        """Check inside the caller's transaction that ``token`` still holds the lease.

        First it locks the session row, the lock that posts and cancels take, so what the
        caller reads next includes every committed cancel and nothing changes under it.
        Then it renews the lease, which locks the lease row until commit so that no claim
        slips in. Every writer takes the session row before the lease row, so the two
        orders cannot deadlock. Raises LeaseLost when the token is stale.
        """
        sessions = AgentSession.__table__  # type: ignore[attr-defined]
        lock_session = select(sessions.c.id).where(sessions.c.id == session_id).with_for_update()
        db.exec(lock_session)  # type: ignore[call-overload]
        if not self._extend(db, session_id, token):
            raise LeaseLost(
                f"lease on session {session_id!r} moved past token {token}",
                session_id=session_id,
                token=token,
            )

    def release(self, session_id: str, token: int) -> None:
        """Free the lease if ``token`` still holds it; a stale release does nothing."""
        table = SessionLease.__table__  # type: ignore[attr-defined]
        with self._db.write() as db:
            db.exec(
                update(table)
                .where(and_(table.c.session_id == session_id, table.c.token == token))
                .values(holder=None, expires_at=0.0)
            )

    def _extend(self, db: Session, session_id: str, token: int) -> bool:
        table = SessionLease.__table__  # type: ignore[attr-defined]
        result = db.exec(
            update(table)
            .where(and_(table.c.session_id == session_id, table.c.token == token))
            .where(col(table.c.holder).is_not(None))
            .values(expires_at=self._clock.now() + self.ttl_s)
        )
        return bool(result.rowcount == 1)


def _ensure_row(db: Session, session_id: str) -> None:
    table = SessionLease.__table__  # type: ignore[attr-defined]
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    row = {"session_id": session_id, "holder": None, "token": 0, "expires_at": 0.0}
    db.exec(insert(table).values(**row).on_conflict_do_nothing())
