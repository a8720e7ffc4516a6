"""Ingress: requests/s and latency of ``POST /api/sessions/{id}/messages`` under wrk.

No worker runs, so every accepted message stays queued. The run measures the web tier
alone: authenticate, validate, commit the message with its turn and two events, and
enqueue the wake-up in Redis.

Run from the repository root: ``.venv/bin/python -m bench.ingress`` (needs ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.cluster import BenchCluster, add_service_options, services_from
from bench.monitor import ProcessMonitor
from bench.stats import print_table

LUA_SCRIPT = Path(__file__).with_name("post_messages.lua")
RESULT_PREFIX = "BENCH_RESULT "


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=int, default=20, help="measured run (seconds)")
    parser.add_argument("--warmup-s", type=int, default=5, help="unmeasured run before it")
    parser.add_argument("--connections", type=int, default=32, help="open HTTP connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--sessions", type=int, default=200, help="sessions to post to")
    parser.add_argument("--web-concurrency", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--close-connections",
        action="store_true",
        help="send 'Connection: close' so that every request opens a new connection",
    )
    add_service_options(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    services = services_from(args)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench: wrk not found; install it with `apt-get install wrk`")

    with BenchCluster(services) as cluster, ProcessMonitor() as monitor:
        web = cluster.start_web(args.web_concurrency)
        monitor.watch(web.pid, "web master", "web worker")
        sessions = cluster.create_sessions(args.sessions)
        inputs = write_wrk_inputs(cluster, sessions)
        if args.close_connections:
            inputs.append("close")

        run_wrk(wrk, cluster.url, inputs, args, args.warmup_s)
        before = count_messages(cluster)
        result = run_wrk(wrk, cluster.url, inputs, args, args.duration_s)
        stored = count_messages(cluster) - before
        monitor.sample()

    report(args, result, stored, monitor)


def write_wrk_inputs(cluster: BenchCluster, sessions: list[str]) -> list[str]:
    token_file = cluster.log_dir / "token"
    sessions_file = cluster.log_dir / "sessions"
    token_file.write_text(cluster.token + "\n")
    sessions_file.write_text("\n".join(sessions) + "\n")
    return [str(token_file), str(sessions_file)]


def run_wrk(
    wrk: str, url: str, inputs: list[str], args: argparse.Namespace, duration_s: int
) -> dict[str, Any]:
    command = [
        wrk,
        "--threads",
        str(args.wrk_threads),
        "--connections",
        str(args.connections),
        "--duration",
        f"{duration_s}s",
        "--script",
        str(LUA_SCRIPT),
        url,
        "--",
        *inputs,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line.removeprefix(RESULT_PREFIX)))
    raise RuntimeError(f"wrk printed no {RESULT_PREFIX.strip()} line:\n{output}")


def count_messages(cluster: BenchCluster) -> int:
    with cluster.connect() as db:
        row = db.execute("SELECT count(*) FROM messages").fetchone()
    assert row is not None
    return int(row[0])


def report(
    args: argparse.Namespace, result: dict[str, Any], stored: int, monitor: ProcessMonitor
) -> None:
    duration_s = result["duration_us"] / 1e6
    errors = sum(result[key] for key in ("connect_errors", "read_errors", "write_errors"))
    print_table(
        f"Ingress: POST /api/sessions/{{id}}/messages, {args.connections} connections, "
        f"{args.sessions} sessions, WEB_CONCURRENCY={args.web_concurrency}, no worker"
        + (", Connection: close" if args.close_connections else ", keep-alive"),
        [
            ("requests", f"{result['requests']} in {duration_s:.1f} s"),
            ("rate", f"{result['requests'] / duration_s:.0f} requests/s"),
            ("latency p50", f"{result['p50_us'] / 1000:.1f} ms"),
            ("latency p90", f"{result['p90_us'] / 1000:.1f} ms"),
            ("latency p99", f"{result['p99_us'] / 1000:.1f} ms"),
            ("latency max", f"{result['max_us'] / 1000:.1f} ms"),
            ("non-2xx answers", str(result["non_2xx"])),
            ("socket errors, timeouts", f"{errors}, {result['timeouts']}"),
            ("messages stored", str(stored)),
        ],
    )
    print_table("Processes (peak RSS is VmHWM)", monitor.rows())


if __name__ == "__main__":
    main()
