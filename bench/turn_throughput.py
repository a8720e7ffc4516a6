"""Turn throughput: turns/s that one worker process completes, with an instant fake model.

For each thread count, the web tier first queues ``--turns`` messages over ``--sessions``
sessions while no worker runs. Then one worker process starts and drains the queue. The
rate is finished turns over the span from the first ``started_at`` to the last
``finished_at`` in the database, so worker start-up does not count.

Run from the repository root: ``.venv/bin/python -m bench.turn_throughput``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from bench.cluster import BenchCluster, add_service_options, services_from
from bench.monitor import ProcessMonitor
from bench.stats import print_table, summarize_ms
from bench.turn_times import count_unfinished, fetch_turn_times
from tests.fakes.openai_server import FakeOpenAI

POSTING_THREADS = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1500, help="turns per thread count")
    parser.add_argument("--sessions", type=int, default=200, help="sessions to spread them on")
    parser.add_argument(
        "--threads", default="4,8,16", help="worker thread counts to try, comma-separated"
    )
    parser.add_argument("--timeout-s", type=float, default=60.0, help="limit for one drain")
    add_service_options(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    services = services_from(args)
    fake_model = FakeOpenAI().start()
    env = {"FOXCTL_LLM_BASE_URL": fake_model.base_url}
    rows: list[tuple[str, str]] = []

    try:
        with BenchCluster(services, env=env) as cluster, ProcessMonitor() as monitor:
            web = cluster.start_web(concurrency=2)
            monitor.watch(web.pid, "web master", "web worker")
            sessions = cluster.create_sessions(args.sessions)
            for threads in (int(value) for value in args.threads.split(",")):
                rows.append(measure(cluster, monitor, sessions, threads, args))
    finally:
        fake_model.stop()

    print_table(
        f"Turn throughput: {args.turns} queued turns over {args.sessions} sessions, "
        "1 worker process, instant fake model",
        rows,
    )
    print_table("Processes (peak RSS is VmHWM)", monitor.rows())


def measure(
    cluster: BenchCluster,
    monitor: ProcessMonitor,
    sessions: list[str],
    threads: int,
    args: argparse.Namespace,
) -> tuple[str, str]:
    """Queue the turns, let a fresh worker drain them, and return one result row."""
    turn_ids = queue_turns(cluster, sessions, args.turns)
    worker = cluster.start_worker(threads, name=f"worker-{threads}-threads")
    monitor.watch(
        worker.pid, f"worker main, {threads} threads", f"worker process, {threads} threads"
    )
    wait_until_finished(cluster, turn_ids, args.timeout_s)
    monitor.sample()
    cluster.stop(worker)

    with cluster.connect() as db:
        times = fetch_turn_times(db, turn_ids)
    succeeded = [t for t in times if t.status == "succeeded"]
    span_s = max(t.finished_s for t in times) - min(t.started_s for t in times)
    rate = len(succeeded) / span_s
    detail = f"started to finished {summarize_ms([t.running_s for t in succeeded])}"
    return (
        f"{threads} threads",
        f"{rate:.0f} turns/s ({len(succeeded)} of {len(turn_ids)} succeeded in {span_s:.1f} s);"
        f" {detail}",
    )


def queue_turns(cluster: BenchCluster, sessions: list[str], count: int) -> list[str]:
    def post(index: int) -> str:
        return cluster.post_message(api, sessions[index % len(sessions)], f"message {index}")

    with cluster.api() as api, ThreadPoolExecutor(POSTING_THREADS) as pool:
        return list(pool.map(post, range(count)))


def wait_until_finished(cluster: BenchCluster, turn_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with cluster.connect() as db:
        while (unfinished := count_unfinished(db, turn_ids)) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{unfinished} turns still unfinished after {timeout_s} s")
            time.sleep(0.1)


if __name__ == "__main__":
    main()
