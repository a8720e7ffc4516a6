"""Maintenance jobs: what each does, run in process or by the ``run_job`` actor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from shared.chat.cleanup import prune_updates
from shared.clock import Clock, system_clock
from shared.db import Database
from shared.durations import parse_duration
from shared.jobs.catalog import check_chat_update_retention
from shared.jobs.models import JobRun, JobStatus
from shared.jobs.service import finish_run
from shared.sessions.cleanup import cleanup_sessions
from shared.turns.service import reap_stale_turns

log = structlog.get_logger(__name__)

JobFunction = Callable[[Database, dict[str, Any], float], dict[str, Any]]


def run_cleanup_sessions(db: Database, params: dict[str, Any], now: float) -> dict[str, Any]:
    statuses = params.get("statuses") or ["ok", "error", "cancelled"]
    with db.write() as session:
        report = cleanup_sessions(
            session,
            older_than_s=parse_duration(str(params.get("older_than", "30d"))),
            statuses=list(statuses),
            dry_run=bool(params.get("dry_run", False)),
            now=now,
        )
    return report.as_dict()


def run_prune_chat_updates(db: Database, params: dict[str, Any], now: float) -> dict[str, Any]:
    older_than = str(params.get("older_than", "7d"))
    check_chat_update_retention(older_than)
    with db.write() as session:
        report = prune_updates(
            session,
            older_than_s=parse_duration(older_than),
            dry_run=bool(params.get("dry_run", False)),
            now=now,
        )
    return report.as_dict()


def run_reap_turns(db: Database, params: dict[str, Any], now: float) -> dict[str, Any]:
    stale_after_s = parse_duration(str(params.get("stale_after", "1h")))
    with db.write() as session:
        reaped = reap_stale_turns(session, now, stale_after_s=stale_after_s)
    return {"failed_turns": reaped}


def run_cas_gc(db: Database, params: dict[str, Any], now: float) -> dict[str, Any]:
    from shared.cas.gc import collect_garbage
    from shared.cas.stores import make_artifact_store
    from workers import runtime

    max_delete = params.get("max_delete")
    report = collect_garbage(
        db,
        make_artifact_store(runtime.settings()),
        older_than_s=parse_duration(str(params.get("older_than", "24h"))),
        dry_run=bool(params.get("dry_run", False)),
        max_delete=int(max_delete) if max_delete is not None else None,
        now=datetime.fromtimestamp(now, UTC),
    )
    return report.as_dict()


def run_index_workspace(db: Database, params: dict[str, Any], now: float) -> dict[str, Any]:
    from workers import runtime

    return runtime.current().indexer.index(params).as_dict()


JOB_FUNCTIONS: dict[str, JobFunction] = {
    "cas_gc": run_cas_gc,
    "cleanup_sessions": run_cleanup_sessions,
    "reap_turns": run_reap_turns,
    "index_workspace": run_index_workspace,
    "prune_chat_updates": run_prune_chat_updates,
}


def execute_run(db: Database, run_id: str, *, clock: Clock = system_clock) -> JobRun | None:
    """Run a recorded job once and store its result or error.

    Idempotent: a run that already finished is not run again. Returns the finished run,
    or None when there was nothing to do.
    """
    with db.read() as session:
        run = session.get(JobRun, run_id)
    if run is None or run.status != JobStatus.running:
        return None
    function = JOB_FUNCTIONS.get(run.name)
    with structlog.contextvars.bound_contextvars(job=run.name, job_run_id=run.id):
        if function is None:
            return _finish(db, run_id, error=f"job {run.name!r} is not available here")
        try:
            result = function(db, run.params, clock.now())
        except Exception as error:
            log.exception("maintenance job failed")
            return _finish(db, run_id, error=f"{type(error).__name__}: {error}")
        log.info("maintenance job done", result=result)
        return _finish(db, run_id, result=result)


def _finish(db: Database, run_id: str, **outcome: Any) -> JobRun:
    with db.write() as session:
        return finish_run(session, run_id, **outcome)
