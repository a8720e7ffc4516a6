"""Send a turn's reply to its chat platform: placeholder, throttled edits, final text.

One actor call follows one turn. It subscribes to the session's live events before it
reads the database, so no streamed text is missed, and edits the placeholder at most
once per ``edit_interval_s``. The final text comes from the stored reply, is split to
the platform's limit, and each piece is recorded as sent before the next one, so a
retried delivery resumes where it stopped instead of sending a piece twice.

Each call claims the delivery first, and every write checks the claim. A second copy of
the wake-up (a redelivery, or a re-enqueue by the delivery reconciler) that finds the
delivery held ends without sending anything.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog

from shared.chat.clients import ReplyClient
from shared.chat.deliveries import claim_delivery, release_claim, update_claimed
from shared.chat.errors import PlatformError, RateLimited
from shared.chat.models import ChatDelivery, DeliveryStatus
from shared.chat.service import split_text
from shared.clock import Clock, system_clock
from shared.db import Database
from shared.events.live import EventPublisher, LiveEvent, MemoryPublisher
from shared.events.models import EventType
from shared.events.redis_live import channel_for
from shared.sessions.models import Message
from shared.turns.models import Turn, TurnStatus

log = structlog.get_logger(__name__)

#: How long one feed poll waits for a live event, in seconds.
POLL_S = 0.2


class LiveFeed(Protocol):
    def poll(self, timeout_s: float) -> list[LiveEvent]:
        """Return the live events that arrived, waiting up to ``timeout_s`` for one."""
        ...

    def close(self) -> None: ...


class RedisFeed:
    """One session's live events from Redis pub/sub."""

    def __init__(self, redis_url: str, session_id: str) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(channel_for(redis_url, session_id))

    def poll(self, timeout_s: float) -> list[LiveEvent]:
        events = []
        message = self._pubsub.get_message(timeout=timeout_s)
        while message is not None:
            if message.get("type") == "message":
                with contextlib.suppress(ValueError):
                    events.append(json.loads(message["data"]))
            message = self._pubsub.get_message(timeout=0)
        return events

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


class MemoryFeed:
    """One session's live events from the in-process publisher (``foxctl up``)."""

    def __init__(self, publisher: MemoryPublisher, session_id: str) -> None:
        self._publisher = publisher
        self._session_id = session_id
        self._queue: queue.SimpleQueue[LiveEvent] = queue.SimpleQueue()
        publisher.subscribe(session_id, self._queue.put)

    def poll(self, timeout_s: float) -> list[LiveEvent]:
        try:
            events = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    def close(self) -> None:
        self._publisher.unsubscribe(self._session_id, self._queue.put)


def feed_factory(broker_url: str, publisher: EventPublisher) -> Callable[[str], LiveFeed]:
    """Return a function that opens a session's live feed for this process."""
    if isinstance(publisher, MemoryPublisher):
        memory = publisher
        return lambda session_id: MemoryFeed(memory, session_id)
    return lambda session_id: RedisFeed(broker_url, session_id)


class DeliveryLater(Exception):
    """Try the delivery again after ``delay_s``; what was sent so far is recorded."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class ClaimLost(Exception):
    """The delivery was deleted, or another attempt claimed it after this one's claim
    expired."""


@dataclass(frozen=True)
class DeliverySettings:
    edit_interval_s: float = 1.0
    placeholder_text: str = "…"
    #: How long one call follows a turn before handing the thread back and retrying.
    follow_s: float = 300.0
    #: How long a claim lasts without a write; a call renews it every third of that.
    #: NOTE: a platform call that outlasts the claim lets a second copy of the wake-up
    #: claim the delivery, and if the call then succeeds, its piece can reach the chat
    #: twice.
    claim_ttl_s: float = 30.0


class ChatDeliverer:
    def __init__(
        self,
        db: Database,
        clients: Mapping[str, ReplyClient],
        open_feed: Callable[[str], LiveFeed],
        settings: DeliverySettings,
        *,
        stopping: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Clock = system_clock,
    ) -> None:
        self._db = db
        self._clients = clients
        self._open_feed = open_feed
        self._settings = settings
        self._stopping = stopping or threading.Event()
        self._clock = clock
        # Claim expiries are compared across hosts, so they use the wall clock.
        self._wall_clock = wall_clock

    def deliver(self, delivery_id: str) -> None:
        """Send the reply of a delivery's turn. Idempotent: a finished delivery is skipped.

        Raises DeliveryLater after a 429 (with its Retry-After), when the turn is still
        running after ``follow_s``, or when the worker is stopping; no other call claims
        the delivery before that retry is due. A reply that the platform rejects (4xx
        other than 429) is logged and marked failed, not retried. A call that finds the
        delivery claimed by another call returns without sending.
        """
        delivery = self._load(delivery_id)
        if delivery is None or delivery.status != DeliveryStatus.pending:
            return
        client = self._clients.get(delivery.platform)
        if client is None:
            log.error("no client for chat platform; reply not sent", platform=delivery.platform)
            return
        delivery = self._claim(delivery_id)
        if delivery is None:
            log.info("chat delivery claimed by another attempt; skipped", delivery_id=delivery_id)
            return

        feed = self._open_feed(delivery.session_id)
        free_at = 0.0
        try:
            self._send_reply(delivery, client, feed)
        except DeliveryLater as later:
            free_at = self._wall_clock.now() + later.delay_s
            raise
        except ClaimLost:
            log.warning(
                "chat delivery was deleted or claimed by another attempt; this attempt stops",
                delivery_id=delivery.id,
                turn_id=delivery.turn_id,
            )
        finally:
            feed.close()
            self._release(delivery, free_at)

    def _send_reply(self, delivery: ChatDelivery, client: ReplyClient, feed: LiveFeed) -> None:
        try:
            placeholder = delivery.placeholder or self._start(delivery, client)
            reply = self._follow(delivery, client, placeholder, feed)
            self._finish(delivery, client, placeholder, reply)
        except PlatformError as error:
            log.error(
                "chat reply rejected by the platform; not retried",
                platform=delivery.platform,
                delivery_id=delivery.id,
                turn_id=delivery.turn_id,
                error=error.message,
            )
            self._save(delivery, status=DeliveryStatus.failed.value)

    def _load(self, delivery_id: str) -> ChatDelivery | None:
        with self._db.read() as db:
            return db.get(ChatDelivery, delivery_id)

    def _claim(self, delivery_id: str) -> ChatDelivery | None:
        """Claim the delivery and read it again, since an earlier attempt may have
        progressed since it was loaded."""
        now = self._wall_clock.now()
        with self._db.write() as db:
            token = claim_delivery(db, delivery_id, now, self._settings.claim_ttl_s)
            if token is None:
                return None
            return db.get(ChatDelivery, delivery_id)

    def _release(self, delivery: ChatDelivery, free_at: float) -> None:
        with self._db.write() as db:
            release_claim(db, delivery.id, delivery.claim_token, free_at)

    def _start(self, delivery: ChatDelivery, client: ReplyClient) -> dict[str, Any]:
        placeholder: dict[str, Any] = _later_on_limit(
            lambda: client.start(delivery.target, self._settings.placeholder_text)
        )
        self._save(delivery, placeholder=placeholder)
        return placeholder

    def _follow(
        self,
        delivery: ChatDelivery,
        client: ReplyClient,
        placeholder: dict[str, Any],
        feed: LiveFeed,
    ) -> str:
        streamed = ""
        shown = ""
        next_edit_at = self._clock() + self._settings.edit_interval_s
        give_up_at = self._clock() + self._settings.follow_s
        renew_every_s = self._settings.claim_ttl_s / 3
        next_renew_at = self._clock() + renew_every_s
        while True:
            final = self._final_text(delivery.turn_id)
            if final is not None:
                return final
            if self._clock() >= next_renew_at:
                # Keeps the claim and shows the reconciler that this delivery is alive.
                self._save(delivery)
                next_renew_at = self._clock() + renew_every_s
            if self._clock() > give_up_at:
                raise DeliveryLater("the turn is still running", delay_s=5.0)
            if self._stopping.is_set():
                # Hand the delivery back; a retry resumes from the stored placeholder.
                raise DeliveryLater("the worker is stopping", delay_s=1.0)
            streamed = _apply_events(streamed, feed.poll(POLL_S), delivery.turn_id)
            if streamed == shown or self._clock() < next_edit_at:
                continue
            preview = streamed[: client.max_chars]
            try:
                client.edit(delivery.target, placeholder, preview)
            except RateLimited as error:
                # A preview can wait; only the final text must arrive.
                next_edit_at = self._clock() + error.retry_after_s
                continue
            except PlatformError as error:
                log.warning("progressive edit failed", error=str(error))
            shown = streamed
            next_edit_at = self._clock() + self._settings.edit_interval_s

    def _final_text(self, turn_id: str) -> str | None:
        with self._db.read() as db:
            turn = db.get(Turn, turn_id)
            if turn is None:
                return "The message was deleted before it was answered."
            if turn.status == TurnStatus.succeeded and turn.reply_message_id is not None:
                reply = db.get(Message, turn.reply_message_id)
                return reply.content if reply is not None else ""
            if turn.status == TurnStatus.failed:
                return f"Sorry, this turn failed: {turn.error or 'unknown error'}"
            if turn.status == TurnStatus.cancelled:
                return "The turn was cancelled."
            if turn.status == TurnStatus.succeeded:
                return ""
        return None

    def _finish(
        self,
        delivery: ChatDelivery,
        client: ReplyClient,
        placeholder: dict[str, Any],
        reply: str,
    ) -> None:
        pieces = split_text(reply or "(empty reply)", client.max_chars)
        for index in range(delivery.chunks_sent, len(pieces)):
            self._send_piece(delivery, client, placeholder, pieces[index], first=index == 0)
            self._save(delivery, chunks_sent=index + 1)
        self._save(delivery, status=DeliveryStatus.done.value)
        log.info("chat reply delivered", platform=delivery.platform, pieces=len(pieces))

    def _send_piece(
        self,
        delivery: ChatDelivery,
        client: ReplyClient,
        placeholder: dict[str, Any],
        piece: str,
        *,
        first: bool,
    ) -> None:
        # The first piece replaces the placeholder; the rest follow as new messages.
        if first:
            _later_on_limit(lambda: client.edit(delivery.target, placeholder, piece))
        else:
            _later_on_limit(lambda: client.send(delivery.target, piece))

    def _save(self, delivery: ChatDelivery, **changes: Any) -> None:
        """Write ``changes`` and renew the claim; raise ClaimLost if another attempt
        claimed the delivery."""
        now = self._wall_clock.now()
        ttl_s = self._settings.claim_ttl_s
        with self._db.write() as db:
            saved = update_claimed(db, delivery.id, delivery.claim_token, now, ttl_s, **changes)
        if not saved:
            raise ClaimLost(delivery.id)
        for name, value in changes.items():
            setattr(delivery, name, value)


def _apply_events(streamed: str, events: list[LiveEvent], turn_id: str) -> str:
    """Append the turn's streamed pieces to ``streamed``.

    A new attempt of the turn (after a worker crash) streams from the start again, so
    its ``turn.started`` event clears the text.
    """
    for event in events:
        if event.get("turn_id") != turn_id:
            continue
        if event.get("type") == EventType.turn_started.value:
            streamed = ""
        elif event.get("type") == EventType.turn_delta.value:
            streamed += str(event.get("text", ""))
    return streamed


def _later_on_limit(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except RateLimited as error:
        raise DeliveryLater(error.message, error.retry_after_s) from error
