"""Live event fan-out: many console WebSocket clients on one web process, one turn at a time.

One gunicorn web process with one uvicorn worker, one Dramatiq worker process,
PostgreSQL and Redis. The model is the fake from ``tests/fakes/openai_server.py``: each
message carries its ``drip:`` directive, so the fake streams the echoed reply word by
word with ``--token-interval-ms`` between words, and each turn publishes ``--tokens``
live ``turn.delta`` events plus its persisted events. For each client count in
``--clients``, the benchmark opens that many ``/ws/console/{id}`` sockets (with console
tokens, as the browser console does) from ``--client-processes`` child processes
(``bench.ws_clients``), runs ``--warmup-turns`` and then ``--turns`` turns per session
in sequence, and closes the sockets.

Published events carry no publish time, so the benchmark stamps them itself: a process
of its own (``bench.ws_stamper``) subscribes to the same Redis channels as the web
process and records when each event arrives there. Latency is client receipt minus
that stamp, both wall-clock times on the same host. It leaves out the time from the
worker's PUBLISH to Redis forwarding the message, which is not measured. Every
client's events are compared with the stamped ones for its session, and the persisted
ones also with the database: every delta and every persisted event, in order, with
nothing missing, duplicated or extra.

Run from the repository root: ``.venv/bin/python -m bench.ws_fanout``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cluster import BenchCluster, add_service_options, services_from
from bench.monitor import ProcessMonitor, read_cpu_s
from bench.stats import percentile, print_table, summarize_ms
from bench.ws_clients import (
    ClientLog,
    ClientPlan,
    EventKey,
    raise_fd_limit,
    run_client_process,
)
from bench.ws_stamper import TURN_END_TYPES, Stamp, Stamper
from tests.fakes.openai_server import FakeOpenAI

LATENCY_TARGET_MS = 100.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients",
        default="100,300,500,1000",
        help="comma-separated client counts, one round each (default: %(default)s)",
    )
    parser.add_argument(
        "--sessions", type=int, default=1, help="sessions the clients are spread over"
    )
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes that run the clients"
    )
    parser.add_argument(
        "--tokens", type=int, default=50, help="streamed words per reply (3 or more)"
    )
    parser.add_argument(
        "--token-interval-ms", type=float, default=20.0, help="model time between words"
    )
    parser.add_argument("--turns", type=int, default=3, help="measured turns per session")
    parser.add_argument(
        "--warmup-turns", type=int, default=1, help="unmeasured turns per session first"
    )
    parser.add_argument("--threads", type=int, default=2, help="worker threads")
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=32,
        help="WebSocket handshakes in flight per client process",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=120.0, help="limit for connecting or for one turn"
    )
    add_service_options(parser)

    args = parser.parse_args()
    args.client_counts = [int(part) for part in args.clients.split(",") if part.strip()]
    if args.tokens < 3:
        parser.error(f"--tokens {args.tokens} is too small; use 3 or more")
    return args


@dataclass
class RoundResult:
    clients: int
    load_before: tuple[float, float, float]
    connect_s: float = 0.0
    slowest_handshake_s: float = 0.0
    connected: int = 0
    connect_failures: int = 0
    complete: int = 0
    incomplete: list[str] = field(default_factory=list)
    expected_events: int = 0
    received_events: int = 0
    latency_s: list[float] = field(default_factory=list)
    delta_latency_s: list[float] = field(default_factory=list)
    final_latency_s: list[float] = field(default_factory=list)
    final_spread_s: list[float] = field(default_factory=list)
    web_rss_mib: float = 0.0
    web_cpu_s: float = 0.0
    #: Time the web worker was runnable but waiting for a CPU (the run queue).
    web_wait_s: float = 0.0
    worker_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    turn_wall_s: float = 0.0
    close_codes: dict[str, int] = field(default_factory=dict)
    #: The events of the first session's last turn, persisted ones by type.
    turn_events: str = ""

    @property
    def passed(self) -> bool:
        p99_ms = percentile(self.latency_s, 0.99) * 1000
        return self.complete == self.clients and p99_ms < LATENCY_TARGET_MS


def main() -> None:
    args = parse_args()
    services = services_from(args)
    raise_fd_limit()
    model = FakeOpenAI().start()
    env = {"FOXCTL_LLM_BASE_URL": model.base_url}
    results: list[RoundResult] = []

    try:
        with BenchCluster(services, env=env) as cluster, ProcessMonitor() as monitor:
            web = cluster.start_web(concurrency=1)
            monitor.watch(web.pid, "web master", "web worker")
            worker = cluster.start_worker(args.threads)
            monitor.watch(worker.pid, "worker main", "worker process")
            sessions = cluster.create_sessions(args.sessions)
            pids = Pids(monitor)

            with Stamper(services.redis_url, sessions) as stamper:
                for clients in args.client_counts:
                    result = run_round(cluster, sessions, clients, args, stamper, pids)
                    results.append(result)
                    report_round(result, args)
            monitor.sample()
    finally:
        model.stop()

    report(results, args, monitor)


class Pids:
    """The pids of the web's uvicorn worker and the Dramatiq worker process."""

    def __init__(self, monitor: ProcessMonitor) -> None:
        monitor.sample()
        roles = {peak.role: peak.pid for peak in monitor.peaks.values()}
        self.web = roles["web worker"]
        self.worker = roles["worker process"]


def run_round(
    cluster: BenchCluster,
    sessions: list[str],
    clients: int,
    args: argparse.Namespace,
    stamper: Stamper,
    pids: Pids,
) -> RoundResult:
    """Connect ``clients`` sockets, run the turns, collect every client's log."""
    result = RoundResult(clients, os.getloadavg())
    processes, pipes = _start_clients(cluster, sessions, clients, args)
    try:
        started = time.perf_counter()
        for pipe in pipes:
            _, connected, failed = _receive(pipe, args.timeout_s, "connect")
            result.connected += connected
            result.connect_failures += failed
        result.connect_s = time.perf_counter() - started

        web_cpu, worker_cpu = read_cpu_s(pids.web) or 0.0, read_cpu_s(pids.worker) or 0.0
        web_wait = _run_queue_wait_s(pids.web)
        client_cpu = _cpu_s([process.pid for process in processes])
        mark = stamper.mark()
        turns_started = time.time()
        measured_from = _run_turns(cluster, sessions, args, stamper)
        result.web_cpu_s = (read_cpu_s(pids.web) or 0.0) - web_cpu
        result.web_wait_s = _run_queue_wait_s(pids.web) - web_wait
        result.worker_cpu_s = (read_cpu_s(pids.worker) or 0.0) - worker_cpu
        result.client_cpu_s = _cpu_s([process.pid for process in processes]) - client_cpu
        result.turn_wall_s = time.time() - turns_started
        result.web_rss_mib = _rss_mib(pids.web)

        logs: list[ClientLog] = []
        for pipe in pipes:
            pipe.send(("stop", 10.0))
        for pipe in pipes:
            logs += _receive(pipe, args.timeout_s, "logs")[1]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()

    expected = _expected_events(cluster, stamper.since(mark))
    result.turn_events = _describe_last_turn(expected[sessions[0]])
    _check_and_measure(result, logs, expected, measured_from)
    return result


def _start_clients(
    cluster: BenchCluster, sessions: list[str], clients: int, args: argparse.Namespace
) -> tuple[list[Any], list[Connection]]:
    # spawn, not fork: the benchmark process already runs the process monitor thread.
    context = multiprocessing.get_context("spawn")
    assignment = [sessions[index % len(sessions)] for index in range(clients)]
    processes: list[Any] = []
    pipes: list[Connection] = []
    for part in range(args.client_processes):
        plan = ClientPlan(
            api_url=cluster.url,
            api_token=cluster.token,
            sessions=assignment[part :: args.client_processes],
            turns=args.warmup_turns + args.turns,
            connect_concurrency=args.connect_concurrency,
            connect_timeout_s=args.timeout_s,
        )
        parent_end, child_end = context.Pipe()
        process = context.Process(target=run_client_process, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)
    return processes, pipes


def _receive(pipe: Connection, timeout_s: float, stage: str) -> Any:
    if not pipe.poll(timeout_s):
        raise RuntimeError(f"a client process sent nothing within {timeout_s} s ({stage})")
    return pipe.recv()


def _run_turns(
    cluster: BenchCluster, sessions: list[str], args: argparse.Namespace, stamper: Stamper
) -> float:
    """Run the turns one after another on every session and return when measuring began."""
    measured_from = time.time()
    with cluster.api() as api:
        for index in range(args.warmup_turns + args.turns):
            if index == args.warmup_turns:
                measured_from = time.time()
            mark = stamper.mark()
            content = _message(args)
            turn_ids = {cluster.post_message(api, session, content) for session in sessions}
            stamper.wait_for_turn_ends(mark, turn_ids, args.timeout_s)
    return measured_from


def _message(args: argparse.Namespace) -> str:
    """Return a message whose echoed reply streams as exactly ``args.tokens`` deltas.

    The fake replies ``echo: <message>`` and sends each word as one delta, so "echo:"
    and the directive are two of them. The other words are distinct, so every delta of
    a turn has its own text.
    """
    words = [f"w{index:04d}" for index in range(args.tokens - 2)]
    return f"drip:{args.token_interval_ms / 1000:g} {' '.join(words)}"


@dataclass
class Expected:
    keys: list[EventKey]
    stamps: dict[EventKey, Stamp]
    final_keys: set[EventKey]


def _expected_events(cluster: BenchCluster, stamps: list[Stamp]) -> dict[str, Expected]:
    """Group stamped events by session, and check the persisted ones against the database."""
    by_session: dict[str, Expected] = defaultdict(lambda: Expected([], {}, set()))
    for stamp in stamps:
        expected = by_session[stamp.session_id]
        if stamp.key in expected.stamps:
            raise RuntimeError(f"event {stamp.key} was published twice: {stamp.event}")
        expected.keys.append(stamp.key)
        expected.stamps[stamp.key] = stamp
        if stamp.event.get("type") in TURN_END_TYPES:
            expected.final_keys.add(stamp.key)
    for expected in by_session.values():
        # Viewers get persisted events in sequence order, and each delta right after the
        # persisted event it follows, whatever order two publishers reached Redis in.
        expected.keys.sort(key=_delivery_position)

    with cluster.connect() as db:
        for session_id, expected in by_session.items():
            persisted = [key for key in expected.keys if key[0] == "e"]
            rows = db.execute(
                "SELECT seq, type FROM events WHERE session_id = %s AND seq BETWEEN %s AND %s "
                "ORDER BY seq",
                (session_id, persisted[0][1], persisted[-1][1]),
            ).fetchall()
            stored = [("e", seq, event_type) for seq, event_type in rows]
            if sorted(persisted) != stored:
                raise RuntimeError(
                    f"session {session_id}: published events {persisted} differ from "
                    f"the database's {stored}"
                )
    return by_session


def _describe_last_turn(expected: Expected) -> str:
    ends = [index for index, key in enumerate(expected.keys) if key in expected.final_keys]
    last_turn = expected.keys[ends[-2] + 1 :] if len(ends) > 1 else expected.keys
    deltas = sum(1 for key in last_turn if key[0] == "d")
    persisted = [str(key[2]) for key in last_turn if key[0] == "e"]
    return f"{len(last_turn)}: {deltas} deltas and {', '.join(persisted)}"


def _delivery_position(key: EventKey) -> tuple[int, int]:
    if key[0] == "e":
        return (int(key[1]), 0)
    return (int(key[2]), 1)


def _check_and_measure(
    result: RoundResult, logs: list[ClientLog], expected: dict[str, Expected], measured_from: float
) -> None:
    final_receipts: dict[tuple[str, EventKey], list[float]] = defaultdict(list)
    result.slowest_handshake_s = max((log.connect_s for log in logs), default=0.0)
    for index, log in enumerate(logs):
        if log.close_code is not None:
            label = f"{log.close_code} {log.close_reason.strip()[:80]}".strip()
            result.close_codes[label] = result.close_codes.get(label, 0) + 1
        if log.connect_error is not None:
            result.incomplete.append(f"client {index}: {log.connect_error}")
            continue
        session_expected = expected.get(log.session_id)
        if session_expected is None:
            result.incomplete.append(f"client {index}: no events were published")
            continue
        result.expected_events += len(session_expected.keys)
        result.received_events += len(log.received)
        keys = [key for _, key in log.received]
        if keys == session_expected.keys:
            result.complete += 1
        else:
            result.incomplete.append(f"client {index}: {_difference(keys, session_expected.keys)}")

        for received_at, key in log.received:
            stamp = session_expected.stamps.get(key)
            if stamp is None or stamp.at < measured_from:
                continue
            latency = received_at - stamp.at
            result.latency_s.append(latency)
            if key[0] == "d":
                result.delta_latency_s.append(latency)
            if key in session_expected.final_keys:
                result.final_latency_s.append(latency)
                final_receipts[(log.session_id, key)].append(received_at)

    # Per turn: from its final event's stamp to the last client that received it.
    for (session_id, key), receipts in final_receipts.items():
        stamp = expected[session_id].stamps[key]
        result.final_spread_s.append(max(receipts) - stamp.at)


def _difference(received: list[EventKey], expected: list[EventKey]) -> str:
    received_set, expected_set = set(received), set(expected)
    missing = [key for key in expected if key not in received_set]
    extra = [key for key in received if key not in expected_set]
    duplicates = len(received) - len(received_set)
    in_order = [key for key in received if key in expected_set] == [
        key for key in expected if key in received_set
    ]
    return (
        f"{len(received)} of {len(expected)} events, {len(missing)} missing "
        f"(first {missing[:3]}), {len(extra)} extra, {duplicates} duplicates, "
        f"{'in' if in_order else 'out of'} order"
    )


def report_round(result: RoundResult, args: argparse.Namespace) -> None:
    load = ", ".join(f"{value:.2f}" for value in result.load_before)
    print_table(
        f"{result.clients} clients over {args.sessions} session(s), {args.turns} measured turns "
        f"of {args.tokens} deltas every {args.token_interval_ms:g} ms (load before: {load})",
        [
            (
                "connected",
                f"{result.connected} of {result.clients} in {result.connect_s:.1f} s, "
                f"{result.connect_failures} failed, slowest handshake "
                f"{result.slowest_handshake_s:.2f} s",
            ),
            (
                "clients with every event in order",
                f"{result.complete} of {result.clients}",
            ),
            ("events of one turn", result.turn_events),
            ("events received", f"{result.received_events} of {result.expected_events}"),
            ("publish to receipt, all events", summarize_ms(result.latency_s)),
            ("publish to receipt, deltas", summarize_ms(result.delta_latency_s)),
            ("publish to receipt, final event", summarize_ms(result.final_latency_s)),
            ("final event to the last client", summarize_ms(result.final_spread_s)),
            (
                "web worker",
                f"RSS {result.web_rss_mib:.1f} MiB after the turns, "
                f"CPU {result.web_cpu_s:.1f} s in {result.turn_wall_s:.1f} s of turns, "
                f"{result.web_wait_s:.1f} s waiting for a CPU",
            ),
            (
                "web CPU per delivered event",
                f"{result.web_cpu_s / max(result.received_events, 1) * 1e6:.0f} µs",
            ),
            ("worker process CPU", f"{result.worker_cpu_s:.1f} s"),
            (
                "client processes CPU",
                f"{result.client_cpu_s:.1f} s over {args.client_processes} process(es)",
            ),
            ("close codes", json.dumps(result.close_codes) if result.close_codes else "none"),
            ("target (all clients, p99 < 100 ms)", "met" if result.passed else "missed"),
        ],
    )
    for line in result.incomplete[:5]:
        print(f"  incomplete: {line}")


def report(results: list[RoundResult], args: argparse.Namespace, monitor: ProcessMonitor) -> None:
    print_table("Processes (peak RSS is VmHWM)", monitor.rows())
    print("\nMarkdown rows:")
    print(
        "| clients | complete | p50 | p99 | max | final to last client | web RSS "
        "| web CPU / wall (waiting for a CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result.clients} | {result.complete} of {result.clients} "
            f"| {_ms(percentile(result.latency_s, 0.5))} "
            f"| {_ms(percentile(result.latency_s, 0.99))} "
            f"| {_ms(max(result.latency_s, default=float('nan')))} "
            f"| {_ms(max(result.final_spread_s, default=float('nan')))} "
            f"| {result.web_rss_mib:.0f} MiB "
            f"| {result.web_cpu_s:.1f} s / {result.turn_wall_s:.1f} s "
            f"({result.web_wait_s:.1f} s) |"
        )
    print("\nJSON:")
    for result in results:
        summary = {
            "clients": result.clients,
            "sessions": args.sessions,
            "tokens": args.tokens,
            "token_interval_ms": args.token_interval_ms,
            "complete": result.complete,
            "connect_failures": result.connect_failures,
            "p50_ms": round(percentile(result.latency_s, 0.5) * 1000, 1),
            "p99_ms": round(percentile(result.latency_s, 0.99) * 1000, 1),
            "max_ms": round(max(result.latency_s, default=float("nan")) * 1000, 1),
            "final_to_last_client_ms": round(
                max(result.final_spread_s, default=float("nan")) * 1000, 1
            ),
            "web_rss_mib": round(result.web_rss_mib, 1),
            "load_before": [round(value, 2) for value in result.load_before],
            "target_met": result.passed,
        }
        print(json.dumps(summary))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _cpu_s(pids: list[int]) -> float:
    return sum(read_cpu_s(pid) or 0.0 for pid in pids)


def _run_queue_wait_s(pid: int) -> float:
    """Return the seconds ``pid``'s threads spent runnable but not running (schedstat)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_ns / 1e9


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
