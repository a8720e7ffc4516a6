"""The index API: start a job, read the status, search; pgvector required or not."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dramatiq
import pytest

from shared.db import Database, make_engine
from shared.metrics import EMBEDDING_CHUNKS, SEARCH_REQUESTS
from shared.migrate import upgrade
from shared.queues import EMBED_CHUNKS, EMBEDDINGS, INDEX_WORKSPACE, RUN_SEARCH, SEARCH, Enqueuer
from shared.retrieval.embedders import LocalEmbedder, make_embedder
from shared.retrieval.errors import VectorSupportMissingError
from shared.retrieval.models import SearchResults
from shared.retrieval.search import SearchOptions
from shared.retrieval.vectors import verify_vector_support
from shared.settings import Settings
from tests.conftest import make_settings
from tests.fakes.embedding_server import FakeEmbeddingServer
from tests.harness import Harness, SearchQueueThread
from tests.index_helpers import python_function, write_tree
from workers import runtime
from workers.embedding import IndexWorker
from workers.maintenance import execute_run


@pytest.fixture
def fake_embeddings() -> Iterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer(dimension=64).start()
    yield server
    server.stop()


@pytest.fixture
def index_settings(
    db_env: dict[str, str], tmp_path: Path, fake_embeddings: FakeEmbeddingServer
) -> Settings:
    root = tmp_path / "workspace"
    write_tree(
        root,
        {
            "pkg/store.py": python_function("save_record", "record storage"),
            "pkg/retry.py": python_function("schedule_retry", "retry backoff"),
            "README.md": "# Demo\n\nA demo workspace.\n",
        },
    )
    return make_settings(
        db_env,
        workspace=root,
        embedding_provider="openai_compat",
        embedding_base_url=fake_embeddings.base_url,
        embedding_model="fake-a",
        embedding_batch_size=2,
    )


@pytest.fixture
def harness(index_settings: Settings) -> Iterator[Harness]:
    db = Database(make_engine(index_settings))
    upgrade(db.engine)
    yield Harness(index_settings, db)
    db.dispose()


def drain_embeddings(harness: Harness) -> list[dramatiq.Message[None]]:
    queue = harness.broker.queues[EMBEDDINGS]
    messages = []
    while not queue.empty():
        messages.append(dramatiq.Message.decode(queue.get_nowait()))
    return messages


def run_worker(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every message on the embeddings queue as an embedding worker would."""
    settings = harness.settings
    indexer = IndexWorker(settings, harness.db, make_embedder(settings), harness.enqueuer)
    monkeypatch.setattr(runtime, "_current", SimpleNamespace(db=harness.db, indexer=indexer))
    while messages := drain_embeddings(harness):
        for message in messages:
            if message.actor_name == INDEX_WORKSPACE.name:
                execute_run(harness.db, message.args[0])
            else:
                indexer.embed([int(arg) for arg in message.args])


def test_post_index_enqueues_job(harness: Harness) -> None:
    result = harness.call("POST", "/api/index", json={"full": True})

    assert result.status_code == 202
    messages = drain_embeddings(harness)
    assert [m.actor_name for m in messages] == [INDEX_WORKSPACE.name]
    assert messages[0].args == (result.json["job_id"],) or messages[0].args == [
        result.json["job_id"]
    ]
    jobs = harness.call("GET", "/api/jobs", params={"name": "index_workspace"}).json
    assert jobs["items"][0]["params"] == {"full": True}


def test_post_index_rejects_unknown_field(harness: Harness) -> None:
    result = harness.call("POST", "/api/index", json={"fast": True})

    assert result.status_code == 422
    assert "fast" in result.json["error"]["message"]


def test_index_job_embeds_in_batches(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, fake_embeddings: FakeEmbeddingServer
) -> None:
    harness.call("POST", "/api/index")
    chunks_before = EMBEDDING_CHUNKS._value.get()

    run_worker(harness, monkeypatch)
    status = harness.call("GET", "/api/index").json

    assert EMBEDDING_CHUNKS._value.get() - chunks_before == 3
    assert status["files"] == 3
    assert status["chunks"] == 3
    assert status["pending"] == 0
    assert status["embedded"] == 3
    assert status["model"] == "openai_compat:fake-a"
    assert status["dimension"] == 64
    assert status["last_run_status"] == "succeeded"
    assert len(fake_embeddings.requests) == 2


def test_embedding_messages_carry_ids_only(harness: Harness) -> None:
    settings = harness.settings
    indexer = IndexWorker(settings, harness.db, make_embedder(settings), Enqueuer(harness.broker))

    indexer.index({})

    messages = drain_embeddings(harness)
    assert {m.actor_name for m in messages} == {EMBED_CHUNKS.name}
    assert all(len(m.args) <= 2 for m in messages)
    assert all(str(arg).isdigit() for m in messages for arg in m.args)


def test_search_returns_path_lines_snippet(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)

    with SearchQueueThread(harness) as worker:
        result = harness.call("GET", "/api/search", params={"q": "save_record storage", "limit": 2})

    assert result.status_code == 200
    assert worker.handled == 1
    assert result.json["mode"] == "hybrid:exact"
    assert result.json["warnings"] == []
    top = result.json["items"][0]
    assert top["path"] == "pkg/store.py"
    assert top["start_line"] == 1
    assert top["end_line"] == 37
    assert "def save_record" in top["snippet"]
    assert top["score"] > 0
    assert len(result.json["items"]) == 2


def test_search_message_carries_only_a_request_id(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, fake_embeddings: FakeEmbeddingServer
) -> None:
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)
    embedded_before = len(fake_embeddings.inputs)
    seen: list[dramatiq.Message[None]] = []
    queue = harness.broker.queues[SEARCH]
    original_get = queue.get

    def spy(*args: object, **kwargs: object) -> bytes:
        raw: bytes = original_get(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(dramatiq.Message.decode(raw))
        return raw

    monkeypatch.setattr(queue, "get", spy)

    with SearchQueueThread(harness):
        result = harness.call("GET", "/api/search", params={"q": "schedule_retry backoff"})

    assert result.status_code == 200
    assert result.json["items"][0]["path"] == "pkg/retry.py"
    assert [m.actor_name for m in seen] == [RUN_SEARCH.name]
    (request_id,) = seen[0].args
    assert re.fullmatch(r"[0-9a-f]{32}", str(request_id))
    assert "schedule_retry" not in seen[0].encode().decode()
    # The query was embedded once, by the worker's embedder.
    assert fake_embeddings.inputs[embedded_before:] == ["\nschedule_retry backoff"]


def test_search_without_worker_falls_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, fake_embeddings: FakeEmbeddingServer
) -> None:
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)
    harness = Harness(harness.settings.model_copy(update={"search_timeout_s": 0.3}), harness.db)
    embedded_before = len(fake_embeddings.inputs)
    expired_before = SEARCH_REQUESTS.labels(outcome="expired")._value.get()

    result = harness.call("GET", "/api/search", params={"q": "save_record storage"})

    assert result.status_code == 200
    assert result.json["mode"] == "text"
    assert result.json["items"][0]["path"] == "pkg/store.py"
    (warning,) = result.json["warnings"]
    assert "no worker responded within 0.3 s (FOXCTL_SEARCH_TIMEOUT_S)" in warning
    assert "--queues search" in warning
    # A worker that takes the request after the web stopped waiting skips it.
    with SearchQueueThread(harness) as worker:
        deadline = time.monotonic() + 5
        while worker.handled == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert worker.handled == 1
    assert SEARCH_REQUESTS.labels(outcome="expired")._value.get() == expired_before + 1
    assert len(fake_embeddings.inputs) == embedded_before


def test_search_with_redis_down_falls_back(
    index_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import web.app
    from shared.retrieval.exchange import RedisSearchExchange

    closed_port = "redis://127.0.0.1:9/0"
    monkeypatch.setattr(web.app, "make_search_exchange", lambda s: RedisSearchExchange(closed_port))
    db = Database(make_engine(index_settings))
    upgrade(db.engine)
    harness = Harness(index_settings, db)
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)

    result = harness.call("GET", "/api/search", params={"q": "save_record"})
    db.dispose()

    assert result.status_code == 200
    assert result.json["mode"] == "text"
    assert result.json["items"][0]["path"] == "pkg/store.py"
    (warning,) = result.json["warnings"]
    assert warning.startswith("the broker's Redis is unreachable (")
    assert "127.0.0.1:9" in warning


class FailingSearch:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def search(self, query: str, options: SearchOptions) -> SearchResults:
        raise self.error


def test_worker_search_error_falls_back(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)
    failing = FailingSearch(RuntimeError("boom"))

    with SearchQueueThread(harness, search=failing):  # type: ignore[arg-type]
        result = harness.call("GET", "/api/search", params={"q": "save_record"})

    assert result.status_code == 200
    assert result.json["mode"] == "text"
    assert result.json["items"][0]["path"] == "pkg/store.py"
    assert result.json["warnings"] == [
        "the search failed on the worker (the search failed on the embedding worker: "
        "RuntimeError), so these are full-text results only"
    ]


def test_search_without_pgvector_on_the_worker_is_unavailable(harness: Harness) -> None:
    missing = VectorSupportMissingError("PostgreSQL has no pgvector extension")

    with SearchQueueThread(harness, search=FailingSearch(missing)):  # type: ignore[arg-type]
        result = harness.call("GET", "/api/search", params={"q": "save_record"})

    assert result.status_code == 503
    assert result.json["error"]["message"] == "PostgreSQL has no pgvector extension"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "query is empty"),
        ({"q": "x", "limit": "0"}, "limit"),
        ({"q": "x", "rerank": "maybe"}, "rerank"),
    ],
)
def test_search_rejects_bad_input(harness: Harness, params: dict[str, str], expected: str) -> None:
    result = harness.call("GET", "/api/search", params=params)

    assert result.status_code == 422
    assert expected in result.json["error"]["message"]


def test_require_vector_fails_readyz_without_pgvector(
    postgres_dsn: str, sqlite_env: dict[str, str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import falcon.asgi
    import falcon.testing
    from dramatiq.brokers.stub import StubBroker

    from web.app import build_context
    from web.resources.health import ReadyResource

    env = {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": postgres_dsn}
    settings = make_settings(env, postgres_require_vector=True)
    db = Database(make_engine(settings))
    upgrade(db.engine)
    # The app would not start at all; call the probe directly to see what it reports
    # when pgvector goes missing after startup.
    ctx = build_context(settings, db=db, broker=StubBroker())
    ctx.executor = ThreadPoolExecutor(2)
    response = falcon.asgi.Response()

    asyncio.run(ReadyResource(ctx).on_get(falcon.testing.create_asgi_req(), response))
    ctx.executor.shutdown()
    db.dispose()

    assert response.status == falcon.HTTP_503
    assert "no pgvector extension" in response.media["checks"]["vector"]
    assert "FOXCTL_POSTGRES_REQUIRE_VECTOR=false" in response.media["checks"]["vector"]
    assert response.media["checks"]["database"] == "ok"


def test_require_vector_stops_startup_without_pgvector(
    postgres_dsn: str, sqlite_env: dict[str, str]
) -> None:
    from dramatiq.brokers.stub import StubBroker

    from web.app import Lifespan, build_context

    env = {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": postgres_dsn}
    settings = make_settings(env, postgres_require_vector=True)
    db = Database(make_engine(settings))
    upgrade(db.engine)
    ctx = build_context(settings, db=db, broker=StubBroker())

    with pytest.raises(VectorSupportMissingError) as raised:
        asyncio.run(Lifespan(ctx).process_startup({}, {}))
    db.dispose()

    assert "FOXCTL_POSTGRES_REQUIRE_VECTOR=true" in raised.value.message


def test_without_pgvector_search_is_exact(postgres_dsn: str, sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": postgres_dsn}
    settings = make_settings(env)
    db = Database(make_engine(settings))
    upgrade(db.engine)

    mode = verify_vector_support(db.engine, required=False)
    required = make_settings(env, postgres_require_vector=True)
    db.dispose()

    assert mode == "unchecked"
    assert required.postgres_require_vector


def test_search_cli_reports_unreachable_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from foxctl.cli import main

    monkeypatch.setenv("FOXCTL_API_URL", "http://127.0.0.1:9")

    result = CliRunner().invoke(main, ["search", "retry backoff"])

    assert result.exit_code == 1
    assert result.output.startswith("foxctl: error: request to http://127.0.0.1:9/api/search")
    assert "set FOXCTL_API_URL" in result.output
    assert len(result.output.strip().splitlines()) == 1


class RecordingLocalEmbedder(LocalEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.called = threading.Event()

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(texts)
        self.called.set()
        return [[1.0, 0.0] for _ in texts]


def test_warm_up_loads_only_the_local_model(
    index_settings: Settings, fake_embeddings: FakeEmbeddingServer
) -> None:
    local = RecordingLocalEmbedder()
    remote = make_embedder(index_settings)

    IndexWorker(index_settings, None, local, None).warm_up()  # type: ignore[arg-type]
    IndexWorker(index_settings, None, remote, None).warm_up()  # type: ignore[arg-type]

    assert local.called.wait(5)
    assert local.calls == [["warm-up"]]
    # A provider behind HTTP is not called before the first batch or search.
    assert fake_embeddings.requests == []


def test_empty_query_names_the_parameter(harness: Harness) -> None:
    result = harness.call("GET", "/api/search", params={"q": "  "})

    assert result.status_code == 422
    assert result.json["error"]["code"] == "invalid_query"
    assert result.json["error"]["details"] == {"parameter": "q"}


def test_rerank_without_reranker_warns(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)

    with SearchQueueThread(harness):
        result = harness.call("GET", "/api/search", params={"q": "save_record", "rerank": "true"})

    assert result.status_code == 200
    assert result.json["reranked"] is False
    assert result.json["warnings"] == [
        "rerank=true was requested, but no reranker is configured "
        "(FOXCTL_RERANK_PROVIDER=none), so the results are not reranked"
    ]


def test_search_without_models_runs_in_web(
    index_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = index_settings.model_copy(update={"embedding_provider": "none"})
    db = Database(make_engine(settings))
    upgrade(db.engine)
    harness = Harness(settings, db)
    harness.call("POST", "/api/index")
    run_worker(harness, monkeypatch)

    # No thread consumes the search queue, so the web must not wait for one.
    result = harness.call("GET", "/api/search", params={"q": "save_record"})
    queued = harness.broker.queues[SEARCH].qsize()
    db.dispose()

    assert result.status_code == 200
    assert result.json["mode"] == "text"
    assert result.json["warnings"] == []
    assert result.json["items"][0]["path"] == "pkg/store.py"
    assert queued == 0


class CountingExchange:
    """Fails the first hand-over as an unreachable Redis would; counts the attempts."""

    def __init__(self) -> None:
        self.submits = 0

    def submit(self, request: dict[str, object], ttl_s: float) -> str:
        from shared.retrieval.exchange import SearchUnavailable

        self.submits += 1
        raise SearchUnavailable("Error 111 connecting to 127.0.0.1:9")

    async def wait(self, request_id: str, timeout_s: float) -> dict[str, object]:
        raise AssertionError("never reached: submit fails first")

    async def close(self) -> None:
        return None


def test_redis_failure_pauses_the_hand_over(
    index_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import web.app

    exchange = CountingExchange()
    monkeypatch.setattr(web.app, "make_search_exchange", lambda s: exchange)
    db = Database(make_engine(index_settings))
    upgrade(db.engine)
    harness = Harness(index_settings, db)

    first = harness.call("GET", "/api/search", params={"q": "save_record"})
    second = harness.call("GET", "/api/search", params={"q": "save_record"})
    db.dispose()

    assert exchange.submits == 1, first.json
    assert first.json["warnings"] == second.json["warnings"]
    assert "Redis is unreachable (Error 111" in second.json["warnings"][0]
