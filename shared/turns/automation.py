"""Turns that agents start on their own: continuations, think cycles and ticks.

Every automatic turn is an ordinary queued turn with a generated user message, so it
runs under the same session lease and in the same order as turns from users.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, select

from shared.agents.models import Agent, AgentMode, AgentStatus
from shared.clock import utcnow
from shared.events.models import EventType
from shared.events.service import append_event
from shared.ids import IdGenerator, ids
from shared.sessions.models import AgentSession, Message, MessageRole
from shared.turns.models import ACTIVE_STATUSES, Turn, TurnTrigger

PROMPTS = {
    TurnTrigger.continuation: (
        "Continue with the task on your own. Say what you did and what is left; if nothing "
        "is left, say so."
    ),
    TurnTrigger.think: (
        "Think cycle: review the conversation and your task, and act if something needs "
        "doing. If nothing does, say so in one sentence."
    ),
    TurnTrigger.tick: (
        "Tick: run one cycle of your task. Call the end_tick tool when there is nothing left to do."
    ),
}


def queue_automatic_turn(
    db: Session, session: AgentSession, trigger: TurnTrigger, *, id_gen: IdGenerator = ids
) -> Turn:
    """Add a generated user message and its queued turn to the session."""
    session.turn_count += 1
    session.updated_at = utcnow()
    message = Message(
        id=id_gen.new("msg"),
        session_id=session.id,
        role=MessageRole.user.value,
        content=PROMPTS[trigger],
    )
    turn = Turn(
        id=id_gen.new("turn"),
        session_id=session.id,
        number=session.turn_count,
        message_id=message.id,
        trigger=trigger.value,
    )
    message.turn_id = turn.id
    message.position = 2 * turn.number - 1
    db.add_all([session, message, turn])
    data = {"message_id": message.id, "role": message.role, "content": message.content}
    append_event(db, session.id, EventType.message_created, data, turn_id=turn.id)
    append_event(
        db,
        session.id,
        EventType.turn_queued,
        {"number": turn.number, "trigger": trigger.value},
        turn_id=turn.id,
    )
    return turn


def after_turn(
    db: Session, session: AgentSession, agent: Agent, turn: Turn, now: float
) -> Turn | None:
    """Queue what the agent's mode asks for after ``turn`` succeeded.

    Returns the continuation turn it queued, if any. Think and tick turns are not queued
    here: this only sets ``next_wake_at`` for the scheduler.
    """
    if agent.status != AgentStatus.active:
        return None
    mode = AgentMode(agent.mode)
    trigger = TurnTrigger(turn.trigger)

    continues = mode in (AgentMode.autonomous, AgentMode.proactive)
    if continues and trigger != TurnTrigger.think and session.auto_turns < agent.max_auto_turns:
        session.auto_turns += 1
        return queue_automatic_turn(db, session, TurnTrigger.continuation)
    if mode == AgentMode.proactive:
        session.next_wake_at = now + agent.think_interval_s
        db.add(session)
    # A tick that fired while another turn ran was skipped, so any turn of a tick agent
    # schedules the next tick when none is due.
    if mode == AgentMode.tick and (trigger == TurnTrigger.tick or session.next_wake_at is None):
        session.next_wake_at = now + agent.tick_interval_s
        db.add(session)
    return None


def due_sessions(db: Session, now: float, *, limit: int = 100) -> list[tuple[str, float]]:
    """List sessions whose think or tick is due: (session id, the due time)."""
    rows = db.exec(
        select(AgentSession.id, AgentSession.next_wake_at)
        .join(Agent, col(Agent.id) == col(AgentSession.agent_id))
        .where(col(AgentSession.next_wake_at).is_not(None))
        .where(col(AgentSession.next_wake_at) <= now)
        .where(Agent.status == AgentStatus.active.value)
        .order_by(col(AgentSession.next_wake_at))
        .limit(limit)
    ).all()
    return [(session_id, float(due)) for session_id, due in rows if due is not None]


def fire_wake(db: Session, session_id: str, due: float) -> Turn | None:
    """Queue the due think or tick turn, once, however many schedulers try.

    Clearing ``next_wake_at`` only where it still holds ``due`` makes the first caller
    win; the next due time is set when the turn succeeds. Returns None when another
    scheduler fired it, or when the session already has a turn waiting.
    """
    sessions = AgentSession.__table__  # type: ignore[attr-defined]
    claimed = db.exec(
        update(sessions)
        .where(sessions.c.id == session_id)
        .where(sessions.c.next_wake_at == due)
        .values(next_wake_at=None)
    )
    if claimed.rowcount != 1:
        return None
    session = db.exec(select(AgentSession).where(AgentSession.id == session_id)).one()
    agent = db.exec(select(Agent).where(Agent.id == session.agent_id)).one()
    busy = db.exec(
        select(Turn.id)
        .where(Turn.session_id == session_id)
        .where(col(Turn.status).in_(ACTIVE_STATUSES))
    ).first()
    if busy is not None:
        # The running turn sets the next due time when it ends.
        return None
    trigger = TurnTrigger.tick if agent.mode == AgentMode.tick else TurnTrigger.think
    return queue_automatic_turn(db, session, trigger)
