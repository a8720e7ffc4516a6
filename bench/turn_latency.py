"""Turn overhead: from POST to the ``turn.succeeded`` event, with an instant fake model.

One worker process runs the turns. Posts are sequential: the next one is sent only after
the previous turn has finished, so nothing queues. Each turn is measured twice:

- server side, from the database: ``turns.created_at`` (set by the web process) to
  ``turns.finished_at`` (set by the worker), split at ``started_at``;
- client side: from sending the POST to the moment a poll of the ``events`` table finds
  the turn's ``turn.succeeded`` row. The poll runs every ``--poll-interval-ms``, which
  adds up to that much to each sample.

Run from the repository root: ``.venv/bin/python -m bench.turn_latency``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import psycopg

from bench.cluster import BenchCluster, add_service_options, services_from
from bench.monitor import ProcessMonitor
from bench.stats import print_table, summarize_ms
from bench.turn_times import TurnTimes, fetch_turn_times
from tests.fakes.openai_server import FakeOpenAI

SUCCEEDED_QUERY = "SELECT 1 FROM events WHERE turn_id = %s AND type = 'turn.succeeded'"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500, help="measured turns")
    parser.add_argument("--warmup-turns", type=int, default=30, help="unmeasured turns first")
    parser.add_argument("--sessions", type=int, default=20, help="sessions to post to in turn")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--poll-interval-ms", type=float, default=1.0, help="client poll period")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="limit for one turn")
    add_service_options(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    services = services_from(args)
    fake_model = FakeOpenAI().start()
    env = {"FOXCTL_LLM_BASE_URL": fake_model.base_url}

    try:
        with BenchCluster(services, env=env) as cluster, ProcessMonitor() as monitor:
            web = cluster.start_web(concurrency=2)
            monitor.watch(web.pid, "web master", "web worker")
            worker = cluster.start_worker(args.threads)
            monitor.watch(worker.pid, "worker main", "worker process")
            sessions = cluster.create_sessions(args.sessions)

            with cluster.api() as api, cluster.connect() as db:
                run_turns(cluster, api, db, sessions, args.warmup_turns, args)
                client_s = run_turns(cluster, api, db, sessions, args.turns, args)
                times = fetch_turn_times(db, list(client_s))
            monitor.sample()
    finally:
        fake_model.stop()

    report(args, client_s, times, monitor)


def run_turns(
    cluster: BenchCluster,
    api: httpx.Client,
    db: psycopg.Connection[Any],
    sessions: list[str],
    count: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Post ``count`` messages one after another; return each turn's client-side time."""
    client_s: dict[str, float] = {}
    for index in range(count):
        session_id = sessions[index % len(sessions)]
        started = time.perf_counter()
        turn_id = cluster.post_message(api, session_id, f"message {index}")
        wait_for_success(db, turn_id, args)
        client_s[turn_id] = time.perf_counter() - started
    return client_s


def wait_for_success(db: psycopg.Connection[Any], turn_id: str, args: argparse.Namespace) -> None:
    deadline = time.perf_counter() + args.timeout_s
    while db.execute(SUCCEEDED_QUERY, (turn_id,)).fetchone() is None:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"turn {turn_id} did not succeed within {args.timeout_s} s")
        time.sleep(args.poll_interval_ms / 1000)


def report(
    args: argparse.Namespace,
    client_s: dict[str, float],
    times: list[TurnTimes],
    monitor: ProcessMonitor,
) -> None:
    succeeded = [t for t in times if t.status == "succeeded"]
    print_table(
        f"Turn overhead: {args.turns} sequential turns over {args.sessions} sessions, "
        f"1 worker process with {args.threads} threads, instant fake model",
        [
            ("client: POST to turn.succeeded", summarize_ms(list(client_s.values()))),
            ("server: created to finished", summarize_ms([t.total_s for t in succeeded])),
            ("server: created to started", summarize_ms([t.queued_s for t in succeeded])),
            ("server: started to finished", summarize_ms([t.running_s for t in succeeded])),
            ("turns succeeded", f"{len(succeeded)} of {len(client_s)}"),
        ],
    )
    print_table("Processes (peak RSS is VmHWM)", monitor.rows())


if __name__ == "__main__":
    main()
