"""Delete ended sessions, and report what was or would be deleted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from shared.sessions.models import AgentSession
from shared.sessions.service import delete_session
from shared.turns.models import ACTIVE_STATUSES, Turn

#: Session status by the status of its last turn.
STATUS_BY_TURN = {"succeeded": "ok", "failed": "error", "cancelled": "cancelled"}
SESSION_STATUSES = ("ok", "error", "cancelled", "empty")


@dataclass(frozen=True)
class CleanupReport:
    matched: int
    deleted: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "deleted": self.deleted, "dry_run": self.dry_run}


def cleanup_sessions(
    db: Session, *, older_than_s: float, statuses: list[str], dry_run: bool, now: float
) -> CleanupReport:
    """Delete sessions idle for ``older_than_s`` whose status is in ``statuses``.

    A session with a queued or running turn is never deleted. Its status is that of its
    last turn (ok, error, cancelled), or empty when it has no turns.
    """
    unknown = sorted(set(statuses) - set(SESSION_STATUSES))
    if unknown:
        raise ValueError(f"unknown session status {unknown}; use {', '.join(SESSION_STATUSES)}")
    cutoff = datetime.fromtimestamp(now - older_than_s, UTC)
    candidates = db.exec(
        select(AgentSession)
        .where(col(AgentSession.updated_at) < cutoff)
        .order_by(col(AgentSession.id))
    ).all()
    matched = [s.id for s in candidates if _status(db, s.id) in statuses]
    if not dry_run:
        for session_id in matched:
            delete_session(db, session_id)
    return CleanupReport(
        matched=len(matched), deleted=0 if dry_run else len(matched), dry_run=dry_run
    )


def _status(db: Session, session_id: str) -> str | None:
    active = db.exec(
        select(func.count())
        .select_from(Turn)
        .where(Turn.session_id == session_id)
        .where(col(Turn.status).in_(ACTIVE_STATUSES))
    ).one()
    if active:
        return None
    last = db.exec(
        select(Turn.status)
        .where(Turn.session_id == session_id)
        .order_by(col(Turn.number).desc())
        .limit(1)
    ).first()
    return "empty" if last is None else STATUS_BY_TURN.get(last)
