"""Append and list events. Callers own the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from shared.events.models import Event, EventOut, EventType
from shared.sessions.models import AgentSession

# Key in ``Session.info`` under which ``append_event`` keeps the events it added, so
# that the caller can publish them once the transaction has committed.
_APPENDED = "foxctl.appended_events"


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
    db.info.setdefault(_APPENDED, []).append(event)
    return event


def take_appended(db: Session) -> list[dict[str, Any]]:
    """Return the events appended in ``db`` as JSON-ready dicts, and forget them.

    Call it after the commit: the events get their ids at flush, and publishing an event
    whose transaction later rolled back would show viewers something that never happened.
    """
    events: list[Event] = db.info.pop(_APPENDED, [])
    return [event_json(event) for event in events]


def event_json(event: Event) -> dict[str, Any]:
    """Return ``event`` in the shape the API and live streams send."""
    return EventOut.model_validate(event, from_attributes=True).model_dump(mode="json")


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
