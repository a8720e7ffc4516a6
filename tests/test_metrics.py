"""Prometheus metrics: values follow known actions, and the text parses with the
Prometheus client's parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from prometheus_client.parser import text_string_to_metric_families

from shared.cas.stores import make_artifact_store, put_object
from shared.db import Database
from shared.metrics import QueueCollector, render
from shared.queues import RUN_SESSION, Enqueuer
from shared.settings import Settings, load_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from tests.processes import free_port
from tests.test_e2e import Cluster
from workers import metrics_server

MESSAGES_ROUTE = "/api/sessions/{session_id}/messages"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def foxctl(settings: Settings, database: Database, fake_model: FakeOpenAI) -> Iterator[Harness]:
    yield Harness(settings, database, model_url=fake_model.base_url)


def parse(text: str) -> Samples:
    """Parse exposition text into {(sample name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(foxctl: Harness) -> Samples:
    result = foxctl.client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(result.text)


def test_metrics_follow_posts_and_turns(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    before = scrape(foxctl)

    for text in ("first", "second"):
        assert foxctl.post(session_id, text).status_code == 202
    queued = scrape(foxctl)
    foxctl.run_pending()
    finished = scrape(foxctl)

    posts = {"method": "POST", "route": MESSAGES_ROUTE, "status": "202"}
    count = "foxctl_http_request_duration_seconds_count"
    assert value(queued, count, **posts) - value(before, count, **posts) == 2
    assert value(queued, "foxctl_queue_messages", queue="turns") == 2
    assert value(queued, "foxctl_queue_oldest_message_age_seconds", queue="turns") >= 0
    assert value(queued, "foxctl_turns", state="pending") == 2
    assert value(queued, "foxctl_turns", state="running") == 0
    assert value(queued, "foxctl_turns_active") == 2
    assert value(finished, "foxctl_queue_messages", queue="turns") == 0
    assert value(finished, "foxctl_turns_active") == 0
    turns = "foxctl_turn_duration_seconds_count"
    assert (
        value(finished, turns, outcome="finished") - value(before, turns, outcome="finished") == 2
    )
    model = {"provider": "openai_compat", "model": "fake"}
    calls = "foxctl_model_call_duration_seconds_count"
    tokens = "foxctl_model_tokens_total"
    assert (
        value(finished, calls, **model, outcome="ok") - value(before, calls, **model, outcome="ok")
        == 2
    )
    assert value(finished, tokens, **model, kind="prompt") > value(
        before, tokens, **model, kind="prompt"
    )
    lock_waits = "foxctl_turn_lock_wait_seconds_count"
    assert value(finished, lock_waits) - value(before, lock_waits) >= 2


def test_cas_bytes_count_writes_and_reads(settings: Settings) -> None:
    store = make_artifact_store(settings)
    before = parse(render(None).decode())

    digest = put_object(store, [b"x" * 1000]).digest
    read = b"".join(store.read(digest))
    after = parse(render(None).decode())

    assert read == b"x" * 1000
    bytes_in = value(after, "foxctl_cas_bytes_total", direction="in")
    bytes_out = value(after, "foxctl_cas_bytes_total", direction="out")
    assert bytes_in - value(before, "foxctl_cas_bytes_total", direction="in") == 1000
    assert bytes_out - value(before, "foxctl_cas_bytes_total", direction="out") == 1000


def test_queue_depth_and_age_read_from_redis(redis_url: str) -> None:
    broker = RedisBroker(url=redis_url)
    enqueuer = Enqueuer(broker)
    for session_id in ("s1", "s2", "s3"):
        enqueuer.send(RUN_SESSION, session_id)
    oldest_ms = min(
        Message.decode(raw).message_timestamp for raw in broker.client.hvals("dramatiq:turns.msgs")
    )

    collector = QueueCollector(broker, clock=lambda: oldest_ms / 1000 + 5)
    samples = parse(render(None, [collector]).decode())
    broker.close()

    assert value(samples, "foxctl_queue_messages", queue="turns") == 3
    assert value(samples, "foxctl_queue_messages", queue="maintenance") == 0
    assert value(samples, "foxctl_queue_oldest_message_age_seconds", queue="turns") == 5
    assert value(samples, "foxctl_queue_oldest_message_age_seconds", queue="maintenance") == 0


def test_worker_metrics_port_serves_metrics(
    sqlite_env: dict[str, str], database: Database, redis_url: str
) -> None:
    port = free_port()
    settings = load_settings({**sqlite_env, "FOXCTL_METRICS_PORT": str(port)})
    broker = RedisBroker(url=redis_url)
    Enqueuer(broker).send(RUN_SESSION, "s1")

    metrics_server.start(settings, broker, database)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        missing = httpx.get(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        metrics_server.stop()
        broker.close()

    samples = parse(response.text)
    assert response.status_code == 200
    assert missing.status_code == 404
    assert value(samples, "foxctl_queue_messages", queue="turns") == 1
    assert ("foxctl_turns_active", frozenset()) in samples


@pytest.mark.slow
def test_web_processes_share_counts(
    sqlite_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    cluster = Cluster({**sqlite_env, "FOXCTL_BROKER_URL": redis_url}, tmp_path)
    try:
        cluster.start_web()
        session_id = cluster.session()
        # Fresh connections spread requests and scrapes over both gunicorn workers.
        headers = dict(cluster.http.headers)
        for number in range(20):
            response = httpx.post(
                f"{cluster.url}/api/sessions/{session_id}/messages",
                json={"content": f"message {number}"},
                headers=headers,
                timeout=10,
            )
            assert response.status_code == 202
        scrapes = [httpx.get(cluster.url + "/metrics", timeout=10).text for _ in range(6)]
    finally:
        codes = cluster.stop()

    posts = {"method": "POST", "route": MESSAGES_ROUTE, "status": "202"}
    counts = {
        value(parse(text), "foxctl_http_request_duration_seconds_count", **posts)
        for text in scrapes
    }
    assert codes == {"web": 0}
    assert counts == {20}
