"""Run a session's queued turns, one at a time, under the session's lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from shared import telemetry
from shared.agents.models import Agent, AgentStatus
from shared.cas.models import OwnerKind
from shared.cas.service import add_reference
from shared.clock import Clock, system_clock
from shared.db import Database
from shared.errors import UnavailableError
from shared.events.live import EventPublisher, NullPublisher, publish_all
from shared.events.models import EventType
from shared.events.service import append_event, take_appended
from shared.metrics import LOCK_WAIT_SECONDS, TURN_SECONDS
from shared.queues import Enqueuer
from shared.sessions.models import AgentSession
from shared.turns import service as turns
from shared.turns.automation import after_turn
from shared.turns.errors import LeaseLost
from shared.turns.lease import SqlTurnLock
from shared.turns.models import Turn, TurnStatus
from workers.agent_loop import AgentLoop
from workers.llm.base import ModelReply

log = structlog.get_logger(__name__)


class TurnCancelled(Exception):
    """The turn was cancelled at a safe point and recorded as such."""


class HandBack(Exception):
    """The worker is stopping; the turn goes back to the queue for another worker."""


class TurnEnded(Exception):
    """The turn was recorded as failed at a safe point (its time limit passed)."""


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
        loop: AgentLoop,
        holder_prefix: str,
        stopping: threading.Event,
        publisher: EventPublisher | None = None,
        clock: Clock = system_clock,
        max_attempts: int = 3,
        time_limit_s: float = 900.0,
    ) -> None:
        self._db = db
        self._lock = lock
        self._enqueuer = enqueuer
        self._loop = loop
        self._holder_prefix = holder_prefix
        self._stopping = stopping
        self._publisher = publisher or NullPublisher()
        self._clock = clock
        self._max_attempts = max_attempts
        self._time_limit_s = time_limit_s

    def run_session(self, session_id: str) -> None:
        """Run the session's next queued turn, then wake the session again if more wait.

        One turn per call keeps a busy session from holding a worker thread, and keeps
        each call within the actor's time limit.
        """
        holder = f"{self._holder_prefix}/{threading.get_ident()}"
        claim_started = time.perf_counter()
        token = self._lock.claim(session_id, holder)
        LOCK_WAIT_SECONDS.observe(time.perf_counter() - claim_started)
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
            # Three beats per lease: one missed beat (a pause, a slow commit) keeps it.
            with LeaseKeeper(self._lock, session_id, token, self._lock.ttl_s / 3) as keeper:
                self._run_next(session_id, token, keeper)
        except LeaseLost:
            log.warning("stopped: the lease moved to another worker")
        finally:
            self._lock.release(session_id, token)

    def _run_next(self, session_id: str, token: int, keeper: LeaseKeeper) -> None:
        if self._stopping.is_set():
            return
        started = self._start_next(session_id, token)
        if started is None:
            return
        turn, started_seq = started
        ids = {"turn_id": turn.id, "message_id": turn.message_id}
        attributes = {"foxctl.session_id": session_id, "foxctl.turn_id": turn.id}
        began = time.perf_counter()
        outcome = "finished"
        with (
            structlog.contextvars.bound_contextvars(**ids),
            telemetry.span("turn", attributes) as current,
        ):
            try:
                self._run_turn(turn, token, keeper, started_seq)
            except TurnCancelled:
                outcome = "cancelled"
                log.info("turn cancelled")
            except HandBack:
                outcome = "handed_back"
                log.info("turn handed back: worker is stopping")
            except TurnEnded:
                outcome = "timed_out"
            except (LeaseLost, UnavailableError, SQLAlchemyError):
                # Infrastructure trouble: the actor retries, and the turn runs again.
                outcome = "retried"
                raise
            except TimeLimitExceeded:
                outcome = "timed_out"
                self._fail_quietly(turn, token, "the turn exceeded the worker's time limit")
            except Exception as error:
                # A bug or an unexpected tool failure: re-running would repeat the model
                # calls and tool effects, so the turn ends here.
                outcome = "error"
                telemetry.record_error(current, error)
                log.exception("turn failed with an unexpected error")
                self._fail_quietly(turn, token, f"internal error: {type(error).__name__}")
            finally:
                current.set_attribute("foxctl.outcome", outcome)
                TURN_SECONDS.labels(outcome).observe(time.perf_counter() - began)

    def _fail_quietly(self, turn: Turn, token: int, error: str) -> None:
        with self._fenced(turn.session_id, token) as db:
            current = turns.get_turn(db, turn.id)
            if current.status == TurnStatus.running:
                turns.finish_turn(db, current, TurnStatus.failed, error=error)

    def _start_next(self, session_id: str, token: int) -> tuple[Turn, int] | None:
        """Start the session's next turn; return it with its turn.started sequence."""
        with self._db.write() as db:
            self._lock.fence(db, session_id, token)
            started = self._pick_next(db, session_id)
        self._publish_committed(session_id, db)
        return started

    def _pick_next(self, db: Session, session_id: str) -> tuple[Turn, int] | None:
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
            started_seq = turns.start_turn(db, turn)
            return turn, started_seq
        return None

    def _run_turn(self, turn: Turn, token: int, keeper: LeaseKeeper, started_seq: int) -> None:
        deadline = time.monotonic() + self._time_limit_s
        scope = _Scope(self, turn, token, keeper, deadline=deadline, last_seq=started_seq)
        self._loop.run(turn, scope)

    @contextmanager
    def _fenced(self, session_id: str, token: int) -> Iterator[Session]:
        with self._db.write() as db:
            self._lock.fence(db, session_id, token)
            yield db
        # Only reached after the commit: a rolled-back write publishes nothing.
        self._publish_committed(session_id, db)

    def _publish_committed(self, session_id: str, db: Session) -> None:
        publish_all(self._publisher, session_id, take_appended(db))

    def _has_active_turn(self, session_id: str) -> bool:
        with self._db.read() as db:
            return turns.has_active_turn(db, session_id)


class _Scope:
    """Fenced writes and safe-point checks for one running turn (see TurnScope)."""

    def __init__(
        self,
        runner: TurnRunner,
        turn: Turn,
        token: int,
        keeper: LeaseKeeper,
        *,
        deadline: float,
        last_seq: int,
    ):
        self._runner = runner
        self._deadline = deadline
        self._turn = turn
        self._token = token
        self._keeper = keeper
        self._first_check = True
        # Sequence of the last stored event, which live deltas refer to.
        self._last_seq = last_seq

    def checkpoint(self) -> None:
        if self._keeper.lost.is_set():
            raise LeaseLost(f"lease on session {self._turn.session_id!r} lost", token=self._token)
        if self._runner._stopping.is_set():
            with self._fenced() as db:
                turns.requeue_turn(db, self._current(db), "worker stopping")
            raise HandBack(self._turn.id)
        if time.monotonic() > self._deadline:
            self.fail("the turn took longer than FOXCTL_TURN_TIME_LIMIT_S and was stopped")
            raise TurnEnded(self._turn.id)
        # The turn was checked for a cancel when it started, under the same lease.
        if self._first_check:
            self._first_check = False
            return
        with self._runner._db.read() as db:
            cancel_requested = db.exec(
                select(Turn.cancel_requested).where(Turn.id == self._turn.id)
            ).one()
        if cancel_requested:
            self._cancel()

    def record(
        self, event: EventType, data: dict[str, Any], *, artifacts: tuple[str, ...] = ()
    ) -> None:
        with self._fenced() as db:
            for digest in artifacts:
                add_reference(
                    db, digest, OwnerKind.turn, self._turn.id, session_id=self._turn.session_id
                )
            self._last_seq = append_event(
                db, self._turn.session_id, event, data, turn_id=self._turn.id
            ).seq

    def record_model_call(self, reply: ModelReply, model_name: str) -> None:
        with self._fenced() as db:
            self._add_model_call(db, self._current(db), reply, model_name)

    def finish(self, content: str, reply: ModelReply, model_name: str) -> None:
        with self._fenced() as db:
            current = self._current(db)
            self._add_model_call(db, current, reply, model_name)
            # A cancel that arrived during the model call wins over the reply, because the
            # user sent it before seeing the reply.
            cancelled = current.cancel_requested
            if cancelled:
                turns.finish_turn(db, current, TurnStatus.cancelled, error="cancelled")
            else:
                turns.record_reply(db, current, content)
                self._after_success(db, current)
        if cancelled:
            raise TurnCancelled(self._turn.id)
        log.info("turn succeeded")

    def fail(self, error: str) -> None:
        with self._fenced() as db:
            turns.finish_turn(db, self._current(db), TurnStatus.failed, error=error)
        log.warning("turn failed", error=error)

    def end_tick(self) -> None:
        with self._fenced() as db:
            session = db.get(AgentSession, self._turn.session_id)
            assert session is not None
            agent = db.get(Agent, session.agent_id)
            assert agent is not None
            agent.status = AgentStatus.ended.value
            session.next_wake_at = None
            db.add_all([agent, session])
            append_event(
                db, session.id, EventType.agent_ended, {"agent_id": agent.id}, turn_id=self._turn.id
            )
        log.info("tick loop ended by the agent")

    def publish_delta(self, text: str) -> None:
        self._runner._publisher.publish(
            self._turn.session_id,
            {
                "type": EventType.turn_delta.value,
                "session_id": self._turn.session_id,
                "turn_id": self._turn.id,
                "after_seq": self._last_seq,
                "text": text,
            },
        )

    def _after_success(self, db: Session, turn: Turn) -> None:
        session = db.get(AgentSession, turn.session_id)
        assert session is not None
        agent = db.get(Agent, session.agent_id)
        assert agent is not None
        after_turn(db, session, agent, turn, self._runner._clock.now())

    def _cancel(self) -> None:
        with self._fenced() as db:
            turns.finish_turn(db, self._current(db), TurnStatus.cancelled, error="cancelled")
        raise TurnCancelled(self._turn.id)

    def _current(self, db: Session) -> Turn:
        return turns.get_turn(db, self._turn.id)

    def _add_model_call(self, db: Session, turn: Turn, reply: ModelReply, name: str) -> None:
        turns.add_usage(db, turn, reply.prompt_tokens, reply.completion_tokens)
        self._last_seq = append_event(
            db,
            turn.session_id,
            EventType.model_called,
            {
                "model": name,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "tool_calls": len(reply.tool_calls),
            },
            turn_id=turn.id,
        ).seq

    @contextmanager
    def _fenced(self) -> Iterator[Session]:
        with self._runner._fenced(self._turn.session_id, self._token) as db:
            yield db
