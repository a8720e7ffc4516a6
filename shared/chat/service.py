"""Accept a platform message once: deduplicate, map the conversation, submit a turn.

Callers own the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from shared.chat.models import ChatConversation, ChatDelivery, ChatUpdate
from shared.clock import utcnow
from shared.ids import IdGenerator, ids
from shared.sessions.models import BusyPolicy, SessionCreate
from shared.sessions.service import create_session
from shared.turns.service import Submission, submit_message


@dataclass(frozen=True)
class InboundMessage:
    """A user message from a platform, already verified and parsed."""

    platform: str
    #: Telegram update_id, Discord interaction id, Teams conversation and activity id.
    delivery_id: str
    chat_id: str
    text: str
    tenant: str = ""
    thread_id: str = ""
    #: Where the reply goes; stored on the delivery.
    target: dict[str, Any] = field(default_factory=dict)
    #: What a later proactive reply needs; stored on the conversation.
    reference: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    submission: Submission
    delivery_id: str


def accept_message(
    db: Session,
    inbound: InboundMessage,
    *,
    agent: str,
    default_policy: BusyPolicy = BusyPolicy.enqueue,
    id_gen: IdGenerator = ids,
) -> Accepted | None:
    """Store the delivery id, the message with its queued turn, and a pending reply.

    Returns None for a delivery id stored before. ``agent`` (id or name) opens the
    session when the conversation is new. Raises IntegrityError when a concurrent
    request stores the same delivery id first; ``delivery_seen`` then
    distinguishes a duplicate from another failure.
    """
    if delivery_seen(db, inbound.platform, inbound.delivery_id):
        return None
    update = ChatUpdate(platform=inbound.platform, delivery_id=inbound.delivery_id)
    db.add(update)
    # Flushing first makes a concurrent twin wait here on the primary key, then fail.
    db.flush()

    conversation = _conversation(db, inbound, agent, default_policy, id_gen)
    submission = submit_message(
        db,
        conversation.session_id,
        inbound.text,
        idempotency_key=f"{inbound.platform}:{inbound.delivery_id}"[:200],
        id_gen=id_gen,
    )
    update.turn_id = submission.turn.id
    delivery = ChatDelivery(
        id=id_gen.new("dlv"),
        platform=inbound.platform,
        session_id=conversation.session_id,
        turn_id=submission.turn.id,
        target=inbound.target,
    )
    db.add_all([update, delivery])
    db.flush()
    return Accepted(submission=submission, delivery_id=delivery.id)


def delivery_seen(db: Session, platform: str, delivery_id: str) -> bool:
    return db.get(ChatUpdate, (platform, delivery_id)) is not None


def find_conversation(db: Session, inbound: InboundMessage) -> ChatConversation | None:
    return db.exec(
        select(ChatConversation)
        .where(ChatConversation.platform == inbound.platform)
        .where(ChatConversation.tenant == inbound.tenant)
        .where(ChatConversation.chat_id == inbound.chat_id)
        .where(ChatConversation.thread_id == inbound.thread_id)
    ).first()


def _conversation(
    db: Session,
    inbound: InboundMessage,
    agent: str,
    default_policy: BusyPolicy,
    id_gen: IdGenerator,
) -> ChatConversation:
    existing = find_conversation(db, inbound)
    if existing is not None:
        if inbound.reference and existing.reference != inbound.reference:
            existing.reference = inbound.reference
            existing.updated_at = utcnow()
            db.add(existing)
        return existing

    # Two first messages of one chat can race on different replicas. The savepoint
    # lets the loser read the winner's row instead of failing the whole request.
    try:
        with db.begin_nested():
            session = create_session(
                db,
                SessionCreate(agent_id=agent, title=_title(inbound)),
                default_policy=default_policy,
                id_gen=id_gen,
            )
            created = ChatConversation(
                id=id_gen.new("chc"),
                platform=inbound.platform,
                tenant=inbound.tenant,
                chat_id=inbound.chat_id,
                thread_id=inbound.thread_id,
                session_id=session.id,
                reference=inbound.reference,
            )
            db.add(created)
            db.flush()
        return created
    except IntegrityError:
        winner = find_conversation(db, inbound)
        if winner is None:
            raise
        return winner


def _title(inbound: InboundMessage) -> str:
    return f"{inbound.platform} {inbound.chat_id}"[:200]


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters, at line breaks or
    spaces when one falls in the second half of a piece."""
    if not text:
        return [""]
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit)
        if cut == -1:
            cut = rest.rfind(" ", limit // 2, limit)
        if cut == -1:
            cut = limit
        pieces.append(rest[:cut])
        rest = rest[cut:].lstrip("\n ") if cut < limit else rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces
