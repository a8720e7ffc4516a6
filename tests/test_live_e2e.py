"""Live events across two web replicas, fanned out through Redis, with resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from shared.auth.service import create_token
from shared.db import Database, make_engine
from shared.settings import load_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, free_port, run_cli, wait_for_log, wait_until_ready

pytestmark = pytest.mark.slow


class Replicas:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.processes: list[Process] = []
        assert run_cli(["migrate"], env).returncode == 0
        database = Database(make_engine(load_settings(env)))
        with database.write() as db:
            _, self.token = create_token(db, "live")
        database.dispose()
        self.ports = [self._start_web(name, log_dir) for name in ("web-a", "web-b")]
        worker = Process(
            "worker",
            ["worker", "--threads", "2"],
            {**env, "FOXCTL_RUN_DIR": str(log_dir / "run-worker")},
            log_dir,
        )
        self.processes.append(worker)
        wait_for_log(worker, "worker started")
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def _start_web(self, name: str, log_dir: Path) -> int:
        port = free_port()
        env = {
            **self.env,
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
            "FOXCTL_RUN_DIR": str(log_dir / f"run-{name}"),
        }
        process = Process(name, ["web", "serve"], env, log_dir)
        self.processes.append(process)
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        return port

    def url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.ports[replica]}"

    def socket(self, replica: int, session_id: str, after: int | None = None) -> ClientConnection:
        query = "" if after is None else f"?after={after}"
        uri = f"ws://127.0.0.1:{self.ports[replica]}/ws/console/{session_id}{query}"
        return connect(uri, additional_headers=self.headers, open_timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in self.processes)


@pytest.fixture
def replicas(
    postgres_dsn: str,
    redis_url: str,
    fake_model: FakeOpenAI,
    sqlite_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Replicas]:
    env = {
        **sqlite_env,
        "FOXCTL_DB_DRIVER": "postgres",
        "FOXCTL_POSTGRES_DSN": postgres_dsn,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_CONSOLE_TOKEN_SECRET": "test-secret-for-both-replicas",
        "FOXCTL_LOG_FORMAT": "json",
    }
    running = Replicas(env, tmp_path)
    yield running
    for process in running.processes:
        process.terminate()


def stored_events(replicas: Replicas, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{replicas.url(0)}/api/events",
        headers=replicas.headers,
        params={"session_id": session_id, "limit": 500},
    )
    return list(response.json()["items"])


def events_until(
    socket: ClientConnection, final_turn: str, timeout_s: float = 30
) -> list[dict[str, Any]]:
    """Collect event frames until ``final_turn`` succeeds."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = json.loads(socket.recv(timeout=deadline - time.monotonic()))
        if frame["type"] != "event":
            continue
        events.append(frame["event"])
        event = frame["event"]
        if event.get("type") == "turn.succeeded" and event.get("turn_id") == final_turn:
            return events
    raise AssertionError(f"turn {final_turn} never succeeded; got {events}")


def persisted_seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events if "seq" in e]


def test_viewers_on_both_replicas_see_every_event(replicas: Replicas) -> None:
    session_id = _session(replicas)
    with (
        replicas.socket(0, session_id, after=0) as on_a,
        replicas.socket(1, session_id, after=0) as on_b,
    ):
        turn_id = _post(replicas, 1, session_id, "hello from b")

        seen_a = events_until(on_a, turn_id)
        seen_b = events_until(on_b, turn_id)

    stored = [e["seq"] for e in stored_events(replicas, session_id)]
    assert persisted_seqs(seen_a) == stored, replicas.logs()
    assert persisted_seqs(seen_b) == stored


def test_resume_on_other_replica_has_no_gap(replicas: Replicas) -> None:
    session_id = _session(replicas)
    with replicas.socket(0, session_id, after=0) as first:
        turn_id = _post(replicas, 0, session_id, "sleep:1 take your time")
        before: list[dict[str, Any]] = []
        while not any(e.get("type") == "turn.started" for e in before):
            frame = json.loads(first.recv(timeout=20))
            if frame["type"] == "event":
                before.append(frame["event"])
    last = persisted_seqs(before)[-1]

    with replicas.socket(1, session_id, after=last) as second:
        after = events_until(second, turn_id)

    combined = persisted_seqs(before) + persisted_seqs(after)
    stored = [e["seq"] for e in stored_events(replicas, session_id)]
    assert combined == stored, replicas.logs()
    assert len(set(combined)) == len(combined)


def _session(replicas: Replicas) -> str:
    with httpx.Client(base_url=replicas.url(0), headers=replicas.headers) as http:
        http.post("/api/agents", json={"name": "live", "role": "coder"})
        return str(http.post("/api/sessions", json={"agent_id": "live"}).json()["id"])


def _post(replicas: Replicas, replica: int, session_id: str, content: str) -> str:
    response = httpx.post(
        f"{replicas.url(replica)}/api/sessions/{session_id}/messages",
        headers=replicas.headers,
        json={"content": content},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["turn_id"])


def test_sigterm_closes_sockets_with_1012(replicas: Replicas) -> None:
    from websockets.exceptions import ConnectionClosed

    session_id = _session(replicas)
    web_a = replicas.processes[0]
    socket = replicas.socket(0, session_id)
    turn_id = _post(replicas, 1, session_id, "sleep:1 keep working")

    web_a.popen.terminate()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            socket.recv(timeout=20)
    exit_code = web_a.popen.wait(30)
    deadline = time.monotonic() + 30
    while True:
        turn = httpx.get(f"{replicas.url(1)}/api/turns/{turn_id}", headers=replicas.headers)
        if turn.json()["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
    assert exit_code == 0
    assert turn.json()["status"] == "succeeded"
