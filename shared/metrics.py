"""Prometheus metrics: the process's instruments and the collectors read at scrape time.

Counters and histograms live in each process. When ``PROMETHEUS_MULTIPROC_DIR`` is set
(the web and worker commands set it), prometheus_client writes them to files there and
a scrape of any process in the pod adds up every process's values. Queue depth and turn
counts are read from Redis and the database on each scrape, so every pod reports the
same cluster-wide values: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import redis
import structlog
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from shared.db import Database
from shared.queues import ALL_QUEUES
from shared.turns.models import Turn, TurnStatus

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_REQUEST_SECONDS = Histogram(
    "foxctl_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ["method", "route", "status"],
)
WEBSOCKET_CLIENTS = Gauge(
    "foxctl_websocket_clients",
    "Open console WebSocket connections.",
    multiprocess_mode="livesum",
)
TURN_SECONDS = Histogram(
    "foxctl_turn_duration_seconds",
    "Time from a turn's start on a worker to its end, by outcome.",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
LOCK_WAIT_SECONDS = Histogram(
    "foxctl_turn_lock_wait_seconds",
    "Time a worker spent claiming a session's lease, taken or not.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MODEL_SECONDS = Histogram(
    "foxctl_model_call_duration_seconds",
    "Latency of one chat model call, by provider, model and outcome.",
    ["provider", "model", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_TOKENS = Counter(
    "foxctl_model_tokens",
    "Tokens reported by chat models, by provider, model and kind (prompt, completion).",
    ["provider", "model", "kind"],
)
EMBEDDING_CHUNKS = Counter(
    "foxctl_embedding_chunks",
    "Chunks embedded; its rate is chunks per second.",
)
SEARCH_REQUESTS = Counter(
    "foxctl_search_requests",
    "Searches handed over by web processes, by how the worker ended them "
    "(ok, error, expired before it took them).",
    ["outcome"],
)
SEARCH_WAIT_SECONDS = Histogram(
    "foxctl_search_wait_seconds",
    "Time a web process waited for a worker's search answer, by outcome "
    "(ok, error from the worker, timeout, unavailable when Redis failed).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CAS_BYTES = Counter(
    "foxctl_cas_bytes",
    "Bytes written to and read from the artifact store, by direction.",
    ["direction"],
)


def observe_model_call(
    provider: str, model: str, seconds: float, prompt_tokens: int, completion_tokens: int
) -> None:
    """Record a successful model call's latency and token counts."""
    MODEL_SECONDS.labels(provider, model, "ok").observe(seconds)
    MODEL_TOKENS.labels(provider, model, "prompt").inc(prompt_tokens)
    MODEL_TOKENS.labels(provider, model, "completion").inc(completion_tokens)


class QueueCollector(Collector):
    """Messages waiting and the age of the oldest one in each Dramatiq queue.

    Dramatiq's Redis broker keeps a queue's message ids in the list ``dramatiq:<queue>``
    (appended on the right, fetched from the left) and the encoded messages in the hash
    ``dramatiq:<queue>.msgs``. The age is that of the message at the head of the list,
    the next one delivered. A message put back after its worker died goes to the tail
    with its first enqueue time, so it can be older than the head. Delayed messages
    (``<queue>.DQ``) and messages fetched but not yet acknowledged are not counted.
    """

    def __init__(self, broker: Broker, clock: Callable[[], float] = time.time) -> None:
        self._broker = broker
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "foxctl_queue_messages", "Messages waiting in a queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "foxctl_queue_oldest_message_age_seconds",
            "Age of the oldest waiting message in a queue; 0 when the queue is empty.",
            labels=["queue"],
        )
        try:
            for queue, count, oldest_s in self._read():
                depth.add_metric([queue], count)
                age.add_metric([queue], oldest_s)
        except redis.RedisError as error:
            log.warning("queue metrics unavailable: the broker is unreachable", error=str(error))
            return
        yield depth
        yield age

    def _read(self) -> Iterable[tuple[str, int, float]]:
        now_s = self._clock()
        if isinstance(self._broker, StubBroker):
            for queue in ALL_QUEUES:
                pending = self._broker.queues.get(queue)
                encoded = list(pending.queue) if pending is not None else []
                timestamps = [Message.decode(raw).message_timestamp for raw in encoded]
                yield queue, len(encoded), _age_s(now_s, min(timestamps, default=None))
            return
        if not isinstance(self._broker, RedisBroker):
            return
        client: Any = self._broker.client
        for queue in ALL_QUEUES:
            key = f"{self._broker.namespace}:{queue}"
            count = int(client.llen(key))
            yield queue, count, _age_s(now_s, _oldest_timestamp_ms(client, key))


def _oldest_timestamp_ms(client: Any, key: str) -> int | None:
    oldest_id = client.lindex(key, 0)
    if oldest_id is None:
        return None
    encoded = client.hget(f"{key}.msgs", oldest_id)
    if encoded is None:
        return None
    return int(Message.decode(encoded).message_timestamp)


def _age_s(now_s: float, timestamp_ms: int | None) -> float:
    if timestamp_ms is None:
        return 0.0
    return max(0.0, now_s - timestamp_ms / 1000)


class TurnCollector(Collector):
    """Turns waiting for a worker (pending) and running now, counted in the database.

    ``foxctl_turns_active`` is their sum: the number a worker autoscaler follows.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._count()
        except SQLAlchemyError as error:
            log.warning("turn metrics unavailable: the database failed", error=str(error))
            return
        turns = GaugeMetricFamily(
            "foxctl_turns", "Turns by state: pending (queued) or running.", labels=["state"]
        )
        turns.add_metric(["pending"], counts.get(TurnStatus.queued.value, 0))
        turns.add_metric(["running"], counts.get(TurnStatus.running.value, 0))
        yield turns
        yield GaugeMetricFamily(
            "foxctl_turns_active",
            "Turns pending or running; scale workers on this.",
            value=sum(counts.values()),
        )

    def _count(self) -> dict[str, int]:
        active = (TurnStatus.queued.value, TurnStatus.running.value)
        with self._db.read() as db:
            rows = db.exec(
                select(Turn.status, func.count())
                .where(col(Turn.status).in_(active))
                .group_by(col(Turn.status))
            ).all()
        return {str(status): int(count) for status, count in rows}


def render(multiproc_dir: Path | None, collectors: Iterable[Collector] = ()) -> bytes:
    """Render this process's (or, with ``multiproc_dir``, the pod's) metrics as text.

    Blocking: the collectors query Redis and the database.
    """
    registry: CollectorRegistry
    if multiproc_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


class _ProcessMetrics(Collector):
    """This process's default registry, for use inside a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
