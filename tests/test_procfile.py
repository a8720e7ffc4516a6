"""The Procfile under honcho: release, then every long-running process, end to end.

honcho stops every process as soon as one exits, so the one-shot `release` runs on its
own first, as Procfile platforms do, and `honcho start` then names the others.

On SIGTERM, honcho 2.0 signals each process group (the shell, the foxctl process and its
children) and exits 143; it reports the shell's status, not foxctl's. So the shutdown
checks read each process's own stop message instead of per-process exit codes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.auth.service import create_token
from shared.db import Database, make_engine
from shared.settings import load_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import ROOT, free_port

pytestmark = pytest.mark.slow

LONG_RUNNING = ["web", "worker", "embedding-worker", "maintenance-worker", "scheduler"]
HONCHO = str(Path(sys.executable).parent / "honcho")


def procfile_names() -> list[str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[0] for line in lines if line.strip()]


def honcho_env(postgres_dsn: str, redis_url: str, model: FakeOpenAI, run_dir: Path) -> dict:
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "FOXCTL_DB_DRIVER": "postgres",
        "FOXCTL_POSTGRES_DSN": postgres_dsn,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": model.base_url,
        "FOXCTL_RUN_DIR": str(run_dir),
        "FOXCTL_LOG_FORMAT": "json",
        "FOXCTL_WEB_GRACEFUL_TIMEOUT_S": "10",
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
    }


def wait_ready(url: str, honcho: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert honcho.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"web not ready after 60 s:\n{log.read_text()}")


def test_procfile_lists_every_process() -> None:
    assert procfile_names() == ["release", *LONG_RUNNING]


def test_honcho_runs_procfile_end_to_end(
    postgres_dsn: str, redis_url: str, fake_model: FakeOpenAI, tmp_path: Path
) -> None:
    env = honcho_env(postgres_dsn, redis_url, fake_model, tmp_path / "run")
    port = free_port()
    log = tmp_path / "honcho.log"

    release = subprocess.run(
        [HONCHO, "start", "release"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert release.returncode == 0, release.stdout.decode() + release.stderr.decode()
    database = Database(make_engine(load_settings(env)))
    with database.write() as db:
        _, token = create_token(db, "procfile")
    database.dispose()

    with log.open("wb") as output:
        honcho = subprocess.Popen(
            [HONCHO, "start", "--port", str(port), *LONG_RUNNING],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, honcho, log)
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        client.post("/api/agents", json={"name": "procfile", "role": "coder"})
        session = client.post("/api/sessions", json={"agent_id": "procfile"}).json()["id"]

        accepted = client.post(f"/api/sessions/{session}/messages", json={"content": "hello"})
        turn_id = accepted.json()["turn_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/turns/{turn_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        messages = client.get(f"/api/sessions/{session}/messages").json()["items"]
        client.close()

        honcho.send_signal(signal.SIGTERM)
        code = honcho.wait(45)
    finally:
        if honcho.poll() is None:
            # honcho starts each process in a session of its own, so a SIGKILL to
            # honcho's group would leave them running: SIGTERM lets honcho stop them.
            honcho.send_signal(signal.SIGTERM)
            try:
                honcho.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                honcho.wait(10)

    output_text = log.read_text()
    assert accepted.status_code == 202
    assert [m["content"] for m in messages] == ["hello", "echo: hello"]
    for name in LONG_RUNNING:
        assert f"{name}.1 " in output_text, f"{name} never started:\n{output_text}"
    assert code == 143, output_text
    assert "Shutting down: Master" in output_text
    assert "scheduler stopped" in output_text
    assert "worker stopped" in output_text
