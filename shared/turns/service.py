"""Submit messages as turns, cancel turns, and move turns through their states.

The web tier calls ``submit_message`` and ``request_cancel``; workers call the state
changes. Callers own the transaction; worker-side changes run after ``SqlTurnLock.fence``
in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from shared.agents.models import Agent
from shared.agents.service import ensure_active
from shared.clock import utcnow
from shared.events.models import EventType
from shared.events.service import append_event
from shared.ids import IdGenerator, ids
from shared.sessions.errors import IdempotencyKeyReused, SessionBusy
from shared.sessions.models import AgentSession, BusyPolicy, Message, MessageRole
from shared.sessions.service import get_session
from shared.turns.errors import TurnFinished, TurnNotFound
from shared.turns.models import ACTIVE_STATUSES, SessionLease, Turn, TurnStatus


@dataclass(frozen=True)
class Submission:
    message: Message
    turn: Turn
    replayed: bool


def submit_message(
    db: Session,
    session_id: str,
    content: str,
    *,
    idempotency_key: str | None = None,
    id_gen: IdGenerator = ids,
) -> Submission:
    """Store a user message and the queued turn that will reply to it.

    The session row is locked first, so concurrent posts to one session are numbered in
    commit order and the busy-policy check sees every earlier post.
    Raises SessionBusy (policy ``reject``) and IdempotencyKeyReused.
    """
    session, agent = _lock_session_with_agent(db, session_id)

    if idempotency_key is not None:
        earlier = _find_by_idempotency_key(db, session_id, idempotency_key)
        if earlier is not None:
            return _replay(db, earlier, content)

    ensure_active(agent)
    policy = session.busy_policy
    # With the default policy a running turn changes nothing, so skip the lookup.
    active = next_turn(db, session_id) if policy != BusyPolicy.enqueue else None
    if active is not None and policy == BusyPolicy.reject:
        raise SessionBusy(
            f"session {session_id!r} has turn {active.id!r} {active.status} and its policy "
            "is 'reject'; wait for the turn to finish, cancel it, or change the policy",
            session_id=session_id,
            turn_id=active.id,
        )
    if active is not None and policy == BusyPolicy.interrupt:
        cancel_session_turns(db, session_id, reason="interrupted by a newer message")
        # The cancel events bumped the counter in the database; the in-memory count
        # used below must start from there.
        db.flush()
        db.refresh(session, ["event_count"])

    session.turn_count += 1
    # A user message restarts the autonomous budget of continuation turns.
    session.auto_turns = 0
    session.updated_at = utcnow()
    message = Message(
        id=id_gen.new("msg"),
        session_id=session_id,
        role=MessageRole.user.value,
        content=content,
        idempotency_key=idempotency_key,
    )
    turn = Turn(
        id=id_gen.new("turn"),
        session_id=session_id,
        number=session.turn_count,
        message_id=message.id,
    )
    message.turn_id = turn.id
    message.position = 2 * turn.number - 1
    db.add_all([session, message, turn])
    append_event(
        db,
        session_id,
        EventType.message_created,
        _message_data(message),
        turn_id=turn.id,
        locked=session,
    )
    append_event(
        db,
        session_id,
        EventType.turn_queued,
        {"number": turn.number},
        turn_id=turn.id,
        locked=session,
    )
    db.flush()
    return Submission(message=message, turn=turn, replayed=False)


def _lock_session_with_agent(db: Session, session_id: str) -> tuple[AgentSession, Agent]:
    """Lock the session row and read its agent in one round trip."""
    row = db.exec(
        select(AgentSession, Agent)
        .join(Agent, col(Agent.id) == col(AgentSession.agent_id))
        .where(AgentSession.id == session_id)
        .with_for_update(of=AgentSession)
    ).first()
    if row is None:
        get_session(db, session_id)  # raises SessionNotFound with the usual message
    assert row is not None
    return row[0], row[1]


def get_turn(db: Session, turn_id: str, *, for_update: bool = False) -> Turn:
    query = select(Turn).where(Turn.id == turn_id)
    if for_update:
        query = query.with_for_update()
    turn = db.exec(query).first()
    if turn is None:
        raise TurnNotFound(f"turn {turn_id!r} not found", turn_id=turn_id)
    return turn


def request_cancel(db: Session, turn_id: str) -> Turn:
    """Cancel a queued turn now, or ask its worker to stop a running one.

    A running turn stops at its next safe point (before or after a model call, between
    tool calls) and is then recorded as cancelled. Raises TurnFinished when the turn has
    already ended.
    """
    turn = get_turn(db, turn_id)
    # Lock the session row, which posts and the worker's fenced writes take first too,
    # then read the turn again: a worker that started it has committed by now.
    get_session(db, turn.session_id, for_update=True)
    db.refresh(turn)

    if turn.status == TurnStatus.queued:
        finish_turn(db, turn, TurnStatus.cancelled, error="cancelled before it started")
        return turn
    if turn.status == TurnStatus.running:
        if not turn.cancel_requested:
            turn.cancel_requested = True
            db.add(turn)
            append_event(db, turn.session_id, EventType.turn_cancel_requested, turn_id=turn.id)
        return turn
    raise TurnFinished(
        f"turn {turn_id!r} has already ended with status {turn.status!r}; nothing to cancel",
        turn_id=turn_id,
        status=turn.status,
    )


def next_turn(db: Session, session_id: str) -> Turn | None:
    """Return the session's earliest queued or running turn."""
    return db.exec(
        select(Turn)
        .where(Turn.session_id == session_id)
        .where(col(Turn.status).in_(ACTIVE_STATUSES))
        .order_by(col(Turn.number))
        .limit(1)
    ).first()


def has_active_turn(db: Session, session_id: str) -> bool:
    return next_turn(db, session_id) is not None


def start_turn(db: Session, turn: Turn) -> int:
    """Mark a turn running and count the attempt (a re-run after a crash counts again).

    Returns the sequence number of the turn.started event.
    """
    turn.status = TurnStatus.running.value
    turn.attempts += 1
    turn.started_at = utcnow()
    db.add(turn)
    event = append_event(
        db, turn.session_id, EventType.turn_started, {"attempt": turn.attempts}, turn_id=turn.id
    )
    return event.seq


def requeue_turn(db: Session, turn: Turn, reason: str) -> None:
    """Hand a running turn back to the queue, for a worker that is shutting down."""
    turn.status = TurnStatus.queued.value
    turn.attempts = max(turn.attempts - 1, 0)
    db.add(turn)
    append_event(db, turn.session_id, EventType.turn_requeued, {"reason": reason}, turn_id=turn.id)


def record_reply(db: Session, turn: Turn, content: str, *, id_gen: IdGenerator = ids) -> Message:
    """Store the assistant's reply and mark the turn succeeded."""
    reply = Message(
        id=id_gen.new("msg"),
        session_id=turn.session_id,
        role=MessageRole.assistant.value,
        content=content,
        turn_id=turn.id,
        position=2 * turn.number,
    )
    db.add(reply)
    turn.reply_message_id = reply.id
    append_event(
        db, turn.session_id, EventType.message_created, _message_data(reply), turn_id=turn.id
    )
    finish_turn(db, turn, TurnStatus.succeeded)
    return reply


def finish_turn(db: Session, turn: Turn, status: TurnStatus, *, error: str | None = None) -> None:
    turn.status = status.value
    turn.error = error
    turn.finished_at = utcnow()
    db.add(turn)
    event_type = {
        TurnStatus.succeeded: EventType.turn_succeeded,
        TurnStatus.failed: EventType.turn_failed,
        TurnStatus.cancelled: EventType.turn_cancelled,
    }[status]
    data: dict[str, Any] = {"status": status.value}
    if error is not None:
        data["error"] = error
    append_event(db, turn.session_id, event_type, data, turn_id=turn.id)


def cancel_session_turns(db: Session, session_id: str, *, reason: str) -> None:
    """Cancel the session's queued turns and ask its running turn to stop."""
    running = db.exec(
        select(Turn)
        .where(Turn.session_id == session_id)
        .where(col(Turn.status).in_(ACTIVE_STATUSES))
    ).all()
    for turn in running:
        if turn.status == TurnStatus.queued:
            finish_turn(db, turn, TurnStatus.cancelled, error=reason)
            continue
        if not turn.cancel_requested:
            turn.cancel_requested = True
            db.add(turn)
            append_event(
                db,
                session_id,
                EventType.turn_cancel_requested,
                {"reason": reason},
                turn_id=turn.id,
            )


def _find_by_idempotency_key(db: Session, session_id: str, key: str) -> Message | None:
    return db.exec(
        select(Message)
        .where(Message.session_id == session_id)
        .where(Message.idempotency_key == key)
    ).first()


def _replay(db: Session, earlier: Message, content: str) -> Submission:
    if earlier.content != content:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {earlier.idempotency_key!r} was used for a different message "
            f"({earlier.id}); send a new key for new content",
            message_id=earlier.id,
        )
    turn = db.exec(select(Turn).where(Turn.message_id == earlier.id)).one()
    return Submission(message=earlier, turn=turn, replayed=True)


def _message_data(message: Message) -> dict[str, Any]:
    return {"message_id": message.id, "role": message.role, "content": message.content}


def add_usage(db: Session, turn: Turn, prompt_tokens: int, completion_tokens: int) -> None:
    """Add a model call's token usage to the turn."""
    turn.prompt_tokens += prompt_tokens
    turn.completion_tokens += completion_tokens
    turn.model_calls += 1
    db.add(turn)


def sessions_needing_work(
    db: Session, now: float, *, quiet_s: float, limit: int = 1000
) -> list[str]:
    """Pick sessions whose work was lost, and mark them woken.

    A session qualifies when it has a queued or running turn older than ``quiet_s``
    seconds, no live lease, and no wake-up from a reconciler in the last ``quiet_s``
    seconds. Marking them makes other reconcilers skip them for that long, so a backlog
    is not multiplied by the number of worker processes.
    """
    lease = SessionLease.__table__  # type: ignore[attr-defined]
    settled = datetime.fromtimestamp(now - quiet_s, UTC)
    candidates = (
        select(Turn.session_id)
        .join(lease, lease.c.session_id == Turn.session_id)
        .where(col(Turn.status).in_(ACTIVE_STATUSES))
        .where(col(Turn.created_at) <= settled)
        .where((lease.c.holder.is_(None)) | (lease.c.expires_at <= now))
        .distinct()
        .limit(limit)
    )
    session_ids = list(db.exec(candidates))
    if not session_ids:
        return []
    woken = db.exec(
        update(lease)
        .where(lease.c.session_id.in_(session_ids))
        .where(lease.c.woken_at.is_(None) | (lease.c.woken_at <= now - quiet_s))
        .values(woken_at=now)
        .returning(lease.c.session_id)
    )
    return sorted(woken.scalars())


__all__ = [
    "Submission",
    "add_usage",
    "finish_turn",
    "get_turn",
    "has_active_turn",
    "next_turn",
    "record_reply",
    "request_cancel",
    "requeue_turn",
    "sessions_needing_work",
    "start_turn",
    "submit_message",
]


def reap_stale_turns(db: Session, now: float, *, stale_after_s: float) -> list[str]:
    """Fail running turns that no live worker leases and that started long ago.

    Such a turn outlived every re-run by the reconciler (its lease expired and nobody
    claimed the session again), so it would otherwise stay running forever.
    """
    lease = SessionLease.__table__  # type: ignore[attr-defined]
    started_before = datetime.fromtimestamp(now - stale_after_s, UTC)
    stale = db.exec(
        select(Turn)
        .join(lease, lease.c.session_id == Turn.session_id)
        .where(Turn.status == TurnStatus.running.value)
        .where(col(Turn.started_at) < started_before)
        .where((lease.c.holder.is_(None)) | (lease.c.expires_at <= now))
    ).all()
    for turn in stale:
        get_session(db, turn.session_id, for_update=True)
        finish_turn(
            db, turn, TurnStatus.failed, error=f"no worker finished it within {stale_after_s:.0f} s"
        )
    return [turn.id for turn in stale]
