"""Delete stored platform delivery ids once no platform can redeliver them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from shared.chat.models import ChatUpdate


@dataclass(frozen=True)
class PruneReport:
    matched: int
    deleted: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "deleted": self.deleted, "dry_run": self.dry_run}


def prune_updates(db: Session, *, older_than_s: float, dry_run: bool, now: float) -> PruneReport:
    """Delete the stored delivery ids received more than ``older_than_s`` seconds ago.

    A platform that redelivers an update after its id was deleted starts a second
    turn, so ``older_than_s`` must exceed every platform's redelivery window.
    """
    cutoff = datetime.fromtimestamp(now - older_than_s, UTC)
    old = col(ChatUpdate.received_at) < cutoff
    matched = int(db.exec(select(func.count()).select_from(ChatUpdate).where(old)).one())
    if dry_run or not matched:
        return PruneReport(matched=matched, deleted=0, dry_run=dry_run)
    result = db.exec(delete(ChatUpdate).where(old))
    return PruneReport(matched=matched, deleted=int(result.rowcount), dry_run=False)
