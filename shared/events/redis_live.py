"""Live events over Redis pub/sub, so any web replica can serve any session's viewers.

Workers and web processes publish JSON to ``foxctl:{db}:events:{session_id}``, where
``db`` is the database number of the Redis URL: pub/sub channels are shared by all
databases of a server, and the number keeps deployments that share a server apart. Each web
process keeps one pub/sub connection with a pattern subscription on every session and
hands events to its local viewers. Pub/sub keeps nothing: events published while a web
process is disconnected are not delivered live, and its viewers fill the gap from the
database when the next event arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis
import redis.asyncio
import structlog

from shared.events.hub import EventHubBase
from shared.events.live import LiveEvent

log = structlog.get_logger(__name__)

RECONNECT_DELAY_S = 1.0


def channel_prefix(redis_url: str) -> str:
    """Return ``foxctl:{db}:events:`` for the database number that ``redis_url`` selects."""
    db = redis.connection.parse_url(redis_url).get("db", 0)  # type: ignore[no-untyped-call]
    return f"foxctl:{db}:events:"


def channel_for(redis_url: str, session_id: str) -> str:
    return channel_prefix(redis_url) + session_id


class RedisPublisher:
    """Publish events to the session's Redis channel from synchronous code."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = channel_prefix(redis_url)

    def publish(self, session_id: str, event: LiveEvent) -> None:
        """Publish ``event``; raises redis.RedisError when Redis cannot be reached."""
        payload = json.dumps(event, separators=(",", ":"))
        self._client.publish(self._prefix + session_id, payload)

    def close(self) -> None:
        self._client.close()


class RedisEventHub(EventHubBase):
    """Receive every session's events over one pub/sub connection per web process."""

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self._redis_url = redis_url
        self._prefix = channel_prefix(redis_url)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self.stopped = False
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())
        # Viewers subscribe before they read the database. Waiting here keeps the first
        # of them from missing events published while the connection was being set up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)
        if not self._subscribed.is_set():
            log.warning("redis pub/sub not subscribed yet; live events wait for it")

    async def stop(self) -> None:
        self.end_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._subscribed.clear()
                log.warning(
                    "redis pub/sub connection failed; reconnecting",
                    error=str(error),
                    delay_s=RECONNECT_DELAY_S,
                )
                await asyncio.sleep(RECONNECT_DELAY_S)

    async def _listen(self) -> None:
        client = redis.asyncio.Redis.from_url(self._redis_url)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(self._prefix + "*")
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    self._subscribed.set()
                    log.info("redis pub/sub subscribed", pattern=self._prefix + "*")
                    continue
                if message["type"] == "pmessage":
                    self._deliver(message["channel"], message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        session_id = channel.decode()[len(self._prefix) :]
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("ignored a live event that is not JSON", session_id=session_id)
            return
        self.dispatch(session_id, event)
