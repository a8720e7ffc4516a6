"""Leadership and once-only schedule slots, in the database."""

from __future__ import annotations

from sqlalchemy import and_, case, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from shared.clock import Clock, system_clock, utcnow
from shared.db import Database
from shared.scheduling.models import LeaderLease, ScheduleFire


class SqlLeaderLock:
    """Hold a named leader lease: at most one live holder, renewed by heartbeat.

    A holder that dies stops renewing and the next ``acquire`` after ``ttl_s`` wins.
    """

    def __init__(self, db: Database, name: str, *, ttl_s: float, clock: Clock = system_clock):
        self._db = db
        self.name = name
        self.ttl_s = ttl_s
        self._clock = clock

    def acquire(self, holder: str) -> bool:
        """Take or renew the lease for ``holder``; True while ``holder`` leads."""
        now = self._clock.now()
        table = LeaderLease.__table__  # type: ignore[attr-defined]
        with self._db.write() as db:
            _insert_ignore(
                db, table, {"name": self.name, "holder": None, "token": 0, "expires_at": 0.0}
            )
            result = db.exec(
                update(table)
                .where(table.c.name == self.name)
                .where(
                    or_(
                        table.c.holder == holder,
                        table.c.holder.is_(None),
                        table.c.expires_at <= now,
                    )
                )
                .values(
                    holder=holder,
                    # A new holder gets a new token; renewals keep it.
                    token=case((table.c.holder == holder, table.c.token), else_=table.c.token + 1),
                    expires_at=now + self.ttl_s,
                )
            )
            return bool(result.rowcount == 1)

    def release(self, holder: str) -> None:
        table = LeaderLease.__table__  # type: ignore[attr-defined]
        with self._db.write() as db:
            db.exec(
                update(table)
                .where(and_(table.c.name == self.name, table.c.holder == holder))
                .values(holder=None, expires_at=0.0)
            )

    def leader(self) -> str | None:
        with self._db.read() as db:
            lease = db.get(LeaderLease, self.name)
        if lease is None or lease.expires_at <= self._clock.now():
            return None
        return lease.holder


def claim_slot(db: Session, job: str, slot: float, holder: str) -> bool:
    """Record that ``job`` fired for ``slot``; False when the slot was already fired."""
    table = ScheduleFire.__table__  # type: ignore[attr-defined]
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(table)
        .values(job=job, slot=slot, holder=holder, fired_at=utcnow())
        .on_conflict_do_nothing()
        .returning(table.c.job)
    )
    return db.exec(statement).first() is not None


def last_slot(db: Session, job: str) -> float | None:
    return db.exec(
        select(ScheduleFire.slot)
        .where(ScheduleFire.job == job)
        .order_by(col(ScheduleFire.slot).desc())
        .limit(1)
    ).first()


def _insert_ignore(db: Session, table: object, values: dict[str, object]) -> None:
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    db.exec(insert(table).values(**values).on_conflict_do_nothing())  # type: ignore[arg-type]
