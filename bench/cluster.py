"""A throwaway foxctl deployment for one benchmark run.

It creates a PostgreSQL database, empties one Redis database, runs ``foxctl migrate``,
creates an API token, starts ``foxctl web serve`` and ``foxctl worker`` as real
processes, and removes all of it on exit.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis

from tests.processes import Process, free_port, run_cli, wait_for_log, wait_until_ready

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Services:
    postgres_admin_dsn: str
    redis_url: str
    #: Extra environment for every foxctl process, such as FOXCTL_POSTGRES_MAX_CONNS.
    env: dict[str, str] = field(default_factory=dict)


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="DSN of a role that may create and drop databases (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="Redis database to use as the broker. It is emptied before and after the run "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the foxctl processes; repeat for several",
    )


def services_from(args: argparse.Namespace) -> Services:
    """Check that both services are on loopback and that the Redis db may be emptied."""
    for url in (args.postgres_admin_dsn, args.redis_url):
        host = urlsplit(url).hostname
        if host not in LOOPBACK_HOSTS:
            raise SystemExit(f"bench: {url!r} is not on loopback; benchmarks run on 127.0.0.1")
    # FLUSHDB empties the whole database: keep off db 0 (the usual default) and db 15
    # (the test suite's).
    redis_db = urlsplit(args.redis_url).path.lstrip("/") or "0"
    if redis_db in ("0", "15"):
        raise SystemExit(f"bench: Redis db {redis_db} is reserved; pass a URL such as .../14")
    env = dict(item.split("=", 1) for item in args.env)
    return Services(args.postgres_admin_dsn, args.redis_url, env)


class BenchCluster:
    """Own a fresh database, a Redis db, the foxctl processes and their log folder."""

    def __init__(self, services: Services, *, env: dict[str, str] | None = None) -> None:
        self._services = services
        self._extra_env = env or {}
        self.database = f"foxctl_bench_{uuid.uuid4().hex[:10]}"
        self.log_dir = Path(tempfile.mkdtemp(prefix="foxctl-bench-"))
        self.processes: list[Process] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    @property
    def dsn(self) -> str:
        base, _, _ = self._services.postgres_admin_dsn.rpartition("/")
        return f"{base}/{self.database}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "FOXCTL_DB_DRIVER": "postgres",
            "FOXCTL_POSTGRES_DSN": self.dsn,
            "FOXCTL_BROKER_URL": self._services.redis_url,
            "FOXCTL_STORAGE_ROOT": str(self.log_dir / "data"),
            "FOXCTL_LOG_FORMAT": "json",
            "FOXCTL_LOG_LEVEL": "info",
            **self._services.env,
            **self._extra_env,
        }

    def __enter__(self) -> BenchCluster:
        self._admin(f'CREATE DATABASE "{self.database}"')
        self._flush_redis()
        try:
            self._cli(["migrate"])
            self.token = self._cli(["tokens", "create", "--name", "bench"]).strip()
        except BaseException:
            self._drop_database()
            raise
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        for process in self.processes:
            process.terminate()
        self._flush_redis()
        self._drop_database()
        if exc_type is None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        else:
            print(f"bench: process logs kept in {self.log_dir}")

    def start_web(self, concurrency: int) -> Process:
        env = {
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(concurrency),
            "FOXCTL_RUN_DIR": str(self.log_dir / "run-web"),
        }
        web = self._start("web", ["web", "serve"], env)
        wait_until_ready(self.url, web, timeout_s=60)
        return web

    def start_worker(
        self, threads: int, *, name: str = "worker", queues: tuple[str, ...] = ("turns",)
    ) -> Process:
        env = {"FOXCTL_RUN_DIR": str(self.log_dir / f"run-{name}")}
        args = ["worker", *(f"--queues={queue}" for queue in queues)]
        args += ["--processes", "1", "--threads", str(threads)]
        worker = self._start(name, args, env)
        wait_for_log(worker, "worker started", timeout_s=60)
        return worker

    def stop(self, process: Process) -> None:
        process.terminate()
        self.processes.remove(process)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def create_sessions(self, count: int) -> list[str]:
        """Create one agent and ``count`` sessions with it through the API."""
        with self.api() as api:
            _expect(api.post("/api/agents", json={"name": "bench", "role": "coder"}), 201)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: self._create_session(), range(count)))

    def post_message(self, api: httpx.Client, session_id: str, content: str) -> str:
        """Post ``content`` to a session and return the id of the queued turn."""
        url = f"/api/sessions/{session_id}/messages"
        response = _expect(api.post(url, json={"content": content}), 202)
        return str(response.json()["turn_id"])

    def connect(self) -> psycopg.Connection[Any]:
        """Open an autocommit connection to the benchmark database."""
        return psycopg.connect(self.dsn, autocommit=True)

    def _create_session(self) -> str:
        with self.api() as api:
            response = _expect(api.post("/api/sessions", json={"agent_id": "bench"}), 201)
        return str(response.json()["id"])

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        process = Process(name, args, {**self.env, **env}, self.log_dir)
        self.processes.append(process)
        return process

    def _cli(self, args: list[str]) -> str:
        result = run_cli(args, self.env)
        if result.returncode != 0:
            raise RuntimeError(f"foxctl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self._services.postgres_admin_dsn, autocommit=True) as admin:
            admin.execute(statement)

    def _drop_database(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _flush_redis(self) -> None:
        client = redis.Redis.from_url(self._services.redis_url)
        try:
            client.flushdb()
        finally:
            client.close()


def _expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} returned "
            f"{response.status_code}, expected {status}: {response.text}"
        )
    return response
