"""Run a session's queued turns, one at a time, under the session's lease."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from sqlmodel import col, select

from shared.agents.models import Agent
from shared.db import Database
from shared.events.models import EventType
from shared.events.service import append_event
from shared.queues import Enqueuer
from shared.sessions.models import AgentSession, Message
from shared.turns import service as turns
from shared.turns.errors import LeaseLost
from shared.turns.lease import SqlTurnLock
from shared.turns.models import Turn, TurnStatus
from workers.llm.base import ChatModel, ModelError, ModelReply
from workers.tools import ToolRegistry, ToolResult, allowed_tools

log = structlog.get_logger(__name__)

#: How many earlier messages a turn sends to the model.
HISTORY_LIMIT = 200


class TurnCancelled(Exception):
    """The turn was cancelled at a safe point and recorded as such."""


class HandBack(Exception):
    """The worker is stopping; the turn goes back to the queue for another worker."""


class LeaseKeeper:
    """Renew a lease in the background and note when it is lost."""

    def __init__(self, lock: SqlTurnLock, session_id: str, token: int, interval_s: float):
        self.lost = threading.Event()
        self._lock = lock
        self._session_id = session_id
        self._token = token
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                renewed = self._lock.renew(self._session_id, self._token)
            except Exception:
                # A failed renewal is retried on the next beat; the lease survives
                # one missed beat because the interval is a third of its TTL.
                log.exception("lease renewal failed", session_id=self._session_id)
                continue
            if not renewed:
                log.warning("lease lost", session_id=self._session_id, token=self._token)
                self.lost.set()
                return


class TurnRunner:
    """Claim a session, run its queued turns in order, release it.

    Safe to call for the same session from many threads and processes: the lease lets
    one caller run, and the others return at once. Every write checks the fencing token.
    """

    def __init__(
        self,
        *,
        db: Database,
        lock: SqlTurnLock,
        enqueuer: Enqueuer,
        model_for: Callable[[Agent], ChatModel],
        tools: ToolRegistry,
        holder_prefix: str,
        stopping: threading.Event,
        max_attempts: int = 3,
    ) -> None:
        self._db = db
        self._lock = lock
        self._enqueuer = enqueuer
        self._model_for = model_for
        self._tools = tools
        self._holder_prefix = holder_prefix
        self._stopping = stopping
        self._max_attempts = max_attempts

    def run_session(self, session_id: str) -> None:
        """Run the session's next queued turn, then wake the session again if more wait.

        One turn per call keeps a busy session from holding a worker thread, and keeps
        each call within the actor's time limit.
        """
        holder = f"{self._holder_prefix}/{threading.get_ident()}"
        token = self._lock.claim(session_id, holder)
        if token is None:
            log.debug("session held by another worker", session_id=session_id)
            return

        with structlog.contextvars.bound_contextvars(session_id=session_id, lease=token):
            self._run_with_lease(session_id, token)

        # Wake-ups that arrived while we held the lease were dropped by their claim, so
        # look once more after the release. A post committed after this look sends its
        # own wake-up, which finds the lease free.
        if self._has_active_turn(session_id):
            self._enqueuer.wake_session(session_id)

    def _run_with_lease(self, session_id: str, token: int) -> None:
        try:
            with LeaseKeeper(self._lock, session_id, token, self._lock.ttl_s / 3) as keeper:
                self._run_next(session_id, token, keeper)
        except LeaseLost:
            log.warning("stopped: the lease moved to another worker")
        finally:
            self._lock.release(session_id, token)

    def _run_next(self, session_id: str, token: int, keeper: LeaseKeeper) -> None:
        if self._stopping.is_set():
            return
        turn = self._start_next(session_id, token)
        if turn is None:
            return
        with structlog.contextvars.bound_contextvars(turn_id=turn.id):
            try:
                self._run_turn(turn, token, keeper)
            except TurnCancelled:
                log.info("turn cancelled")
            except HandBack:
                log.info("turn handed back: worker is stopping")

    def _start_next(self, session_id: str, token: int) -> Turn | None:
        with self._db.write() as db:
            self._lock.fence(db, session_id, token)
            while (turn := turns.next_turn(db, session_id)) is not None:
                if turn.cancel_requested:
                    turns.finish_turn(db, turn, TurnStatus.cancelled, error="cancelled")
                    continue
                if turn.status == TurnStatus.running and turn.attempts >= self._max_attempts:
                    # The holders of earlier attempts died mid-turn (the lease expired
                    # while the turn was running). Stop retrying a turn that kills workers.
                    turns.finish_turn(
                        db,
                        turn,
                        TurnStatus.failed,
                        error=f"worker stopped {turn.attempts} times while running this turn",
                    )
                    continue
                if turn.status == TurnStatus.running:
                    log.warning("re-running a turn whose worker died", turn_id=turn.id)
                turns.start_turn(db, turn)
                return turn
        return None

    def _run_turn(self, turn: Turn, token: int, keeper: LeaseKeeper) -> None:
        agent, conversation = self._load_conversation(turn)
        model = self._model_for(agent)
        allowed = allowed_tools(agent.role, agent.tool_profile, agent.tools)
        tool_specs = self._tools.specs(allowed)

        for _ in range(agent.max_iterations):
            self._checkpoint(turn, token, keeper)
            try:
                reply = model.complete(conversation, tool_specs)
            except ModelError as error:
                self._fail(turn, token, f"model {model.name!r} failed: {error.message}")
                return

            if not reply.tool_calls:
                self._finish(turn, token, reply, model.name)
                return

            self._record_model_call(turn, token, reply, model.name)
            conversation.append(_assistant_tool_message(reply))
            for call in reply.tool_calls:
                self._checkpoint(turn, token, keeper)
                self._record(
                    turn,
                    token,
                    EventType.tool_called,
                    {
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                    },
                )
                result = self._tools.run(allowed, call)
                self._record(turn, token, EventType.tool_result, _tool_result_data(result))
                conversation.append(
                    {"role": "tool", "tool_call_id": result.call_id, "content": result.output}
                )

        self._fail(
            turn,
            token,
            f"no final reply after max_iterations={agent.max_iterations} model calls; "
            "raise the agent's max_iterations or simplify the request",
        )

    def _load_conversation(self, turn: Turn) -> tuple[Agent, list[dict[str, Any]]]:
        with self._db.read() as db:
            session = db.get(AgentSession, turn.session_id)
            assert session is not None
            agent = db.get(Agent, session.agent_id)
            assert agent is not None
            history = db.exec(
                select(Message)
                .where(Message.session_id == turn.session_id)
                .where(col(Message.id) <= turn.message_id)
                .order_by(col(Message.id).desc())
                .limit(HISTORY_LIMIT)
            ).all()
        conversation: list[dict[str, Any]] = []
        if agent.system_prompt:
            conversation.append({"role": "system", "content": agent.system_prompt})
        conversation += [{"role": m.role, "content": m.content} for m in reversed(history)]
        return agent, conversation

    def _checkpoint(self, turn: Turn, token: int, keeper: LeaseKeeper) -> None:
        """Stop here if the lease is gone, the worker is stopping or a cancel came in."""
        if keeper.lost.is_set():
            raise LeaseLost(f"lease on session {turn.session_id!r} lost", token=token)
        with self._db.read() as db:
            cancel_requested = db.exec(
                select(Turn.cancel_requested).where(Turn.id == turn.id)
            ).one()
        if cancel_requested:
            with self._fenced(turn.session_id, token) as db:
                current = turns.get_turn(db, turn.id)
                turns.finish_turn(db, current, TurnStatus.cancelled, error="cancelled")
            raise TurnCancelled(turn.id)
        if self._stopping.is_set():
            with self._fenced(turn.session_id, token) as db:
                turns.requeue_turn(db, turns.get_turn(db, turn.id), "worker stopping")
            raise HandBack(turn.id)

    def _finish(self, turn: Turn, token: int, reply: ModelReply, model_name: str) -> None:
        with self._fenced(turn.session_id, token) as db:
            current = turns.get_turn(db, turn.id)
            self._add_model_call(db, current, reply, model_name)
            # A cancel that came in during the model call wins over the reply: the user
            # asked for it before they could see the answer.
            cancelled = current.cancel_requested
            if cancelled:
                turns.finish_turn(db, current, TurnStatus.cancelled, error="cancelled")
            else:
                turns.record_reply(db, current, reply.content)
        if cancelled:
            raise TurnCancelled(turn.id)
        log.info("turn succeeded")

    def _fail(self, turn: Turn, token: int, error: str) -> None:
        with self._fenced(turn.session_id, token) as db:
            turns.finish_turn(db, turns.get_turn(db, turn.id), TurnStatus.failed, error=error)
        log.warning("turn failed", error=error)

    def _record_model_call(
        self, turn: Turn, token: int, reply: ModelReply, model_name: str
    ) -> None:
        with self._fenced(turn.session_id, token) as db:
            self._add_model_call(db, turns.get_turn(db, turn.id), reply, model_name)

    def _add_model_call(self, db: Any, turn: Turn, reply: ModelReply, model_name: str) -> None:
        turns.set_usage(db, turn, reply.prompt_tokens, reply.completion_tokens)
        append_event(
            db,
            turn.session_id,
            EventType.model_called,
            {
                "model": model_name,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "tool_calls": len(reply.tool_calls),
            },
            turn_id=turn.id,
        )

    def _record(self, turn: Turn, token: int, event: EventType, data: dict[str, Any]) -> None:
        with self._fenced(turn.session_id, token) as db:
            append_event(db, turn.session_id, event, data, turn_id=turn.id)

    @contextmanager
    def _fenced(self, session_id: str, token: int) -> Iterator[Any]:
        with self._db.write() as db:
            self._lock.fence(db, session_id, token)
            yield db

    def _has_active_turn(self, session_id: str) -> bool:
        with self._db.read() as db:
            return turns.has_active_turn(db, session_id)


def _assistant_tool_message(reply: ModelReply) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": reply.content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ],
    }


def _tool_result_data(result: ToolResult) -> dict[str, Any]:
    return {
        "call_id": result.call_id,
        "name": result.name,
        "ok": result.ok,
        "output": result.output,
    }
