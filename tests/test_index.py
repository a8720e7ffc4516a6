"""Workspace index: chunking, incremental re-index, provider failures, hybrid search."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import Database
from shared.retrieval.chunking import chunk_file
from shared.retrieval.embedders import OpenAICompatEmbedder
from shared.retrieval.errors import EmbeddingError, EmbeddingUnavailableError
from shared.retrieval.models import Chunk, IndexedFile
from shared.retrieval.search import SearchOptions, SearchService
from shared.retrieval.service import embed_chunks, index_status
from shared.retrieval.walker import walk_workspace
from tests.fakes.embedding_server import FakeEmbeddingServer
from tests.index_helpers import Pipeline, python_function, write_tree


@pytest.fixture
def fake_embeddings() -> Iterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer(dimension=64).start()
    yield server
    server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_embedder(
    server: FakeEmbeddingServer,
    sleeps: list[float],
    *,
    model: str = "fake-a",
    timeout_s: float = 5.0,
    max_attempts: int = 3,
) -> OpenAICompatEmbedder:
    return OpenAICompatEmbedder(
        base_url=server.base_url,
        model=model,
        api_key="test-key",
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        sleep=sleeps.append,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    write_tree(
        root,
        {
            "pkg/retry.py": python_function("schedule_retry", "retry backoff")
            + "\n\n"
            + python_function("cancel_retry", "retry cancel"),
            "pkg/store.py": python_function("save_record", "record storage"),
            "docs/guide.md": "# Guide\n\nInstall the package.\n\nRun the server.\n",
            "build/out.py": "print('generated')\n",
            ".gitignore": "build/\n*.log\n",
            "debug.log": "noise\n",
            "image.bin": "\0binary",
        },
    )
    return root


def chunk_rows(database: Database) -> list[Chunk]:
    with database.read() as session:
        return list(session.exec(select(Chunk).order_by(Chunk.path, Chunk.start_line)))


# -- chunking and walking ---------------------------------------------------------------


def test_python_chunks_follow_functions() -> None:
    text = python_function("first", "a") + "\n\n" + python_function("second", "b")

    chunks = chunk_file("mod.py", text)

    assert len(chunks) == 2
    assert chunks[0].text.startswith("def first():")
    assert chunks[1].text.startswith("def second():")
    assert chunks[1].start_line == text.splitlines().index("def second():") + 1
    assert chunks[1].end_line == len(text.splitlines())


def test_text_chunks_keep_line_numbers() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * 80 for i in range(12)]
    text = "\n\n".join(paragraphs)

    chunks = chunk_file("notes.md", text)

    lines = text.splitlines()
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text == "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        assert chunk.text.startswith("Paragraph")


def test_walk_applies_gitignore_and_skips_binary(tree: Path) -> None:
    paths = [found.path for found in walk_workspace(tree, max_file_bytes=1024 * 1024)]

    assert paths == [".gitignore", "docs/guide.md", "pkg/retry.py", "pkg/store.py"]


def test_walk_skips_large_files(tree: Path) -> None:
    (tree / "big.txt").write_text("x" * 5000)

    paths = [found.path for found in walk_workspace(tree, max_file_bytes=4096)]

    assert "big.txt" not in paths


# -- incremental re-index ---------------------------------------------------------------


def test_reindex_embeds_only_changed_chunks(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    first = pipeline.run()
    embedded_first = len(fake_embeddings.inputs)
    chunks_first = len(chunk_rows(database))

    (tree / "pkg/retry.py").write_text(
        python_function("schedule_retry", "retry backoff")
        + "\n\n"
        + python_function("cancel_retry", "retry abort now")
    )
    (tree / "pkg/queue.py").write_text(python_function("enqueue_job", "queue work"))
    (tree / "docs/guide.md").unlink()
    fake_embeddings.inputs.clear()
    second = pipeline.run()

    assert first.files_added == 4
    assert embedded_first == chunks_first
    assert second.files_changed == 1
    assert second.files_added == 1
    assert second.files_deleted == 1
    assert second.files_unchanged == 2
    assert second.chunks_reused == 1
    assert len(fake_embeddings.inputs) == 2
    assert any("cancel_retry" in text for text in fake_embeddings.inputs)
    assert any("enqueue_job" in text for text in fake_embeddings.inputs)
    rows = chunk_rows(database)
    assert all(row.model == "openai_compat:fake-a" for row in rows)
    assert not [row for row in rows if row.path == "docs/guide.md"]
    assert not [row for row in rows if "retry cancel" in row.text]
    with database.read() as session:
        files = [row.path for row in session.exec(select(IndexedFile))]
    assert sorted(files) == [".gitignore", "pkg/queue.py", "pkg/retry.py", "pkg/store.py"]


def test_unchanged_reindex_embeds_nothing(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.run()
    fake_embeddings.inputs.clear()

    report = pipeline.run()

    assert report.files_unchanged == 4
    assert report.pending == 0
    assert fake_embeddings.inputs == []


def test_redelivered_batch_is_skipped(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.run()
    fake_embeddings.inputs.clear()

    report = embed_chunks(database, pipeline.embedder, pipeline.batches[0])

    assert report.embedded == 0
    assert report.skipped == len(pipeline.batches[0])
    assert fake_embeddings.inputs == []


def test_status_counts_files_chunks_pending(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.index()

    before = index_status(database)
    pipeline.embed_all()
    after = index_status(database)

    assert before.files == 4
    assert before.pending == before.chunks
    assert after.pending == 0
    assert after.embedded == after.chunks
    assert after.model == "openai_compat:fake-a"
    assert after.dimension == 64


# -- provider failures ------------------------------------------------------------------


def test_429_waits_for_retry_after(
    fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    fake_embeddings.failures.append((429, {"Retry-After": "3"}))
    embedder = make_embedder(fake_embeddings, sleeps)

    vectors = embedder.embed(["hello world"])

    assert sleeps == [3.0]
    assert len(vectors) == 1
    assert len(fake_embeddings.requests) == 2


def test_long_retry_after_goes_back_to_queue(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.index()
    fake_embeddings.failures.append((429, {"Retry-After": "120"}))

    with pytest.raises(EmbeddingUnavailableError) as raised:
        embed_chunks(database, pipeline.embedder, pipeline.batches[0])

    assert raised.value.retry_after_s == 120.0
    assert sleeps == []
    assert len(fake_embeddings.requests) == 1
    assert index_status(database).embedded == 0


def test_500_is_retried_with_backoff(
    fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    fake_embeddings.failures.extend([(500, {}), (503, {})])
    embedder = make_embedder(fake_embeddings, sleeps)

    vectors = embedder.embed(["hello"])

    assert sleeps == [0.5, 1.0]
    assert len(vectors) == 1


def test_500_after_all_attempts_leaves_chunks_pending(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.index()
    fake_embeddings.failures.extend([(500, {})] * 3)

    with pytest.raises(EmbeddingUnavailableError) as raised:
        embed_chunks(database, pipeline.embedder, pipeline.batches[0])
    retried = embed_chunks(database, pipeline.embedder, pipeline.batches[0])

    assert "HTTP 500" in raised.value.message
    assert len(fake_embeddings.requests) == 4
    assert retried.embedded == len(pipeline.batches[0])


def test_timeout_is_retried(fake_embeddings: FakeEmbeddingServer, sleeps: list[float]) -> None:
    fake_embeddings.failures.append(("sleep", 1.0))
    embedder = make_embedder(fake_embeddings, sleeps, timeout_s=0.2)

    vectors = embedder.embed(["hello"])

    assert len(vectors) == 1
    assert sleeps == [0.5]


def test_timeout_on_every_attempt_raises(
    fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    fake_embeddings.failures.extend([("sleep", 0.6)] * 2)
    embedder = make_embedder(fake_embeddings, sleeps, timeout_s=0.2, max_attempts=2)

    with pytest.raises(EmbeddingUnavailableError) as raised:
        embedder.embed(["hello"])

    assert "timed out" in raised.value.message


def test_wrong_dimension_is_rejected(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.run()
    (tree / "pkg/new.py").write_text(python_function("new_thing", "new"))
    fake_embeddings.dimension = 32
    pipeline.index()

    with pytest.raises(EmbeddingError) as raised:
        embed_chunks(database, pipeline.embedder, pipeline.batches[0])

    assert "dimension 32" in raised.value.message
    assert "learned dimension 64" in raised.value.message
    rows = chunk_rows(database)
    assert {row.dimension for row in rows if row.model is not None} == {64}
    assert [row.path for row in rows if row.model is None] == ["pkg/new.py"]


def test_model_change_reembeds_everything(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    Pipeline(database, tree, make_embedder(fake_embeddings, sleeps)).run()
    total = len(chunk_rows(database))
    fake_embeddings.inputs.clear()
    fake_embeddings.dimension = 32
    pipeline_b = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps, model="fake-b"))

    report = pipeline_b.run()

    assert report.model_changed
    assert len(fake_embeddings.inputs) == total
    assert {row.model for row in chunk_rows(database)} == {"openai_compat:fake-b"}
    status = index_status(database)
    assert status.model == "openai_compat:fake-b"
    assert status.dimension == 32
    assert status.pending == 0


def test_old_model_worker_is_refused(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    Pipeline(database, tree, make_embedder(fake_embeddings, sleeps)).run()
    pipeline_b = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps, model="fake-b"))
    pipeline_b.index()

    with pytest.raises(EmbeddingError) as raised:
        embed_chunks(database, make_embedder(fake_embeddings, sleeps), pipeline_b.batches[0])

    assert "index uses 'openai_compat:fake-b'" in raised.value.message


# -- search -----------------------------------------------------------------------------


def test_search_finds_file_by_meaning(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    embedder = make_embedder(fake_embeddings, sleeps)
    Pipeline(database, tree, embedder).run()
    service = SearchService(database, embedder)

    results = service.search("record storage save", SearchOptions(limit=3))

    assert results.items[0].path == "pkg/store.py"
    assert results.items[0].start_line == 1
    assert "save_record" in results.items[0].snippet
    assert results.mode.endswith("exact") or results.mode.endswith("hnsw")


def test_search_path_prefix_filters(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    embedder = make_embedder(fake_embeddings, sleeps)
    Pipeline(database, tree, embedder).run()
    service = SearchService(database, embedder)

    results = service.search("retry backoff", SearchOptions(limit=10, path_prefix="docs/"))

    assert results.items
    assert {hit.path for hit in results.items} == {"docs/guide.md"}


def test_hybrid_finds_identifier_embedding_misses(
    database: Database, tmp_path: Path, sleeps: list[float]
) -> None:
    # With one dimension every vector is the same, so only full text can rank.
    server = FakeEmbeddingServer(dimension=1).start()
    root = tmp_path / "ws"
    files = {f"mod_{i}.py": python_function(f"helper_{i}", f"topic {i}") for i in range(30)}
    files["mod_17.py"] += "\n\nclass FrobnicateWidget:\n    pass\n"
    write_tree(root, files)
    embedder = make_embedder(server, sleeps)
    Pipeline(database, root, embedder).run()

    results = SearchService(database, embedder).search("FrobnicateWidget")
    server.stop()

    assert results.items[0].path == "mod_17.py"
    assert results.mode.startswith("hybrid")


def test_search_without_embedder_uses_full_text(database: Database, tree: Path) -> None:
    from shared.retrieval.embedders import DisabledEmbedder
    from shared.retrieval.service import index_workspace

    index_workspace(
        database, tree, model=None, max_file_bytes=10_000, batch_size=8, send_batch=print
    )

    results = SearchService(database, DisabledEmbedder()).search("save_record")

    assert results.mode == "text"
    assert results.items[0].path == "pkg/store.py"


def test_rerank_reorders_candidates(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    from shared.retrieval.rerank import HttpReranker

    embedder = make_embedder(fake_embeddings, sleeps)
    Pipeline(database, tree, embedder).run()
    reranker = HttpReranker(
        base_url=fake_embeddings.base_url, model="rr", api_key=None, timeout_s=5
    )
    service = SearchService(database, embedder, reranker, rerank_weight=1.0)

    results = service.search("install package server", SearchOptions(limit=3))

    assert results.reranked
    assert fake_embeddings.rerank_queries == ["install package server"]
    assert results.items[0].path == "docs/guide.md"
    assert results.items[0].score == pytest.approx(1.0)


def test_failing_reranker_keeps_search_order(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    from shared.retrieval.rerank import HttpReranker

    embedder = make_embedder(fake_embeddings, sleeps)
    Pipeline(database, tree, embedder).run()
    fake_embeddings.rerank_status = 500
    reranker = HttpReranker(
        base_url=fake_embeddings.base_url, model="rr", api_key=None, timeout_s=5
    )
    plain = SearchService(database, embedder).search("record storage")

    results = SearchService(database, embedder, reranker).search("record storage")

    assert not results.reranked
    assert [hit.path for hit in results.items] == [hit.path for hit in plain.items]


def test_rerank_false_skips_reranker(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    from shared.retrieval.rerank import HttpReranker

    embedder = make_embedder(fake_embeddings, sleeps)
    Pipeline(database, tree, embedder).run()
    reranker = HttpReranker(
        base_url=fake_embeddings.base_url, model="rr", api_key=None, timeout_s=5
    )

    results = SearchService(database, embedder, reranker).search(
        "record", SearchOptions(rerank=False)
    )

    assert not results.reranked
    assert fake_embeddings.rerank_queries == []


def test_context_injection_waits_for_complete_index(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    from workers.context import IndexedSearch, LexicalSearch

    embedder = make_embedder(fake_embeddings, sleeps)
    pipeline = Pipeline(database, tree, embedder)
    injection = IndexedSearch(SearchService(database, embedder), LexicalSearch(tree))
    pipeline.index()

    while_pending = injection.search("record storage", limit=1)
    pipeline.embed_all()
    complete = injection.search("record storage", limit=1)

    # Lexical scores are sums of term weights (above 1); fused index scores are below
    # 2 / 61 (the best reciprocal rank in two lists), rounded to 6 places.
    assert while_pending[0].path == "pkg/store.py"
    assert while_pending[0].score > 1
    assert complete[0].path == "pkg/store.py"
    assert complete[0].score <= round(2 / 61, 6)


def test_full_reindex_embeds_every_chunk_again(
    database: Database, tree: Path, fake_embeddings: FakeEmbeddingServer, sleeps: list[float]
) -> None:
    pipeline = Pipeline(database, tree, make_embedder(fake_embeddings, sleeps))
    pipeline.run()
    total = len(chunk_rows(database))
    fake_embeddings.inputs.clear()

    report = pipeline.run(full=True)

    # Same model, same text: only a full index embeds anything, and then all of it.
    assert not report.model_changed
    assert report.chunks_reused == 0
    assert len(fake_embeddings.inputs) == total
    assert index_status(database).pending == 0
    assert index_status(database).embedded == total
