"""Claims on chat deliveries, and the deliveries whose wake-up was lost.

A delivery attempt first claims its row with one ``UPDATE`` that succeeds only when no
other attempt has a live claim on it. The claim carries a token that every write of the attempt
checks. So two copies of one wake-up never send the same piece, whether the copy is a
broker redelivery or a re-enqueue by the reconciler while the first copy still waited in
the queue. Callers own the transaction.

NOTE: expiry compares the clocks of different hosts, as the turn lease does, so hosts
need synchronised clocks (NTP).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from shared.chat.models import ChatDelivery, DeliveryStatus

_TABLE = ChatDelivery.__table__  # type: ignore[attr-defined]


def claim_delivery(db: Session, delivery_id: str, now: float, ttl_s: float) -> int | None:
    """Claim a pending delivery for ``ttl_s`` seconds unless another claim is live.

    Returns the new claim token, or None when the delivery is finished, missing, or
    held until after ``now``.
    """
    statement = (
        update(_TABLE)
        .where(_TABLE.c.id == delivery_id)
        .where(_TABLE.c.status == DeliveryStatus.pending.value)
        .where(_TABLE.c.claimed_until <= now)
        .values(
            claim_token=_TABLE.c.claim_token + 1,
            claimed_until=now + ttl_s,
            updated_at=_utc(now),
        )
        .returning(_TABLE.c.claim_token)
    )
    token: int | None = db.exec(statement).scalar_one_or_none()
    return token


def update_claimed(
    db: Session, delivery_id: str, token: int, now: float, ttl_s: float, **changes: Any
) -> bool:
    """Write ``changes`` and extend the claim, if ``token`` is still the delivery's claim.

    Returns False, and writes nothing, when a newer claim took the delivery.
    """
    result = db.exec(
        update(_TABLE)
        .where(_TABLE.c.id == delivery_id)
        .where(_TABLE.c.claim_token == token)
        .values(**changes, claimed_until=now + ttl_s, updated_at=_utc(now))
    )
    return bool(result.rowcount == 1)


def release_claim(db: Session, delivery_id: str, token: int, until: float) -> None:
    """Let other attempts claim the delivery from ``until`` on (seconds since the epoch).

    A release by a token that lost the claim does nothing.
    """
    db.exec(
        update(_TABLE)
        .where(_TABLE.c.id == delivery_id)
        .where(_TABLE.c.claim_token == token)
        .values(claimed_until=until)
    )


def deliveries_needing_work(db: Session, now: float, *, stale_s: float, limit: int) -> list[str]:
    """Pick pending deliveries that made no progress for ``stale_s``, and mark them.

    A delivery qualifies when it has no live claim and its row was not updated in the
    last ``stale_s`` seconds: a running attempt writes to its row, so it never
    qualifies. Marking touches ``updated_at``, so other reconcilers skip the delivery
    for another ``stale_s``. At most ``limit`` are picked, oldest first.
    """
    settled = _utc(now - stale_s)
    conditions = [_TABLE.c.updated_at <= settled]
    return _mark_unclaimed(
        db, now, conditions, {"updated_at": _utc(now)}, order=_TABLE.c.updated_at, limit=limit
    )


def abandon_deliveries(db: Session, now: float, *, older_than_s: float, limit: int) -> list[str]:
    """Mark failed the unclaimed pending deliveries created over ``older_than_s`` ago.

    Returns their ids. At most ``limit`` are marked per call.
    """
    conditions = [_TABLE.c.created_at <= _utc(now - older_than_s)]
    changes = {"status": DeliveryStatus.failed.value, "updated_at": _utc(now)}
    return _mark_unclaimed(db, now, conditions, changes, order=None, limit=limit)


def _mark_unclaimed(
    db: Session,
    now: float,
    conditions: list[Any],
    changes: dict[str, Any],
    *,
    order: Any,
    limit: int,
) -> list[str]:
    """Write ``changes`` to at most ``limit`` pending, unclaimed deliveries matching
    ``conditions``; return their ids, sorted.

    The update repeats the conditions, so a row that another process changed between
    the select and the update is left alone.
    """
    matching = [
        _TABLE.c.status == DeliveryStatus.pending.value,
        _TABLE.c.claimed_until <= now,
        *conditions,
    ]
    candidates = select(_TABLE.c.id).where(*matching).limit(limit)
    if order is not None:
        candidates = candidates.order_by(order)
    delivery_ids = list(db.exec(candidates))
    if not delivery_ids:
        return []
    marked = db.exec(
        update(_TABLE)
        .where(_TABLE.c.id.in_(delivery_ids), *matching)
        .values(**changes)
        .returning(_TABLE.c.id)
    )
    return sorted(marked.scalars())


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
