"""Deliver published events to the viewers connected to this web process.

A hub receives every event published for any session (from Redis pub/sub or from the
in-process publisher) and hands each to the local subscriptions of that session. Each
subscription has a bounded queue: a viewer that falls behind is marked overflowed
instead of losing events silently, and its connection is closed so it can resume.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from shared.events.live import LiveEvent, MemoryPublisher

log = structlog.get_logger(__name__)


class SubscriptionClosed(Exception):
    """The hub is stopping; the viewer should reconnect, possibly to another replica."""


class SubscriptionOverflow(Exception):
    """The viewer's queue filled up; it has to resume from its last sequence number."""


class Subscription:
    """One viewer's queue of live events for one session."""

    def __init__(self, hub: EventHubBase, session_id: str, max_events: int) -> None:
        self.session_id = session_id
        self._hub = hub
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(max_events)
        #: Set when the queue overflowed or the hub stopped; the viewer must stop reading.
        self.ended = asyncio.Event()
        self.overflowed = False

    def offer(self, event: LiveEvent) -> None:
        if self.ended.is_set():
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.ended.set()

    def end(self) -> None:
        self.ended.set()
        # Wake a reader blocked in get(); the sentinel may not fit a full queue, but then
        # the reader is not blocked.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def get(self) -> LiveEvent:
        """Wait for the next event.

        Raises SubscriptionOverflow when the queue filled up and SubscriptionClosed when
        the hub stopped.
        """
        if self.overflowed:
            raise SubscriptionOverflow(self.session_id)
        if self.ended.is_set() and self._queue.empty():
            raise SubscriptionClosed(self.session_id)
        event = await self._queue.get()
        if self.overflowed:
            raise SubscriptionOverflow(self.session_id)
        if event is None:
            raise SubscriptionClosed(self.session_id)
        return event

    def close(self) -> None:
        """Stop receiving events; call it when the viewer disconnects."""
        self.ended.set()
        self._hub.remove(self)


class EventHub(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, session_id: str, max_events: int) -> Subscription: ...


class EventHubBase:
    """Local subscriptions by session; subclasses feed ``dispatch`` from a source."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, list[Subscription]] = {}
        self.stopped = False

    def subscribe(self, session_id: str, max_events: int) -> Subscription:
        """Subscribe to a session's events; raises SubscriptionClosed once stopping."""
        if self.stopped:
            raise SubscriptionClosed(session_id)
        subscription = Subscription(self, session_id, max_events)
        self._subscriptions.setdefault(session_id, []).append(subscription)
        self._watch_session(session_id)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        session_id = subscription.session_id
        subscriptions = self._subscriptions.get(session_id, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._subscriptions.pop(session_id, None)
            self._unwatch_session(session_id)

    def dispatch(self, session_id: str, event: LiveEvent) -> None:
        """Hand ``event`` to this process's subscriptions of ``session_id``."""
        for subscription in list(self._subscriptions.get(session_id, [])):
            subscription.offer(event)

    def end_all(self) -> None:
        self.stopped = True
        for subscriptions in list(self._subscriptions.values()):
            for subscription in list(subscriptions):
                subscription.end()

    def _watch_session(self, session_id: str) -> None:
        return None

    def _unwatch_session(self, session_id: str) -> None:
        return None


class MemoryEventHub(EventHubBase):
    """Hub over a ``MemoryPublisher`` in the same process (``foxctl up`` and tests).

    The publisher calls back from worker threads, so events cross into the event loop
    with ``call_soon_threadsafe``.
    """

    def __init__(self, publisher: MemoryPublisher) -> None:
        super().__init__()
        self._publisher = publisher
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: dict[str, object] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.stopped = False

    async def stop(self) -> None:
        self.end_all()
        for session_id in list(self._callbacks):
            self._unwatch_session(session_id)

    def _watch_session(self, session_id: str) -> None:
        if session_id in self._callbacks:
            return
        loop = self._loop or asyncio.get_running_loop()

        def forward(event: LiveEvent) -> None:
            try:
                loop.call_soon_threadsafe(self.dispatch, session_id, event)
            except RuntimeError:
                # The loop has closed: this process no longer serves viewers.
                log.debug("live event after the event loop closed", session_id=session_id)

        self._callbacks[session_id] = forward
        self._publisher.subscribe(session_id, forward)

    def _unwatch_session(self, session_id: str) -> None:
        callback = self._callbacks.pop(session_id, None)
        if callback is not None:
            self._publisher.unsubscribe(session_id, callback)  # type: ignore[arg-type]
