"""Create, read, change and delete agents. Callers own the transaction."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from shared.agents.errors import AgentInUse, AgentNameTaken, AgentNotActive, AgentNotFound
from shared.agents.models import Agent, AgentCreate, AgentMode, AgentStatus, AgentUpdate
from shared.clock import utcnow
from shared.ids import IdGenerator, ids


def create_agent(db: Session, spec: AgentCreate, *, id_gen: IdGenerator = ids) -> Agent:
    """Add an agent; raise AgentNameTaken when the name is in use."""
    _ensure_name_free(db, spec.name)
    agent = Agent(id=id_gen.new("agt"), **spec.model_dump())
    db.add(agent)
    db.flush()
    return agent


def get_agent(db: Session, agent_id: str) -> Agent:
    agent = db.get(Agent, agent_id)
    if agent is None:
        raise AgentNotFound(
            f"agent {agent_id!r} not found; list agents with GET /api/agents",
            agent_id=agent_id,
        )
    return agent


def find_agent(db: Session, name_or_id: str) -> Agent:
    """Look an agent up by id, then by name."""
    agent = db.get(Agent, name_or_id)
    if agent is not None:
        return agent
    agent = db.exec(select(Agent).where(Agent.name == name_or_id)).first()
    if agent is None:
        raise AgentNotFound(f"agent {name_or_id!r} not found by id or name", agent=name_or_id)
    return agent


def list_agents(db: Session, *, limit: int = 100, after: str | None = None) -> list[Agent]:
    query = select(Agent).order_by(col(Agent.id)).limit(limit)
    if after is not None:
        query = query.where(col(Agent.id) > after)
    return list(db.exec(query))


def update_agent(db: Session, agent_id: str, change: AgentUpdate) -> Agent:
    agent = get_agent(db, agent_id)
    values = change.model_dump(exclude_unset=True)
    if values.get("name") not in (None, agent.name):
        _ensure_name_free(db, values["name"])
    for field, value in values.items():
        setattr(agent, field, value)
    agent.updated_at = utcnow()
    db.add(agent)
    db.flush()
    return agent


def delete_agent(db: Session, agent_id: str) -> None:
    """Delete an agent that has no sessions; raise AgentInUse otherwise."""
    from shared.sessions.models import AgentSession

    agent = get_agent(db, agent_id)
    count = db.exec(
        select(func.count()).select_from(AgentSession).where(AgentSession.agent_id == agent_id)
    ).one()
    if count:
        raise AgentInUse(
            f"agent {agent_id!r} has {count} session(s); delete them first",
            agent_id=agent_id,
            sessions=count,
        )
    db.delete(agent)
    db.flush()


def _ensure_name_free(db: Session, name: str) -> None:
    taken = db.exec(select(Agent.id).where(Agent.name == name)).first()
    if taken is not None:
        raise AgentNameTaken(
            f"an agent named {name!r} exists already ({taken}); choose another name",
            name=name,
        )


def stop_agent(db: Session, agent_id: str) -> Agent:
    """Stop an agent: no more automatic turns, and its pending turns are cancelled."""
    from shared.sessions.models import AgentSession
    from shared.turns.service import cancel_session_turns

    agent = get_agent(db, agent_id)
    agent.status = AgentStatus.stopped.value
    agent.updated_at = utcnow()
    db.add(agent)
    sessions = db.exec(select(AgentSession).where(AgentSession.agent_id == agent_id)).all()
    for session in sessions:
        session.next_wake_at = None
        db.add(session)
        cancel_session_turns(db, session.id, reason="agent stopped")
    db.flush()
    return agent


def start_agent(db: Session, agent_id: str, now: float) -> Agent:
    """Let a stopped or ended agent run again; a tick agent ticks at once."""
    from shared.sessions.models import AgentSession

    agent = get_agent(db, agent_id)
    agent.status = AgentStatus.active.value
    agent.updated_at = utcnow()
    db.add(agent)
    if agent.mode == AgentMode.tick:
        sessions = db.exec(select(AgentSession).where(AgentSession.agent_id == agent_id)).all()
        for session in sessions:
            session.next_wake_at = now
            db.add(session)
    db.flush()
    return agent


def ensure_active(agent: Agent) -> None:
    """Raise AgentNotActive unless the agent may run turns."""
    if agent.status != AgentStatus.active:
        raise AgentNotActive(
            f"agent {agent.name!r} is {agent.status}; start it with "
            f"POST /api/agents/{agent.id}/start",
            agent_id=agent.id,
            status=agent.status,
        )
