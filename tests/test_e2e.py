"""End to end with real processes: gunicorn web, dramatiq workers, Redis, a fake model.

Each test runs on PostgreSQL, on PostgreSQL behind PgBouncer in transaction pooling
mode, and on SQLite (one file shared by every process).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlmodel import col, select

from shared.auth.service import create_token
from shared.db import Database, make_engine
from shared.sessions.models import Message
from shared.settings import load_settings
from shared.turns.models import SessionLease, Turn
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, free_port, run_cli, wait_for_log, wait_until_ready

pytestmark = pytest.mark.slow

LEASE_TTL_S = 3.0
RECONCILE_INTERVAL_S = 1.0


class Cluster:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[Process] = []
        self.db = Database(make_engine(load_settings(env)))
        migrated = run_cli(["migrate"], env)
        assert migrated.returncode == 0, migrated.stderr + migrated.stdout
        with self.db.write() as session:
            _, token = create_token(session, "e2e")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def start_web(self) -> Process:
        env = {
            **self.env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "FOXCTL_RUN_DIR": str(self.log_dir / "run-web"),
        }
        web = self._start("web", ["web", "serve"], env)
        wait_until_ready(self.url, web)
        return web

    def start_worker(self, name: str, threads: int = 4) -> Process:
        env = {**self.env, "FOXCTL_RUN_DIR": str(self.log_dir / f"run-{name}")}
        worker = self._start(name, ["worker", "--threads", str(threads)], env)
        wait_for_log(worker, "worker started")
        return worker

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        process = Process(name, args, env, self.log_dir)
        self.processes.append(process)
        return process

    def stop(self) -> dict[str, int]:
        codes = {p.name: p.terminate() for p in self.processes if p.popen.returncode is None}
        self.http.close()
        self.db.dispose()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in self.processes)

    # -- API -----------------------------------------------------------------------------

    def session(self, busy_policy: str = "enqueue") -> str:
        self.http.post("/api/agents", json={"name": "e2e", "role": "coder"})
        response = self.http.post(
            "/api/sessions", json={"agent_id": "e2e", "busy_policy": busy_policy}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def post(self, session_id: str, content: str) -> dict[str, Any]:
        response = self.http.post(f"/api/sessions/{session_id}/messages", json={"content": content})
        assert response.status_code == 202, response.text
        return dict(response.json())

    def wait_for_turns(self, turn_ids: list[str], timeout_s: float = 60) -> list[Turn]:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.db.read() as session:
                turns = list(session.exec(select(Turn).where(col(Turn.id).in_(turn_ids))))
            if all(t.status in ("succeeded", "failed", "cancelled") for t in turns):
                return turns
            if time.monotonic() > deadline:
                pending = [t.id for t in turns if t.status in ("queued", "running")]
                raise AssertionError(f"turns still pending: {pending}\n{self.logs()}")
            time.sleep(0.1)

    def assistant_replies(self, turn_id: str) -> int:
        with self.db.read() as session:
            rows = session.exec(
                select(Message).where(Message.turn_id == turn_id).where(Message.role == "assistant")
            ).all()
        return len(rows)


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
def cluster_db_env(request: pytest.FixtureRequest, sqlite_env: dict[str, str]) -> dict[str, str]:
    """Each driver, plus PostgreSQL behind PgBouncer in transaction pooling mode."""
    if request.param == "sqlite":
        return sqlite_env
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        return {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": dsn}
    dsn = request.getfixturevalue("pgbouncer_dsn")
    return {
        **sqlite_env,
        "FOXCTL_DB_DRIVER": "postgres",
        "FOXCTL_POSTGRES_DSN": dsn,
        "FOXCTL_POSTGRES_PGBOUNCER": "true",
    }


@pytest.fixture
def cluster(
    cluster_db_env: dict[str, str], redis_url: str, fake_model: FakeOpenAI, tmp_path: Path
) -> Iterator[Cluster]:
    env = {
        **cluster_db_env,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_LEASE_TTL_S": str(LEASE_TTL_S),
        "FOXCTL_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
        "FOXCTL_LOG_FORMAT": "json",
        "FOXCTL_LOG_LEVEL": "info",
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
    }
    running = Cluster(env, tmp_path)
    yield running
    running.stop()
    assert "database is locked" not in running.logs()


def test_posted_message_completes_turn(cluster: Cluster) -> None:
    cluster.start_web()
    cluster.start_worker("worker")
    session_id = cluster.session()

    accepted = cluster.post(session_id, "hello there")
    [turn] = cluster.wait_for_turns([accepted["turn_id"]])

    events = cluster.http.get("/api/events", params={"session_id": session_id}).json()["items"]
    messages = cluster.http.get(f"/api/sessions/{session_id}/messages").json()["items"]
    assert turn.status == "succeeded"
    assert [m["content"] for m in messages] == ["hello there", "echo: hello there"]
    assert [e["type"] for e in events] == [
        "message.created",
        "turn.queued",
        "turn.started",
        "model.called",
        "message.created",
        "turn.succeeded",
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]


def test_processes_stop_cleanly_on_sigterm(cluster: Cluster) -> None:
    cluster.start_web()
    cluster.start_worker("worker")
    session_id = cluster.session()
    cluster.wait_for_turns([cluster.post(session_id, "hi")["turn_id"]])

    codes = cluster.stop()

    assert codes == {"web": 0, "worker": 0}


def test_two_workers_keep_one_turn_per_session_in_order(
    cluster: Cluster, fake_model: FakeOpenAI
) -> None:
    cluster.start_web()
    cluster.start_worker("worker-a")
    cluster.start_worker("worker-b")
    sessions = [cluster.session() for _ in range(5)]
    posted: dict[str, list[str]] = {s: [] for s in sessions}

    for round_number in range(10):
        for index, session_id in enumerate(sessions):
            accepted = cluster.post(session_id, f"sleep:0.02 s{index}/m{round_number}")
            posted[session_id].append(accepted["turn_id"])
    turns = cluster.wait_for_turns([t for ids in posted.values() for t in ids])

    by_id = {t.id: t for t in turns}
    assert all(t.status == "succeeded" for t in turns), cluster.logs()
    assert max(fake_model.max_concurrency.values()) == 1
    for turn_ids in posted.values():
        ordered = [by_id[t] for t in turn_ids]
        assert [t.number for t in ordered] == list(range(1, 11))
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.finished_at is not None and later.started_at is not None
            assert earlier.finished_at <= later.started_at
        assert all(cluster.assistant_replies(t) == 1 for t in turn_ids)
    worked = {p.name for p in cluster.processes if "turn succeeded" in p.output()}
    assert worked == {"worker-a", "worker-b"}


def test_killed_worker_turn_finishes_elsewhere_once(
    cluster: Cluster, fake_model: FakeOpenAI
) -> None:
    cluster.start_web()
    workers = [cluster.start_worker("worker-a"), cluster.start_worker("worker-b")]
    session_id = cluster.session()
    turn_id = cluster.post(session_id, "sleep:2 s0/slow")["turn_id"]
    _wait_for(lambda: len(fake_model.calls) == 1, cluster)
    holder_pid = _wait_for_holder(cluster, session_id)
    [victim] = [w for w in workers if w.owns(holder_pid)]

    victim.kill()
    killed_at = time.monotonic()
    [turn] = cluster.wait_for_turns([turn_id])
    recovered_s = time.monotonic() - killed_at

    assert turn.status == "succeeded"
    assert turn.attempts == 2
    assert cluster.assistant_replies(turn_id) == 1
    # Lease expiry, one reconcile pass, then the model's 2 s reply, plus slack.
    assert recovered_s < LEASE_TTL_S + RECONCILE_INTERVAL_S + 2 + 5


def test_flushed_broker_loses_no_message(cluster: Cluster, redis_url: str) -> None:
    cluster.start_web()
    session_id = cluster.session()
    turn_ids = [cluster.post(session_id, f"message {n}")["turn_id"] for n in range(5)]
    queued = redis.Redis.from_url(redis_url).llen("dramatiq:turns")

    redis.Redis.from_url(redis_url).flushdb()
    cluster.start_worker("worker")
    turns = cluster.wait_for_turns(turn_ids)

    assert queued == 5
    assert [t.status for t in turns] == ["succeeded"] * 5
    assert all(cluster.assistant_replies(t) == 1 for t in turn_ids)


def _wait_for(condition: Callable[[], bool], cluster: Cluster, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met\n{cluster.logs()}"
        time.sleep(0.05)


def _wait_for_holder(cluster: Cluster, session_id: str, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with cluster.db.read() as session:
            lease = session.get(SessionLease, session_id)
        if lease is not None and lease.holder:
            match = re.search(r":(\d+)/", lease.holder)
            assert match, lease.holder
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no worker claimed the session\n{cluster.logs()}")


def test_worker_survives_a_repeated_sigterm(
    sqlite_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """Procfile runners signal the whole group, and Dramatiq's main process forwards a
    second SIGTERM to its worker process, which must not make it exit at once."""
    env = {**sqlite_env, "FOXCTL_BROKER_URL": redis_url}
    assert run_cli(["migrate"], env).returncode == 0
    worker = Process("worker", ["worker", "--queues", "turns", "--threads", "2"], env, tmp_path)
    wait_for_log(worker, "worker started")

    main_pid = worker.popen.pid
    children = Path(f"/proc/{main_pid}/task/{main_pid}/children").read_text().split()
    # The worker process gets its copy first, then Dramatiq's main process forwards one,
    # as when a Procfile runner signals the group. They are sent apart so they cannot merge.
    os.kill(int(children[0]), signal.SIGTERM)
    time.sleep(0.2)
    os.kill(main_pid, signal.SIGTERM)
    code = worker.popen.wait(30)
    worker.terminate()

    assert code == 0, worker.output()
    assert "worker stopped" in worker.output()
    assert "Killing worker process" not in worker.output()
