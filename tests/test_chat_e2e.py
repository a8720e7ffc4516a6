"""Chat adapters end to end: two gunicorn web processes, a worker, PostgreSQL, Redis, a
fake model and a fake platform API, all on loopback.

The same platform delivery reaches both web processes at once, then once more; the
user must see one turn and one reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import func, select

from shared.db import Database, make_engine
from shared.settings import load_settings
from shared.turns.models import Turn
from tests import chat_helpers as h
from tests.fakes.chat_platforms import FakePlatform, PlatformCall
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, free_port, run_cli, wait_for_log, wait_until_ready

pytestmark = pytest.mark.slow


class ChatCluster:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.urls: list[str] = []
        migrated = run_cli(["migrate"], env)
        assert migrated.returncode == 0, migrated.stderr + migrated.stdout
        self.db = Database(make_engine(load_settings(env)))

    def start(self) -> None:
        for name in ("web-a", "web-b"):
            port = free_port()
            env = {
                **self.env,
                "PORT": str(port),
                "WEB_CONCURRENCY": "1",
                "FOXCTL_RUN_DIR": str(self.log_dir / f"run-{name}"),
            }
            args = ["web", "serve", "--chat", "telegram", "--chat", "discord", "--chat", "teams"]
            web = Process(name, args, env, self.log_dir)
            self.processes.append(web)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url, web in zip(self.urls, self.processes, strict=True):
            wait_until_ready(url, web)
        worker_env = {**self.env, "FOXCTL_RUN_DIR": str(self.log_dir / "run-worker")}
        args = ["worker", "--queues", "turns", "--queues", "chat-delivery", "--threads", "4"]
        worker = Process("worker", args, worker_env, self.log_dir)
        self.processes.append(worker)
        wait_for_log(worker, "worker started")
        with httpx.Client() as client:
            with self.db.write() as session:
                from shared.auth.service import create_token

                _, token = create_token(session, "e2e")
            created = client.post(
                f"{self.urls[0]}/api/agents",
                json={"name": "assistant", "role": "coder"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text

    def post_everywhere(self, path: str, body: bytes, headers: dict[str, str]) -> list[int]:
        """POST the same request to both web processes at the same moment."""
        barrier = threading.Barrier(len(self.urls))
        statuses: list[int] = []

        def send(url: str) -> None:
            with httpx.Client(timeout=10) as client:
                barrier.wait()
                statuses.append(client.post(url + path, content=body, headers=headers).status_code)

        threads = [threading.Thread(target=send, args=(url,)) for url in self.urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses

    def post_once(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return httpx.post(self.urls[1] + path, content=body, headers=headers).status_code

    def turns(self) -> int:
        with self.db.read() as session:
            return int(session.exec(select(func.count()).select_from(Turn)).one())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        self.db.dispose()


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    fake = FakePlatform().start()
    fake.jwks = {"keys": [h.jwk("bf", "bf-1")]}
    yield fake
    fake.stop()


def cluster_env(
    postgres_dsn: str, redis_url: str, model: FakeOpenAI, platform: FakePlatform, **extra: str
) -> dict[str, str]:
    return {
        "FOXCTL_DB_DRIVER": "postgres",
        "FOXCTL_POSTGRES_DSN": postgres_dsn,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": model.base_url,
        "FOXCTL_LOG_FORMAT": "json",
        "FOXCTL_CONSOLE_TOKEN_SECRET": "e2e-console-secret",
        "FOXCTL_TELEGRAM_BOT_TOKEN": "123:abc",
        "FOXCTL_TELEGRAM_WEBHOOK_SECRET": h.TELEGRAM_SECRET,
        "FOXCTL_TELEGRAM_API_BASE": platform.base_url,
        "FOXCTL_DISCORD_APPLICATION_ID": "app-1",
        "FOXCTL_DISCORD_PUBLIC_KEY": h.discord_public_hex(),
        "FOXCTL_DISCORD_API_BASE": platform.base_url,
        "FOXCTL_TEAMS_APP_ID": h.TEAMS_APP_ID,
        "FOXCTL_TEAMS_APP_PASSWORD": "teams-password",
        "FOXCTL_TEAMS_OPENID_URL": f"{platform.base_url}/openid",
        "FOXCTL_TEAMS_TOKEN_URL": f"{platform.base_url}/{{tenant}}/token",
        "FOXCTL_CHAT_EDIT_INTERVAL_S": "0.2",
        **extra,
    }


@pytest.fixture
def make_cluster(
    postgres_dsn: str,
    redis_url: str,
    fake_model: FakeOpenAI,
    platform: FakePlatform,
    tmp_path: Path,
) -> Iterator[Callable[..., ChatCluster]]:
    started: list[ChatCluster] = []

    def make(**extra: str) -> ChatCluster:
        env = cluster_env(postgres_dsn, redis_url, fake_model, platform, **extra)
        cluster = ChatCluster(env, tmp_path)
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def wait_for_call(
    platform: FakePlatform,
    match: Callable[[PlatformCall], bool],
    cluster: ChatCluster,
    times: int = 1,
) -> None:
    deadline = time.monotonic() + 60
    while sum(1 for call in list(platform.calls) if match(call)) < times:
        assert time.monotonic() < deadline, f"no such platform call\n{cluster.logs()}"
        time.sleep(0.05)


def telegram_request(update_id: int, text: str) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps(h.telegram_update(update_id, text)).encode()
    headers = {
        "X-Telegram-Bot-Api-Secret-Token": h.TELEGRAM_SECRET,
        "Content-Type": "application/json",
    }
    return "/api/telegram/webhook", body, headers


def discord_request(interaction_id: str, text: str) -> tuple[str, bytes, dict[str, str]]:
    interaction = {
        "type": 2,
        "id": interaction_id,
        "application_id": "app-1",
        "token": f"tok-{interaction_id}",
        "channel_id": "chan-1",
        "data": {"name": "ask", "options": [{"name": "prompt", "type": 3, "value": text}]},
    }
    body = json.dumps(interaction).encode()
    return "/api/discord/interactions", body, h.discord_headers(body)


def teams_request(
    platform: FakePlatform, activity_id: str, text: str
) -> tuple[str, bytes, dict[str, str]]:
    service_url = f"{platform.base_url}/teams/"
    body = json.dumps(h.teams_activity(activity_id, text, service_url=service_url)).encode()
    headers = {
        "Authorization": f"Bearer {h.teams_token(service_url=service_url)}",
        "Content-Type": "application/json",
    }
    return "/api/teams/messages", body, headers


def final_reply(platform: str, text: str) -> Callable[[PlatformCall], bool]:
    def matches(call: PlatformCall) -> bool:
        body = call.body if isinstance(call.body, dict) else {}
        if platform == "telegram":
            return call.path.endswith("/editMessageText") and body.get("text") == text
        if platform == "discord":
            return call.method == "PATCH" and body.get("content") == text
        return call.method == "PUT" and body.get("text") == text

    return matches


@pytest.mark.parametrize("platform_name", ["telegram", "discord", "teams"])
def test_duplicate_delivery_runs_one_turn(
    make_cluster: Callable[..., ChatCluster], platform: FakePlatform, platform_name: str
) -> None:
    cluster = make_cluster()
    requests = {
        "telegram": lambda: telegram_request(77, "hello twice"),
        "discord": lambda: discord_request("int-77", "hello twice"),
        "teams": lambda: teams_request(platform, "act-77", "hello twice"),
    }
    path, body, headers = requests[platform_name]()

    concurrent = cluster.post_everywhere(path, body, headers)
    again = cluster.post_once(path, body, headers)
    wait_for_call(platform, final_reply(platform_name, "echo: hello twice"), cluster)
    time.sleep(1)  # room for a duplicate reply, which must not come

    assert concurrent == [200, 200], cluster.logs()
    assert again == 200
    assert cluster.turns() == 1
    finals = [c for c in platform.calls if final_reply(platform_name, "echo: hello twice")(c)]
    assert len(finals) == 1
    if platform_name == "telegram":
        placeholders = [c for c in platform.calls_to("/sendMessage") if c.body["text"] == "…"]
        assert len(placeholders) == 1
        assert len(platform.calls_to("/sendChatAction")) == 1


def test_rate_limited_reply_arrives_once_after_retry_after(
    make_cluster: Callable[..., ChatCluster], platform: FakePlatform
) -> None:
    # No progressive edits, so the 429 hits the final edit.
    cluster = make_cluster(FOXCTL_CHAT_EDIT_INTERVAL_S="3600")
    platform.fail_next("/editMessageText", retry_after_s=1)
    path, body, headers = telegram_request(88, "slow down")

    status = cluster.post_once(path, body, headers)
    # The refused edit is recorded too; the second one is the retry.
    wait_for_call(platform, final_reply("telegram", "echo: slow down"), cluster, times=2)
    time.sleep(1)  # room for a third edit, which must not come

    assert status == 200
    refused, delivered = platform.calls_to("/editMessageText")
    assert delivered.at - refused.at >= 1.0
    assert delivered.body["text"] == "echo: slow down"
    assert len([c for c in platform.calls_to("/sendMessage") if c.body["text"] == "…"]) == 1
