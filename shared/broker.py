"""Build the Dramatiq broker that ``FOXCTL_BROKER_URL`` names."""

from __future__ import annotations

import threading

import redis
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from shared.errors import UnavailableError
from shared.settings import Settings
from shared.telemetry import TracingMiddleware

_memory_lock = threading.Lock()
_memory_broker: StubBroker | None = None


def make_broker(settings: Settings) -> Broker:
    """Create a Redis broker, or return the process's in-process broker for memory://.

    The in-process broker keeps messages in memory: a crash loses them, and the
    reconciler re-enqueues the work from the database.
    """
    if settings.broker_url.startswith("memory://"):
        return memory_broker()
    broker = RedisBroker(url=settings.broker_url)  # type: ignore[no-untyped-call]
    broker.add_middleware(TracingMiddleware())
    return broker


def memory_broker() -> StubBroker:
    global _memory_broker
    with _memory_lock:
        if _memory_broker is None:
            _memory_broker = StubBroker()
            _memory_broker.add_middleware(TracingMiddleware())
            # StubBroker re-raises actor failures in join() only when asked; keep the
            # default so a failed actor behaves as on Redis (retried, then dropped).
        return _memory_broker


def check_broker(broker: Broker) -> None:
    """Raise UnavailableError when the broker cannot be reached."""
    if isinstance(broker, RedisBroker):
        try:
            broker.client.ping()
        except redis.RedisError as error:
            raise UnavailableError(f"broker unreachable: {error}") from error
