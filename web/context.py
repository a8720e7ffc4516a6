"""Shared state of the resources: settings, database, enqueuer and a thread pool.

Database and broker clients are synchronous, so every call to them runs in the pool;
the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from dramatiq.broker import Broker

from shared.db import Database
from shared.events.hub import EventHub
from shared.events.live import EventPublisher
from shared.queues import Enqueuer
from shared.retrieval.exchange import SearchExchange
from shared.settings import Settings
from web.drain import DrainState

T = TypeVar("T")


@dataclass
class WebContext:
    settings: Settings
    db: Database
    broker: Broker
    enqueuer: Enqueuer
    drain: DrainState
    #: Publishes events that web requests commit, such as a posted message.
    publisher: EventPublisher
    #: Delivers published events to this process's SSE and WebSocket viewers.
    hub: EventHub
    #: Key for console tokens (HMAC-SHA256).
    console_secret: bytes
    #: Hands searches to the embedding worker and waits for the results.
    searches: SearchExchange
    io_threads: int = 8
    #: False when the caller passed its own database and closes it itself.
    owns_db: bool = True
    executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the thread pool, the drain watcher and the event hub on ASGI startup."""
        self.executor = ThreadPoolExecutor(self.io_threads, thread_name_prefix="web-io")
        self.drain.start()
        await self.hub.start()
        self.drain.chain_signals()

    async def stop(self) -> None:
        # Ending the hub first closes open WebSockets with 1012 and ends SSE streams.
        await self.hub.stop()
        await self.drain.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        # After the pool: a search still submitting there would open a new connection.
        await self.searches.close()
        if self.owns_db:
            self.db.dispose()

    async def run(self, function: Callable[[], T]) -> T:
        """Run blocking ``function`` in the pool, in the caller's context; await its result."""
        if self.executor is None:
            raise RuntimeError("web context not started; the ASGI lifespan starts it")
        loop = asyncio.get_running_loop()
        # A copy of the caller's context carries the log ids and the current span into
        # the thread, so its log lines and spans belong to the request.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self.executor, context.run, function)
