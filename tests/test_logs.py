"""Logs of real processes: JSON lines with the ids bound, and no secret anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_receiver import OtlpReceiver
from tests.test_e2e import Cluster

pytestmark = pytest.mark.slow

API_KEY = "sk-planted-key-5f1e9c"
BODY = "planted body 7d3a2b, do not log me"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Return the lines of ``text`` that are JSON objects."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        lines.append(json.loads(line))
    return lines


def test_logs_carry_ids_and_no_secrets(
    sqlite_env: dict[str, str], redis_url: str, fake_model: FakeOpenAI, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()
    obs_dir = tmp_path / "obs"
    env = {
        **sqlite_env,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_LLM_API_KEY": API_KEY,
        "FOXCTL_LOG_FORMAT": "json",
        "FOXCTL_LOG_LEVEL": "debug",
        "FOXCTL_OBS_DIR": str(obs_dir),
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
    }
    cluster = Cluster(env, tmp_path)
    bearer = str(cluster.http.headers["Authorization"]).removeprefix("Bearer ")
    try:
        cluster.start_web()
        cluster.start_worker("worker")
        session_id = cluster.session()
        accepted = cluster.post(session_id, f"tool:fs_list_dir {BODY}")
        [turn] = cluster.wait_for_turns([accepted["turn_id"]])
    finally:
        cluster.stop()
        receiver.stop()

    stdout = cluster.logs()
    files = {path.name: path.read_text() for path in obs_dir.glob("*.ndjson*")}
    everything = stdout + "".join(files.values())
    web_lines = json_lines(cluster.processes[0].output())
    worker_lines = json_lines(cluster.processes[1].output())
    [accepted_line] = [line for line in web_lines if line["event"] == "message accepted"]
    [succeeded_line] = [line for line in worker_lines if line["event"] == "turn succeeded"]
    assert turn.status == "succeeded"
    assert BODY in fake_model.calls[0].content
    assert API_KEY not in everything
    assert bearer not in everything
    assert "planted body" not in everything
    assert {"web", "worker"} <= {name.split("-")[0] for name in files}
    assert all(json_lines(text) for text in files.values())
    for line in (accepted_line, succeeded_line):
        assert {"timestamp", "level", "logger", "process", "event"} <= line.keys()
        assert line["session_id"] == session_id
        assert line["turn_id"] == turn.id
        assert line["message_id"] == accepted["message_id"]
        assert len(line["trace_id"]) == 32
        assert len(line["span_id"]) == 16
    assert "request_id" in accepted_line
    assert succeeded_line["trace_id"] == accepted_line["trace_id"]
    assert succeeded_line["span_id"] != accepted_line["span_id"]


def test_console_traceback_hides_locals(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = """
import logging
from shared.logging import configure_logging
from shared.settings import load_settings

configure_logging(load_settings({"FOXCTL_LOG_FORMAT": "console"}), process="test")

def handle(token):
    raise RuntimeError("boom")

try:
    handle("fox_planted-token-0c4d")
except RuntimeError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env={"FOXCTL_STORAGE_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "RuntimeError: boom" in result.stdout
    assert "line 9, in handle" in result.stdout
    assert "fox_planted-token-0c4d" not in result.stdout + result.stderr
