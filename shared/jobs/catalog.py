"""The maintenance jobs, their parameters, and how to start one."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from shared.durations import parse_duration
from shared.errors import InvalidInputError
from shared.jobs.models import JobRun
from shared.jobs.service import start_run
from shared.queues import INDEX_WORKSPACE, RUN_JOB, ActorRef, Enqueuer
from shared.settings import MIN_CHAT_UPDATE_RETENTION_S

#: Job name -> the parameters it accepts.
JOBS: dict[str, tuple[str, ...]] = {
    "cas_gc": ("older_than", "dry_run", "max_delete"),
    "cleanup_sessions": ("older_than", "statuses", "dry_run"),
    "reap_turns": ("stale_after",),
    "index_workspace": ("full",),
    "prune_chat_updates": ("older_than", "dry_run"),
}
#: Jobs that run on another queue than maintenance, with their actor.
JOB_ACTORS: dict[str, ActorRef] = {"index_workspace": INDEX_WORKSPACE}


def record_job(db: Session, name: str, params: dict[str, Any], origin: str) -> JobRun:
    """Check a job's name and parameters and record a run; the caller runs or enqueues it."""
    if name not in JOBS:
        raise InvalidInputError(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    unknown = sorted(set(params) - set(JOBS[name]))
    if unknown:
        raise InvalidInputError(f"job {name!r} takes no parameter {unknown[0]!r}")
    for key in ("older_than", "stale_after"):
        if key in params:
            try:
                parse_duration(str(params[key]))
            except ValueError as error:
                raise InvalidInputError(str(error)) from None
    if name == "prune_chat_updates":
        check_chat_update_retention(str(params.get("older_than", "7d")))
    return start_run(db, name, origin, params)


def check_chat_update_retention(older_than: str) -> None:
    """Raise InvalidInputError when ``older_than`` is shorter than platforms redeliver."""
    if parse_duration(older_than) < MIN_CHAT_UPDATE_RETENTION_S:
        # A platform may still redeliver a younger update, which would then run twice.
        raise InvalidInputError(
            f"older_than={older_than!r} is shorter than 24h, the longest time Telegram "
            "redelivers an update; use 24h or more"
        )


def enqueue_job(enqueuer: Enqueuer, run: JobRun) -> None:
    enqueuer.send(JOB_ACTORS.get(run.name, RUN_JOB), run.id)
