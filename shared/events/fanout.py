"""Pick the live-event publisher and hub that match ``FOXCTL_BROKER_URL``.

``redis://`` (and ``rediss://``, ``unix://``) use pub/sub on the broker's Redis, so any
web replica serves any session. ``memory://`` keeps events in this process, which is
right only when the web and the worker share it (``foxctl up``).
"""

from __future__ import annotations

from shared.events.hub import EventHub, MemoryEventHub
from shared.events.live import EventPublisher, MemoryPublisher
from shared.events.redis_live import RedisEventHub, RedisPublisher
from shared.settings import Settings


def uses_redis(settings: Settings) -> bool:
    return not settings.broker_url.startswith("memory://")


def make_publisher(settings: Settings) -> EventPublisher:
    """Return a Redis publisher, or a new in-process one for ``memory://``."""
    if uses_redis(settings):
        return RedisPublisher(settings.broker_url)
    return MemoryPublisher()


def make_event_hub(settings: Settings, publisher: EventPublisher) -> EventHub:
    """Return the hub that receives what ``publisher`` (or its Redis peers) publish."""
    if uses_redis(settings):
        return RedisEventHub(settings.broker_url)
    if not isinstance(publisher, MemoryPublisher):
        raise TypeError("FOXCTL_BROKER_URL=memory:// needs an in-process MemoryPublisher")
    return MemoryEventHub(publisher)
