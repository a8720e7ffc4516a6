"""Maintenance jobs: session cleanup, the stale-turn reaper, chat update pruning, job runs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

from shared.cas.stores import FileArtifactStore, put_object
from shared.chat.models import ChatUpdate
from shared.db import Database
from shared.errors import InvalidInputError
from shared.jobs.catalog import record_job
from shared.sessions.models import AgentSession
from shared.settings import Settings
from shared.turns.models import Turn
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from tests.processes import run_cli
from workers.maintenance import execute_run
from workers.scheduler import maintenance_jobs


@pytest.fixture
def foxctl(
    settings: Settings, database: Database, fake_model: FakeOpenAI, tmp_path: Path
) -> Iterator[Harness]:
    harness = Harness(settings, database, fake_model.base_url, tmp_path)
    harness.create_agent()
    yield harness


def age_sessions(db: Database, days: int) -> None:
    table = AgentSession.__table__  # type: ignore[attr-defined]
    with db.write() as session:
        session.exec(update(table).values(updated_at=datetime.now(UTC) - timedelta(days=days)))


def run_job(db: Database, name: str, **params: object) -> dict:
    with db.write() as session:
        run = record_job(session, name, params, "test")
    finished = execute_run(db, run.id)
    assert finished is not None and finished.error is None, finished
    return finished.result


def test_cleanup_deletes_old_ended_sessions_only(foxctl: Harness) -> None:
    done = foxctl.create_session()
    foxctl.post(done, "hello")
    foxctl.run_pending()
    busy = foxctl.create_session()
    foxctl.post(busy, "still queued")
    age_sessions(foxctl.db, days=40)
    young = foxctl.create_session()

    result = run_job(foxctl.db, "cleanup_sessions", older_than="30d")

    assert result == {"matched": 1, "deleted": 1, "dry_run": False}
    assert foxctl.call("GET", f"/api/sessions/{done}").status_code == 404
    assert foxctl.call("GET", f"/api/sessions/{busy}").status_code == 200
    assert foxctl.call("GET", f"/api/sessions/{young}").status_code == 200


def test_cleanup_dry_run_deletes_nothing(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    age_sessions(foxctl.db, days=40)

    result = run_job(
        foxctl.db, "cleanup_sessions", older_than="30d", dry_run=True, statuses=["empty"]
    )

    assert result == {"matched": 1, "deleted": 0, "dry_run": True}
    assert foxctl.call("GET", f"/api/sessions/{session_id}").status_code == 200


def test_cleanup_filters_by_status(foxctl: Harness) -> None:
    failed = foxctl.create_session()
    foxctl.post(failed, "status:500 break")
    foxctl.run_pending()
    age_sessions(foxctl.db, days=40)

    kept = run_job(foxctl.db, "cleanup_sessions", older_than="30d", statuses=["ok"])
    removed = run_job(foxctl.db, "cleanup_sessions", older_than="30d", statuses=["error"])

    assert kept["deleted"] == 0
    assert removed["deleted"] == 1


def test_reaper_fails_abandoned_running_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "hello").json["turn_id"]
    table = Turn.__table__  # type: ignore[attr-defined]
    with foxctl.db.write() as db:
        db.exec(
            update(table).values(
                status="running", started_at=datetime.now(UTC) - timedelta(hours=3)
            )
        )

    result = run_job(foxctl.db, "reap_turns", stale_after="1h")

    assert result == {"failed_turns": [turn_id]}
    assert foxctl.turn(turn_id)["status"] == "failed"


def store_updates(db: Database, ages_days: dict[str, float]) -> None:
    now = datetime.now(UTC)
    with db.write() as session:
        for delivery_id, days in ages_days.items():
            received_at = now - timedelta(days=days)
            session.add(
                ChatUpdate(platform="telegram", delivery_id=delivery_id, received_at=received_at)
            )


def stored_updates(db: Database) -> list[str]:
    with db.read() as session:
        return sorted(u.delivery_id for u in session.exec(select(ChatUpdate)))


def test_prune_deletes_old_chat_updates_only(database: Database) -> None:
    store_updates(database, {"old": 10, "older": 40, "recent": 6, "new": 0})

    result = run_job(database, "prune_chat_updates", older_than="7d")

    assert result == {"matched": 2, "deleted": 2, "dry_run": False}
    assert stored_updates(database) == ["new", "recent"]


def test_prune_dry_run_deletes_nothing(database: Database) -> None:
    store_updates(database, {"old": 10, "new": 0})

    result = run_job(database, "prune_chat_updates", older_than="7d", dry_run=True)

    assert result == {"matched": 1, "deleted": 0, "dry_run": True}
    assert stored_updates(database) == ["new", "old"]


def test_scheduler_prunes_with_the_retention(settings: Settings) -> None:
    configured = settings.model_copy(update={"chat_update_retention": "3d"})

    jobs = {job.name: job for job in maintenance_jobs(configured)}

    assert jobs["prune_chat_updates"].params == {"older_than": "3d"}
    assert jobs["prune_chat_updates"].crontab == settings.schedule_chat_update_prune


def test_unknown_job_parameter_is_refused(foxctl: Harness) -> None:
    with (
        pytest.raises(InvalidInputError, match="takes no parameter 'colour'"),
        foxctl.db.write() as db,
    ):
        record_job(db, "reap_turns", {"colour": "red"}, "test")


def test_bad_duration_is_refused(foxctl: Harness) -> None:
    with pytest.raises(InvalidInputError, match="invalid duration 'soon'"), foxctl.db.write() as db:
        record_job(db, "cleanup_sessions", {"older_than": "soon"}, "test")


def test_finished_run_is_not_run_again(foxctl: Harness) -> None:
    with foxctl.db.write() as db:
        run = record_job(db, "reap_turns", {}, "test")
    execute_run(foxctl.db, run.id)

    assert execute_run(foxctl.db, run.id) is None


def test_jobs_api_lists_runs_newest_first(foxctl: Harness) -> None:
    run_job(foxctl.db, "reap_turns")
    time.sleep(0.002)
    run_job(foxctl.db, "cleanup_sessions", older_than="1d")

    listed = foxctl.call("GET", "/api/jobs").json["items"]

    assert [r["name"] for r in listed] == ["cleanup_sessions", "reap_turns"]
    assert listed[0]["status"] == "succeeded"
    assert listed[0]["result"]["dry_run"] is False


def test_cli_cleanup_runs_in_process(sqlite_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], sqlite_env).returncode == 0

    result = run_cli(["sessions", "cleanup", "--older-than", "7d", "--dry-run"], sqlite_env)
    listed = run_cli(["jobs", "list"], sqlite_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"deleted": 0, "dry_run": true, "matched": 0}'
    assert "\tcleanup_sessions\tcli\tsucceeded\t" in listed.stdout


def test_cli_cleanup_rejects_bad_duration(sqlite_env: dict[str, str]) -> None:
    run_cli(["migrate"], sqlite_env)

    result = run_cli(["sessions", "cleanup", "--older-than", "soon"], sqlite_env)

    assert result.returncode == 1
    assert "invalid duration 'soon'" in result.stderr


def test_cli_cas_gc_reports_orphans(sqlite_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], sqlite_env).returncode == 0
    store = FileArtifactStore(Path(sqlite_env["FOXCTL_STORAGE_ROOT"]) / "cas")
    digest = put_object(store, [b"bytes with no row"]).digest
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(store.path_of(digest), (two_days_ago, two_days_ago))

    dry = run_cli(["cas", "gc", "--older-than", "24h", "--dry-run"], sqlite_env)
    real = run_cli(["cas", "gc", "--older-than", "24h"], sqlite_env)

    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["orphans_deleted"] == 1
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["orphans_deleted"] == 1
    assert report["orphans_deleted_bytes"] == 17
    assert report["orphans_failed"] == 0
    assert store.exists(digest) is False


def test_cli_prunes_chat_updates(sqlite_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], sqlite_env).returncode == 0

    result = run_cli(["chat", "prune-updates", "--older-than", "7d", "--dry-run"], sqlite_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"deleted": 0, "dry_run": true, "matched": 0}'


def test_cli_refuses_short_chat_update_retention(sqlite_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], sqlite_env).returncode == 0

    result = run_cli(["chat", "prune-updates", "--older-than", "1h"], sqlite_env)

    errors = [line for line in result.stderr.splitlines() if line.startswith("foxctl: error")]
    assert result.returncode == 1
    assert errors == [
        "foxctl: error: older_than='1h' is shorter than 24h, the longest time Telegram "
        "redelivers an update; use 24h or more"
    ]
