"""Live-only events, such as reply text as it streams, for whoever is watching.

Persisted events are the record; live events may be lost. Each live event carries the
sequence number of the last persisted event before it, so a viewer can place it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)

LiveEvent = dict[str, Any]


class EventPublisher(Protocol):
    def publish(self, session_id: str, event: LiveEvent) -> None:
        """Send ``event`` to the session's live viewers; never raise for a lost event."""
        ...


class NullPublisher:
    def publish(self, session_id: str, event: LiveEvent) -> None:
        return None


class MemoryPublisher:
    """Fan live events out to callbacks in this process (``foxctl up`` and tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Callable[[LiveEvent], None]]] = {}

    def subscribe(self, session_id: str, callback: Callable[[LiveEvent], None]) -> None:
        with self._lock:
            self._subscribers.setdefault(session_id, []).append(callback)

    def unsubscribe(self, session_id: str, callback: Callable[[LiveEvent], None]) -> None:
        with self._lock:
            callbacks = self._subscribers.get(session_id, [])
            if callback in callbacks:
                callbacks.remove(callback)

    def publish(self, session_id: str, event: LiveEvent) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(session_id, []))
        for callback in callbacks:
            callback(event)


def publish_all(publisher: EventPublisher, session_id: str, events: Iterable[LiveEvent]) -> None:
    """Publish committed ``events`` in order; log a failure instead of raising it.

    Viewers fill any gap from the database when the next event reaches them, so a lost
    publication delays events but never loses them.
    """
    for event in events:
        try:
            publisher.publish(session_id, event)
        except Exception as error:
            log.warning(
                "event publication failed",
                session_id=session_id,
                seq=event.get("seq"),
                error=str(error),
            )
