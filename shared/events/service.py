"""Append and list events. Callers own the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from shared.events.models import Event, EventType
from shared.sessions.models import AgentSession


def append_event(
    db: Session,
    session_id: str,
    event_type: EventType,
    data: dict[str, Any] | None = None,
    *,
    turn_id: str | None = None,
    locked: AgentSession | None = None,
) -> Event:
    """Add an event with the session's next sequence number.

    Bumping the counter takes the session row's lock until commit, so events of one
    session get gap-free numbers in commit order. A caller that already holds the row
    lock passes the row as ``locked``, and the counter is bumped in memory instead.
    """
    if locked is not None:
        locked.event_count += 1
        seq = locked.event_count
        db.add(locked)
    else:
        seq = _next_seq(db, session_id)
    event = Event(
        session_id=session_id, seq=seq, turn_id=turn_id, type=event_type.value, data=data or {}
    )
    db.add(event)
    return event


def _next_seq(db: Session, session_id: str) -> int:
    sessions = AgentSession.__table__  # type: ignore[attr-defined]
    seq: int = db.exec(
        update(sessions)
        .where(sessions.c.id == session_id)
        .values(event_count=sessions.c.event_count + 1)
        .returning(sessions.c.event_count)
    ).scalar_one()
    return seq


def list_events(
    db: Session,
    *,
    session_id: str | None = None,
    turn_id: str | None = None,
    types: list[str] | None = None,
    after_seq: int | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> list[Event]:
    """List events in order: by sequence within a session, by id across sessions."""
    query = select(Event)
    if session_id is not None:
        query = query.where(Event.session_id == session_id)
    if turn_id is not None:
        query = query.where(Event.turn_id == turn_id)
    if types:
        query = query.where(col(Event.type).in_(types))
    if after_seq is not None:
        query = query.where(col(Event.seq) > after_seq)
    if cursor is not None:
        query = query.where(col(Event.id) > cursor)
    return list(db.exec(query.order_by(col(Event.id)).limit(limit)))
