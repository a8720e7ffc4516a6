"""Fixtures: settings on a temporary SQLite file, real PostgreSQL and Redis, a fake model.

Tests that need PostgreSQL or Redis skip when the service is missing, except in CI
(``CI=true``), where a missing service fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from shared.db import Database, make_engine
from shared.migrate import upgrade
from shared.settings import Settings, load_settings
from tests.fakes.openai_server import FakeOpenAI

POSTGRES_ADMIN_DSN = os.environ.get(
    "FOXCTL_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FOXCTL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(name: str, error: Exception) -> None:
    message = f"{name} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: services must run; .ci/run starts them)")
    pytest.skip(message)


@pytest.fixture
def fake_model() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "FOXCTL_DB_DRIVER": "sqlite",
        "FOXCTL_STORAGE_ROOT": str(tmp_path / "data"),
        "FOXCTL_RUN_DIR": str(tmp_path / "run"),
        "FOXCTL_LOG_FORMAT": "console",
    }


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        with psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=3):
            pass
    except psycopg.OperationalError as error:
        service_missing("PostgreSQL", error)
    return POSTGRES_ADMIN_DSN


@pytest.fixture
def postgres_dsn(postgres_server: str) -> Iterator[str]:
    """Create an empty database for one test and drop it afterwards."""
    name = f"foxctl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_server.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pgbouncer_dsn(postgres_dsn: str) -> Iterator[str]:
    """Put PgBouncer in transaction pooling mode in front of a fresh test database."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        service_missing("PgBouncer", FileNotFoundError(binary))
    # PgBouncer refuses to run as root and then reads its files as the postgres user,
    # so they live in a world-readable directory instead of pytest's private tmp_path.
    workdir = Path(tempfile.mkdtemp(prefix="foxctl-pgbouncer-"))
    workdir.chmod(0o777)
    port = _free_port()
    user = postgres_dsn.split("://", 1)[1].split("@", 1)[0]
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir}/users.txt\n"
        "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
        f"logfile = {workdir}/pgbouncer.log\n"
    )
    for path in workdir.iterdir():
        path.chmod(0o666)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    _wait_for_postgres(dsn, process, workdir / "pgbouncer.log")
    yield dsn
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_postgres(dsn: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=1):
                return
        except psycopg.OperationalError as error:
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                service_missing("PgBouncer", RuntimeError(f"{error}\n{text}"))
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError as error:
        service_missing("Redis", error)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def db_env(request: pytest.FixtureRequest, sqlite_env: dict[str, str]) -> dict[str, str]:
    """Environment for each database driver; the postgres case gets a fresh database."""
    if request.param == "sqlite":
        return sqlite_env
    dsn = request.getfixturevalue("postgres_dsn")
    return {**sqlite_env, "FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": dsn}


def make_settings(env: dict[str, str], **overrides: Any) -> Settings:
    return load_settings(env, **overrides)


@pytest.fixture
def settings(db_env: dict[str, str]) -> Settings:
    return make_settings(db_env, lease_ttl_s=5.0)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(make_engine(settings))
    upgrade(db.engine)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Run moto's S3-compatible server on loopback for the test session; yield its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client for the loopback server, with fake credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="foxctl-test",
        aws_secret_access_key="foxctl-test",
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """Create an empty bucket for one test."""
    name = f"foxctl-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name
