"""The foxctl command line, run as real processes."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, free_port, run_cli, wait_until_ready

pytestmark = pytest.mark.slow


def start_up(env: dict[str, str], log_dir: Path, name: str = "up") -> tuple[Process, str]:
    port = free_port()
    process = Process(name, ["up", "--port", str(port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process)
    return process, url


def wait_for_turn(url: str, turn_id: str, headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + 30
    while True:
        turn = httpx.get(f"{url}/api/turns/{turn_id}", headers=headers or {}).json()
        if turn["status"] not in ("queued", "running"):
            return dict(turn)
        assert time.monotonic() < deadline, turn
        time.sleep(0.05)


@pytest.fixture
def up_env(sqlite_env: dict[str, str], fake_model: FakeOpenAI) -> dict[str, str]:
    return {
        **sqlite_env,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_RECONCILE_INTERVAL_S": "0.5",
        "FOXCTL_LEASE_TTL_S": "2",
    }


def test_up_answers_message_and_stops_cleanly(up_env: dict[str, str], tmp_path: Path) -> None:
    up, url = start_up(up_env, tmp_path)
    httpx.post(f"{url}/api/agents", json={"name": "local", "role": "coder"})
    session_id = httpx.post(f"{url}/api/sessions", json={"agent_id": "local"}).json()["id"]

    accepted = httpx.post(f"{url}/api/sessions/{session_id}/messages", json={"content": "hi"})
    turn = wait_for_turn(url, accepted.json()["turn_id"])
    code = up.terminate()

    assert accepted.status_code == 202
    assert turn["status"] == "succeeded"
    assert code == 0
    assert "authentication is OFF" in up.output()


def test_up_recovers_turn_after_crash(
    up_env: dict[str, str], fake_model: FakeOpenAI, tmp_path: Path
) -> None:
    up, url = start_up(up_env, tmp_path)
    httpx.post(f"{url}/api/agents", json={"name": "local", "role": "coder"})
    session_id = httpx.post(f"{url}/api/sessions", json={"agent_id": "local"}).json()["id"]
    turn_id = httpx.post(
        f"{url}/api/sessions/{session_id}/messages", json={"content": "sleep:1 slow"}
    ).json()["turn_id"]
    deadline = time.monotonic() + 10
    while not fake_model.calls:
        assert time.monotonic() < deadline, up.output()
        time.sleep(0.02)

    up.kill()  # the in-process broker loses the message with the process
    again, url = start_up(up_env, tmp_path, name="up-again")
    turn = wait_for_turn(url, turn_id)
    messages = httpx.get(f"{url}/api/sessions/{session_id}/messages").json()["items"]
    again.terminate()

    assert turn["status"] == "succeeded"
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_up_refuses_public_bind_without_auth(up_env: dict[str, str]) -> None:
    result = run_cli(["up", "--host", "0.0.0.0"], up_env)

    assert result.returncode != 0
    assert "refusing to bind 0.0.0.0 with authentication off" in result.stderr


def test_send_waits_for_reply(up_env: dict[str, str], tmp_path: Path) -> None:
    up, url = start_up(up_env, tmp_path)
    httpx.post(f"{url}/api/agents", json={"name": "local", "role": "coder"})
    session_id = httpx.post(f"{url}/api/sessions", json={"agent_id": "local"}).json()["id"]

    result = run_cli(["send", session_id, "ping", "--wait"], {**up_env, "FOXCTL_API_URL": url})
    up.terminate()

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "echo: ping"


def test_send_to_missing_session_fails_in_one_line(up_env: dict[str, str], tmp_path: Path) -> None:
    up, url = start_up(up_env, tmp_path)

    result = run_cli(["send", "ses_nope", "ping"], {**up_env, "FOXCTL_API_URL": url})
    up.terminate()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "HTTP 404" in result.stderr
    assert "ses_nope" in result.stderr


def test_tokens_and_agents_commands(sqlite_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], sqlite_env).returncode == 0

    created = run_cli(["tokens", "create", "--name", "ci"], sqlite_env)
    listed = run_cli(["tokens", "list"], sqlite_env)
    revoked = run_cli(["tokens", "revoke", "ci"], sqlite_env)
    agent = run_cli(["agents", "create", "--name", "bot", "--role", "planner"], sqlite_env)
    agents = run_cli(["agents", "list"], sqlite_env)

    token = created.stdout.strip()
    assert token.startswith("fox_")
    assert token not in listed.stdout
    assert "\tci\t" in listed.stdout
    assert revoked.returncode == 0
    assert "revoked" in run_cli(["tokens", "list"], sqlite_env).stdout
    assert agent.stdout.startswith("agt_")
    assert "\tbot\tplanner\t" in agents.stdout


def test_cli_bad_input_is_one_line_error(sqlite_env: dict[str, str]) -> None:
    run_cli(["migrate"], sqlite_env)
    run_cli(["agents", "create", "--name", "bot", "--role", "coder"], sqlite_env)

    duplicate = run_cli(["agents", "create", "--name", "bot", "--role", "coder"], sqlite_env)
    turso = run_cli(["migrate"], {**sqlite_env, "FOXCTL_DB_DRIVER": "turso"})

    assert duplicate.returncode == 1
    assert duplicate.stderr.startswith("foxctl: error: an agent named 'bot' exists already")
    assert turso.returncode == 2
    assert turso.stderr.count("\n") == 1
    assert "legacy" in turso.stderr


def test_commands_refuse_unmigrated_database(sqlite_env: dict[str, str]) -> None:
    result = run_cli(["tokens", "list"], sqlite_env)

    assert result.returncode == 1
    assert "run `foxctl migrate` first" in result.stderr


def test_worker_refuses_in_process_broker(sqlite_env: dict[str, str]) -> None:
    result = run_cli(["worker"], sqlite_env)

    assert result.returncode == 1
    assert "FOXCTL_BROKER_URL is memory://" in result.stderr


def test_migrate_from_several_pods_at_once(postgres_dsn: str, sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": postgres_dsn}

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_cli(["migrate"], env), range(3)))

    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    head = f"database at revision {head_revision_id()}"
    assert all(head in r.stdout for r in results), [r.stdout for r in results]


def head_revision_id() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "shared:migrations")
    return ScriptDirectory.from_config(config).get_current_head()


# -- probes and drain ------------------------------------------------------------------


@pytest.fixture
def web(sqlite_env: dict[str, str], tmp_path: Path) -> tuple[Process, str, dict[str, str]]:
    port = free_port()
    env = {**sqlite_env, "PORT": str(port), "WEB_CONCURRENCY": "2", "FOXCTL_AUTH": "off"}
    assert run_cli(["migrate"], env).returncode == 0
    process = Process("web", ["web", "serve"], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process)
    yield process, url, env
    process.terminate()


def test_health_probes_local_web(web: tuple[Process, str, dict[str, str]]) -> None:
    _, _, env = web

    alive = run_cli(["health"], env)
    ready = run_cli(["health", "--ready"], env)

    assert alive.returncode == 0, alive.stderr
    assert ready.returncode == 0, ready.stderr


def test_health_fails_with_nothing_running(sqlite_env: dict[str, str]) -> None:
    result = run_cli(["health"], {**sqlite_env, "PORT": str(free_port())})

    assert result.returncode == 1
    assert "no web process" in result.stderr


def test_health_reads_worker_heartbeat(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    from shared.heartbeat import HeartbeatWriter

    env = {**sqlite_env, "PORT": str(free_port())}
    assert run_cli(["migrate"], env).returncode == 0
    beat = HeartbeatWriter(Path(env["FOXCTL_RUN_DIR"]), "worker")
    beat.start()

    alive = run_cli(["health"], env)
    ready = run_cli(["health", "--ready"], env)
    beat.stopping = True
    beat.write()
    stopping = run_cli(["health", "--ready"], env)
    beat.stop()

    assert alive.returncode == 0, alive.stderr
    assert ready.returncode == 0, ready.stderr
    assert stopping.returncode == 1
    assert "stopping" in stopping.stderr


def test_drain_makes_web_unready_and_refuses_turns(
    web: tuple[Process, str, dict[str, str]],
) -> None:
    _, url, env = web
    httpx.post(f"{url}/api/agents", json={"name": "a", "role": "coder"})
    session_id = httpx.post(f"{url}/api/sessions", json={"agent_id": "a"}).json()["id"]

    drained = run_cli(["drain", "--timeout", "10"], env)
    ready = httpx.get(f"{url}/readyz")
    posted = httpx.post(f"{url}/api/sessions/{session_id}/messages", json={"content": "x"})
    listed = httpx.get(f"{url}/api/sessions/{session_id}")

    assert drained.returncode == 0, drained.stderr
    assert ready.status_code == 503
    assert ready.json()["checks"]["draining"] != "ok"
    assert posted.status_code == 503
    assert posted.json()["error"]["code"] == "draining"
    assert listed.status_code == 200


def test_up_search_runs_on_its_in_process_worker(up_env: dict[str, str], tmp_path: Path) -> None:
    from tests.fakes.embedding_server import FakeEmbeddingServer
    from tests.index_helpers import python_function, write_tree

    root = tmp_path / "workspace"
    write_tree(
        root,
        {
            "pkg/store.py": python_function("save_record", "record storage"),
            "pkg/retry.py": python_function("schedule_retry", "retry backoff"),
        },
    )
    embeddings = FakeEmbeddingServer(dimension=32).start()
    env = {
        **up_env,
        "FOXCTL_EMBEDDING_PROVIDER": "openai_compat",
        "FOXCTL_EMBEDDING_BASE_URL": embeddings.base_url,
        "FOXCTL_EMBEDDING_MODEL": "fake",
    }
    try:
        port = free_port()
        up = Process("up", ["up", "--port", str(port), "--workspace", str(root)], env, tmp_path)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, up)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/api/index").json()["embedded"] < 2:
            assert time.monotonic() < deadline, up.output()
            time.sleep(0.1)
        indexed = len(embeddings.inputs)

        result = run_cli(
            ["search", "schedule_retry", "--limit", "1"], {**env, "FOXCTL_API_URL": url}
        )
        searched = embeddings.inputs[indexed:]
        code = up.terminate()
    finally:
        embeddings.stop()

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pkg/retry.py:1-")
    assert result.stderr == ""
    # The in-process worker embedded the query; the web side only handed it over.
    assert searched == ["\nschedule_retry"]
    assert code == 0


def test_up_sigterm_ends_sse_streams_promptly(up_env: dict[str, str], tmp_path: Path) -> None:
    up, url = start_up(up_env, tmp_path)
    httpx.post(f"{url}/api/agents", json={"name": "local", "role": "coder"})
    session_id = httpx.post(f"{url}/api/sessions", json={"agent_id": "local"}).json()["id"]

    with httpx.stream("GET", f"{url}/api/sessions/{session_id}/events", timeout=60) as stream:
        lines = stream.iter_lines()
        httpx.post(f"{url}/api/sessions/{session_id}/messages", json={"content": "hi"})
        next(lines)
        started = time.monotonic()
        up.popen.terminate()
        for _ in lines:
            pass
    ended_s = time.monotonic() - started
    code = up.popen.wait(60)
    up.terminate()

    # Without draining on SIGTERM, uvicorn keeps the stream open until its graceful
    # timeout (25 s) and then cancels it with a traceback.
    assert ended_s < 5, up.output()
    assert code == 0
    assert "Exception in ASGI application" not in up.output()


def test_cli_unauthorized_names_token_variable(sqlite_env: dict[str, str]) -> None:
    from tests.fakes.scripted_http import ScriptedServer, json_response

    server = ScriptedServer().start()
    server.push(
        json_response(
            {"error": {"code": "unauthorized", "message": "missing bearer token"}}, status=401
        )
    )
    try:
        result = run_cli(["search", "retry"], {**sqlite_env, "FOXCTL_API_URL": server.base_url})
    finally:
        server.stop()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "HTTP 401: missing bearer token" in result.stderr
    assert "set FOXCTL_API_TOKEN" in result.stderr


def test_cli_html_error_page_stays_one_line(sqlite_env: dict[str, str]) -> None:
    from tests.fakes.scripted_http import ScriptedServer, raw_response

    server = ScriptedServer().start()
    page = b"<html>\n  <body>\n    <h1>502 Bad Gateway</h1>\n  </body>\n</html>\n"
    server.push(raw_response(page, status=502, content_type="text/html"))
    try:
        result = run_cli(["search", "retry"], {**sqlite_env, "FOXCTL_API_URL": server.base_url})
    finally:
        server.stop()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "HTTP 502: <html> <body> <h1>502 Bad Gateway</h1>" in result.stderr


def test_usage_error_is_one_line(sqlite_env: dict[str, str]) -> None:
    result = run_cli(["search", "retry", "--limit", "0"], sqlite_env)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("foxctl: error: Invalid value for '--limit': 0")
    assert "search --help" in result.stderr


def test_up_on_a_taken_port_exits_non_zero(up_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["up", "--port", str(port)], up_env)

    # uvicorn's startup failure status, not an abort from the model-loading thread.
    assert result.returncode == 3, result.stdout + result.stderr
    assert "address already in use" in (result.stdout + result.stderr).lower()
