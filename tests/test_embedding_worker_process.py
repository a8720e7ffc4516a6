"""`foxctl worker --queues embeddings` as its own process, on Redis and each database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.broker import make_broker
from shared.db import Database, make_engine
from shared.jobs.catalog import record_job
from shared.queues import INDEX_WORKSPACE, Enqueuer
from shared.retrieval.models import IndexStatus
from shared.retrieval.service import index_status
from shared.settings import load_settings
from tests.fakes.embedding_server import FakeEmbeddingServer
from tests.index_helpers import python_function, write_tree
from tests.processes import Process, free_port, run_cli, wait_for_log, wait_until_ready


@pytest.fixture
def fake_embeddings() -> Iterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer(dimension=64).start()
    yield server
    server.stop()


def wait_for_embedded(db: Database, worker: Process, timeout_s: float = 90) -> IndexStatus:
    deadline = time.monotonic() + timeout_s
    status = index_status(db)
    while time.monotonic() < deadline:
        status = index_status(db)
        if status.chunks and status.pending == 0 and status.embedded == status.chunks:
            return status
        time.sleep(0.2)
    raise AssertionError(f"index not embedded in {timeout_s} s: {status}\n{worker.output()}")


def workspace_env(
    db_env: dict[str, str], redis_url: str, fake: FakeEmbeddingServer, tmp_path: Path
) -> dict[str, str]:
    root = tmp_path / "workspace"
    write_tree(
        root,
        {
            "pkg/store.py": python_function("save_record", "record storage"),
            "pkg/retry.py": python_function("schedule_retry", "retry backoff"),
            "README.md": "# Demo\n\nA demo workspace.\n",
        },
    )
    env = {
        **db_env,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_WORKSPACE": str(root),
        "FOXCTL_EMBEDDING_PROVIDER": "openai_compat",
        "FOXCTL_EMBEDDING_BASE_URL": fake.base_url,
        "FOXCTL_EMBEDDING_MODEL": "fake-a",
        "FOXCTL_EMBEDDING_BATCH_SIZE": "2",
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
    }
    migrated = run_cli(["migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    return env


def index_with_worker_process(env: dict[str, str], tmp_path: Path) -> tuple[IndexStatus, str]:
    """Start an embedding worker, enqueue an index job, wait for every chunk; stop it."""
    worker = Process(
        "embedding-worker", ["worker", "--queues", "embeddings", "--threads", "2"], env, tmp_path
    )
    settings = load_settings(env)
    db = Database(make_engine(settings))
    broker = make_broker(settings)
    try:
        wait_for_log(worker, "worker started")
        with db.write() as session:
            run_id = record_job(session, "index_workspace", {"full": False}, origin="test").id
        Enqueuer(broker).send(INDEX_WORKSPACE, run_id)

        status = wait_for_embedded(db, worker)
    finally:
        code = worker.terminate()
        broker.close()
        db.dispose()
    assert code == 0, worker.output()
    return status, worker.output()


def test_embedding_worker_process_indexes_and_stops_cleanly(
    db_env: dict[str, str],
    redis_url: str,
    fake_embeddings: FakeEmbeddingServer,
    tmp_path: Path,
) -> None:
    env = workspace_env(db_env, redis_url, fake_embeddings, tmp_path)

    status, _ = index_with_worker_process(env, tmp_path)

    assert status.files == 3
    assert status.chunks == 3
    assert status.model == "openai_compat:fake-a"
    assert status.last_run_status == "succeeded"
    # Three chunks in batches of two: two provider requests, none repeated.
    assert len(fake_embeddings.requests) == 2


def test_rate_limited_batch_is_retried_by_the_queue(
    db_env: dict[str, str],
    redis_url: str,
    fake_embeddings: FakeEmbeddingServer,
    tmp_path: Path,
) -> None:
    # One attempt per actor call, so the 429 reaches the queue, which retries the batch
    # after the provider's Retry-After.
    env = {
        **workspace_env(db_env, redis_url, fake_embeddings, tmp_path),
        "FOXCTL_EMBEDDING_MAX_ATTEMPTS": "1",
    }
    fake_embeddings.failures.append((429, {"Retry-After": "2"}))
    started = time.monotonic()

    status, output = index_with_worker_process(env, tmp_path)

    assert "Retrying message" in output
    assert status.embedded == 3
    assert len(fake_embeddings.requests) == 3
    # Each chunk was embedded once: the refused batch was sent again, nothing else.
    assert len(fake_embeddings.inputs) == 3
    assert len(set(fake_embeddings.inputs)) == 3
    assert time.monotonic() - started >= 2


def test_web_search_runs_on_the_embedding_worker(
    db_env: dict[str, str],
    redis_url: str,
    fake_embeddings: FakeEmbeddingServer,
    tmp_path: Path,
) -> None:
    env = workspace_env(db_env, redis_url, fake_embeddings, tmp_path)
    index_with_worker_process(env, tmp_path)
    worker = Process(
        "search-worker",
        ["worker", "--queues", "embeddings", "--queues", "search", "--threads", "2"],
        {**env, "FOXCTL_RUN_DIR": str(tmp_path / "run-worker")},
        tmp_path,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The web process gets an embedding provider it cannot reach: a search that it
    # embedded itself would find no vectors and come back as full text only.
    web_env = {
        **env,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "FOXCTL_AUTH": "off",
        "FOXCTL_EMBEDDING_BASE_URL": "http://127.0.0.1:9/v1",
        "FOXCTL_SEARCH_TIMEOUT_S": "2",
        "FOXCTL_RUN_DIR": str(tmp_path / "run-web"),
    }
    web = Process("web", ["web", "serve"], web_env, tmp_path)
    params = {"q": "schedule_retry backoff", "limit": "3"}
    try:
        wait_for_log(worker, "worker started")
        wait_until_ready(url, web)
        before = len(fake_embeddings.inputs)

        answered = httpx.get(url + "/api/search", params=params, timeout=30)
        embedded = fake_embeddings.inputs[before:]

        assert worker.terminate() == 0, worker.output()
        started = time.monotonic()
        fallback = httpx.get(url + "/api/search", params=params, timeout=30)
        waited_s = time.monotonic() - started
    finally:
        worker.terminate()
        web_code = web.terminate()

    assert answered.status_code == 200, answered.text
    assert answered.json()["mode"] == "hybrid:exact"
    assert answered.json()["items"][0]["path"] == "pkg/retry.py"
    assert answered.json()["warnings"] == []
    assert embedded == ["\nschedule_retry backoff"]
    # With no worker on the search queue, the web returns full-text results after its wait.
    assert fallback.status_code == 200, fallback.text
    assert fallback.json()["mode"] == "text"
    assert fallback.json()["items"][0]["path"] == "pkg/retry.py"
    assert "no worker responded within 2 s" in fallback.json()["warnings"][0]
    assert waited_s >= 2
    assert web_code == 0, web.output()
    assert "127.0.0.1:9" not in web.output()
