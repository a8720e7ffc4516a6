"""Benchmark of the hand-over of ``GET /api/search`` to the embedding worker.

Real processes: ``foxctl web serve`` (one process) and ``foxctl worker --queues
embeddings --queues search`` on PostgreSQL and Redis (``bench/cluster.py``), with the
MiniLM model (``FOXCTL_EMBEDDING_PROVIDER=local``) and the installed source of Dramatiq
as the workspace. After the index is embedded, three measurements of the same queries:

- ``direct``: ``SearchService.search`` in this process with its own MiniLM: embedding,
  vector and full-text search, fusion. No HTTP, no queue.
- ``api, idle``: ``GET /api/search`` through the web process, Redis, the search queue
  and the worker, which does the same work and pushes the results back.
- ``api, while indexing``: the same requests while the worker's threads are busy
  embedding batches: every file of the workspace (a copy of the Dramatiq source) gets
  one more line, and an incremental index re-embeds all of their chunks. This shows
  how long a search waits behind the batches.

Run from the repository root: ``.venv/bin/python -m bench.search_api``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dramatiq
import httpx

from bench.cluster import BenchCluster, add_service_options, services_from
from bench.stats import print_table, summarize_ms
from shared.db import Database, make_engine
from shared.retrieval.embedders import LocalEmbedder
from shared.retrieval.search import SearchOptions, SearchService
from shared.settings import Settings, load_settings
from tests.test_index_vectors import DRAMATIQ_QUERIES

QUERIES = [query for query, _ in DRAMATIQ_QUERIES]


def wait_embedded(api: httpx.Client, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, object] = api.get("/api/index").json()
        done = status["chunks"] and status["pending"] == 0
        if done and status["embedded"] == status["chunks"] and status["last_run_status"]:
            return status
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: index not embedded after {timeout_s} s: {status}")
        time.sleep(0.5)


def api_latencies(api: httpx.Client, rounds: int, *, until: float | None = None) -> list[float]:
    latencies = []
    for index in range(rounds * len(QUERIES)):
        if until is not None and time.monotonic() > until:
            break
        started = time.perf_counter()
        response = api.get("/api/search", params={"q": QUERIES[index % len(QUERIES)]})
        latencies.append(time.perf_counter() - started)
        body = response.json()
        if response.status_code != 200 or body["warnings"] or body["mode"] == "text":
            raise SystemExit(f"bench: search did not run on the worker: {body}")
    return latencies


def direct_latencies(settings: Settings, rounds: int) -> list[float]:
    db = Database(make_engine(settings))
    service = SearchService(db, LocalEmbedder())
    service.search("warm up the model")
    latencies = []
    for index in range(rounds * len(QUERIES)):
        started = time.perf_counter()
        service.search(QUERIES[index % len(QUERIES)], SearchOptions())
        latencies.append(time.perf_counter() - started)
    db.dispose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_service_options(parser)
    parser.add_argument("--rounds", type=int, default=10, help="passes over the 12 queries")
    args = parser.parse_args()
    workspace = Path(tempfile.mkdtemp(prefix="foxctl-bench-workspace-"))
    source = Path(dramatiq.__file__).resolve().parent
    shutil.copytree(source, workspace, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pyc"))
    env = {
        "FOXCTL_WORKSPACE": str(workspace),
        "FOXCTL_EMBEDDING_PROVIDER": "local",
    }
    try:
        with BenchCluster(services_from(args), env=env) as cluster:
            cluster.start_web(1)
            cluster.start_worker(2, name="embedding-worker", queues=("embeddings", "search"))
            with cluster.api() as api:
                api.post("/api/index", json={"full": True}).raise_for_status()
                status = wait_embedded(api, timeout_s=600)
                print(f"indexed {status['files']} files, {status['chunks']} chunks")

                direct = direct_latencies(load_settings(cluster.env), args.rounds)
                api_latencies(api, 1)
                idle = api_latencies(api, args.rounds)

                for path in workspace.rglob("*.py"):
                    path.write_text(path.read_text() + "\n# touched by bench/search_api.py\n")
                started = time.monotonic()
                api.post("/api/index", json={"full": False}).raise_for_status()
                with ThreadPoolExecutor(1) as pool, cluster.api() as watcher:
                    # Wait for the job to chunk the files, so that batches are queued.
                    while watcher.get("/api/index").json()["pending"] == 0:
                        time.sleep(0.05)
                    done = pool.submit(lambda: (wait_embedded(watcher, 600), time.monotonic()))
                    busy_started = time.monotonic()
                    busy = api_latencies(api, args.rounds, until=time.monotonic() + 60)
                    busy_ended = time.monotonic()
                    embedded_at = done.result()[1]
                reembed_s = embedded_at - started
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    print_table(
        "search latency (12 queries, limit 10)",
        [
            ("direct, in process", summarize_ms(direct)),
            ("api, idle worker", summarize_ms(idle)),
            ("api, while re-indexing", summarize_ms(busy)),
            ("re-embedding every chunk took", f"{reembed_s:.1f} s"),
            (
                "searches while chunks were pending",
                f"{min(embedded_at, busy_ended) - busy_started:.1f} s of the "
                f"{busy_ended - busy_started:.1f} s of searching",
            ),
        ],
    )


if __name__ == "__main__":
    main()
