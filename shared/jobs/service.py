"""Record maintenance job runs. Callers own the transaction."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from shared.clock import utcnow
from shared.ids import IdGenerator, ids
from shared.jobs.models import JobRun, JobStatus


def start_run(
    db: Session, name: str, origin: str, params: dict[str, Any], *, id_gen: IdGenerator = ids
) -> JobRun:
    run = JobRun(id=id_gen.new("job"), name=name, origin=origin, params=params)
    db.add(run)
    db.flush()
    return run


def finish_run(
    db: Session, run_id: str, *, result: dict[str, Any] | None = None, error: str | None = None
) -> JobRun:
    run = db.exec(select(JobRun).where(JobRun.id == run_id)).one()
    run.status = (JobStatus.failed if error else JobStatus.succeeded).value
    run.result = result or {}
    run.error = error
    run.finished_at = utcnow()
    db.add(run)
    return run


def list_runs(
    db: Session, *, name: str | None = None, limit: int = 50, before: str | None = None
) -> list[JobRun]:
    """List runs, newest first; ``before`` is a run id from an earlier page."""
    query = select(JobRun).order_by(col(JobRun.id).desc()).limit(limit)
    if name is not None:
        query = query.where(JobRun.name == name)
    if before is not None:
        query = query.where(col(JobRun.id) < before)
    return list(db.exec(query))
