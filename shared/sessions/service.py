"""Create, read and delete sessions; list their messages. Callers own the transaction."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import Session, col, select

from shared.agents.models import AgentMode, AgentStatus
from shared.agents.service import find_agent
from shared.cas.service import release_session_references
from shared.clock import Clock, system_clock
from shared.ids import IdGenerator, ids
from shared.sessions.errors import SessionNotFound
from shared.sessions.models import AgentSession, BusyPolicy, Message, SessionCreate
from shared.turns.models import SessionLease


def create_session(
    db: Session,
    spec: SessionCreate,
    *,
    default_policy: BusyPolicy = BusyPolicy.enqueue,
    id_gen: IdGenerator = ids,
    clock: Clock = system_clock,
) -> AgentSession:
    """Add a session for an agent given by id or name.

    A session of an active tick agent gets its first tick at once.
    """
    agent = find_agent(db, spec.agent_id)
    session = AgentSession(
        id=id_gen.new("ses"),
        agent_id=agent.id,
        title=spec.title,
        busy_policy=(spec.busy_policy or default_policy).value,
    )
    if agent.mode == AgentMode.tick and agent.status == AgentStatus.active:
        session.next_wake_at = clock.now()
    db.add(session)
    db.add(SessionLease(session_id=session.id))
    db.flush()
    return session


def get_session(db: Session, session_id: str, *, for_update: bool = False) -> AgentSession:
    query = select(AgentSession).where(AgentSession.id == session_id)
    if for_update:
        query = query.with_for_update()
    session = db.exec(query).first()
    if session is None:
        raise SessionNotFound(
            f"session {session_id!r} not found; list sessions with GET /api/sessions",
            session_id=session_id,
        )
    return session


def list_sessions(
    db: Session, *, agent_id: str | None = None, limit: int = 100, after: str | None = None
) -> list[AgentSession]:
    query = select(AgentSession).order_by(col(AgentSession.id)).limit(limit)
    if agent_id is not None:
        query = query.where(AgentSession.agent_id == agent_id)
    if after is not None:
        query = query.where(col(AgentSession.id) > after)
    return list(db.exec(query))


def delete_session(db: Session, session_id: str) -> None:
    """Delete a session with its messages, turns, events and lease."""
    from shared.events.models import Event
    from shared.turns.models import Turn

    session = get_session(db, session_id, for_update=True)
    release_session_references(db, session_id)
    # The session row is locked first, as in a worker's fenced write, so the delete of
    # the lease row below cannot deadlock with a running turn. Explicit deletes: SQLite
    # enforces ON DELETE CASCADE only with foreign_keys=ON.
    for table in (Event, Message, Turn, SessionLease):
        db.exec(delete(table).where(col(table.session_id) == session_id))
    db.delete(session)
    db.flush()


def list_messages(
    db: Session, session_id: str, *, limit: int = 100, after: int | None = None
) -> list[Message]:
    """List messages in conversation order; ``after`` is a position from an earlier page."""
    get_session(db, session_id)
    query = (
        select(Message)
        .where(Message.session_id == session_id)
        .order_by(col(Message.position))
        .limit(limit)
    )
    if after is not None:
        query = query.where(col(Message.position) > after)
    return list(db.exec(query))
