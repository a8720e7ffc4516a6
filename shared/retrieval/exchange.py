"""Hand a search from the web tier to the embedding worker and wait for its results.

The web tier embeds nothing and calls no reranker, so ``GET /api/search`` runs on the
embedding worker. The web process stores the request under a fresh id and sends
``run_search(id)`` on the ``search`` queue; the message carries the id only. Then it
waits for the response. Requests expire after the web's wait, so a worker that picks
one up late skips it.

On Redis (``FOXCTL_BROKER_URL=redis://...``) the request is a key with a TTL and the
response is pushed to a list that the web process pops with BLPOP, so a response that
arrives before the web starts to wait is not lost. Keys carry the Redis database
number, like the live-event channels. With ``memory://`` (``foxctl up``) both sides
live in one process and share a dictionary of futures.

The Redis clients here fail fast (short timeouts, no retries): a web process that
cannot reach Redis answers from full text, and must not hold its I/O threads while it
tries. GETDEL needs Redis 6.2 or later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError
from typing import Any, Protocol

import redis
import redis.asyncio
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.settings import Settings

log = structlog.get_logger(__name__)

#: How long a response waits in Redis for a web process that has stopped waiting.
RESPONSE_TTL_S = 60
#: Connect and command timeouts of the Redis clients, BLPOP's own wait aside.
REDIS_TIMEOUT_S = 2.0


class SearchTimeout(Exception):
    """No worker responded within the wait."""


class SearchUnavailable(Exception):
    """The exchange's Redis cannot be reached, so no worker can get the search."""


class SearchExchange(Protocol):
    def submit(self, request: dict[str, Any], ttl_s: float) -> str:
        """Store ``request`` and return its id; blocking, so call it from a thread.

        Raises SearchUnavailable when Redis cannot be reached.
        """
        ...

    async def wait(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        """Return the worker's response.

        Raises SearchTimeout when none came in time, SearchUnavailable when Redis failed.
        """
        ...

    def discard(self, request_id: str) -> None:
        """Web side: forget a request whose wait ended or never began."""
        ...

    def take(self, request_id: str) -> dict[str, Any] | None:
        """Worker side: remove and return the request, or None when it expired."""
        ...

    def respond(self, request_id: str, response: dict[str, Any]) -> None:
        """Worker side: hand ``response`` to the waiting web process."""
        ...

    async def close(self) -> None: ...


def key_prefix(redis_url: str) -> str:
    """Return ``foxctl:{db}:search:`` for the database number that ``redis_url`` selects."""
    db = redis.connection.parse_url(redis_url).get("db", 0)  # type: ignore[no-untyped-call]
    return f"foxctl:{db}:search:"


class RedisSearchExchange:
    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._prefix = key_prefix(redis_url)
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        # Created on first use, on the event loop that awaits it.
        self._async: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, request: dict[str, Any], ttl_s: float) -> str:
        request_id = uuid.uuid4().hex
        ttl_ms = max(int(ttl_s * 1000), 1)
        try:
            self._client.set(self._prefix + request_id, json.dumps(request), px=ttl_ms)
        except redis.RedisError as error:
            raise SearchUnavailable(str(error)) from error
        return request_id

    async def wait(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        client = self._async_client()
        key = self._prefix + request_id + ":response"
        try:
            # The client has no socket timeout, so a Redis that goes silent during the
            # wait would hold it for as long as TCP does: bound it here too.
            async with asyncio.timeout(timeout_s + REDIS_TIMEOUT_S):
                popped = await client.blpop([key], timeout=timeout_s)  # type: ignore[misc]
                if popped is None:
                    # The request may still sit in the queue: drop it, so no worker runs it.
                    await client.delete(self._prefix + request_id)
        except TimeoutError:
            raise SearchUnavailable(f"Redis BLPOP timed out after {timeout_s:g} s") from None
        except redis.RedisError as error:
            raise SearchUnavailable(str(error)) from error
        if popped is None:
            raise SearchTimeout(request_id)
        response: dict[str, Any] = json.loads(popped[1])
        return response

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._loop is not loop:
            # Its connections belong to one event loop: a web process has one.
            # No socket timeout: BLPOP keeps the connection busy for the whole wait.
            self._async = redis.asyncio.Redis.from_url(
                self._url,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
            )
            self._loop = loop
        return self._async

    def discard(self, request_id: str) -> None:
        # The request may still sit in the queue, so drop it: no worker runs it. The TTL
        # removes it anyway, so a failure here changes nothing.
        try:
            self._client.delete(self._prefix + request_id)
        except redis.RedisError as error:
            log.debug("search request not discarded", request_id=request_id, error=str(error))

    def take(self, request_id: str) -> dict[str, Any] | None:
        raw: bytes | None = self._client.getdel(self._prefix + request_id)  # type: ignore[assignment]
        if raw is None:
            return None
        request: dict[str, Any] = json.loads(raw)
        return request

    def respond(self, request_id: str, response: dict[str, Any]) -> None:
        key = self._prefix + request_id + ":response"
        with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(response, separators=(",", ":")))
            pipe.expire(key, RESPONSE_TTL_S)
            pipe.execute()

    async def close(self) -> None:
        if self._async is not None and self._loop is asyncio.get_running_loop():
            await self._async.aclose()
        self._async = self._loop = None
        self._client.close()


class MemorySearchExchange:
    """Both sides in one process (``foxctl up``): requests and futures in dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, tuple[dict[str, Any], float]] = {}
        self._responses: dict[str, Future[dict[str, Any]]] = {}

    def submit(self, request: dict[str, Any], ttl_s: float) -> str:
        request_id = uuid.uuid4().hex
        with self._lock:
            self._requests[request_id] = (request, time.monotonic() + ttl_s)
            self._responses[request_id] = Future()
        return request_id

    async def wait(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        with self._lock:
            future = self._responses.get(request_id)
        if future is None:
            raise SearchTimeout(request_id)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise SearchTimeout(request_id) from None
        finally:
            self.discard(request_id)

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._requests.pop(request_id, None)
            self._responses.pop(request_id, None)

    def take(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._requests.pop(request_id, None)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def respond(self, request_id: str, response: dict[str, Any]) -> None:
        with self._lock:
            future = self._responses.get(request_id)
        # The waiting side may cancel the future at the same moment (its timeout).
        if future is not None:
            with contextlib.suppress(InvalidStateError):
                future.set_result(response)

    async def close(self) -> None:
        return None


_memory_lock = threading.Lock()
_memory_exchange: MemorySearchExchange | None = None


def make_search_exchange(settings: Settings) -> SearchExchange:
    """Return a Redis exchange, or this process's in-memory one for ``memory://``."""
    global _memory_exchange
    if not settings.broker_url.startswith("memory://"):
        return RedisSearchExchange(settings.broker_url)
    with _memory_lock:
        if _memory_exchange is None:
            _memory_exchange = MemorySearchExchange()
        return _memory_exchange
