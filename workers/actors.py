"""Dramatiq actors. Each takes ids only and is safe to run more than once."""

from __future__ import annotations

import dramatiq

from shared.queues import RUN_JOB, RUN_SESSION
from workers import runtime
from workers.broker_setup import broker
from workers.maintenance import execute_run

# Dramatiq binds an actor to the global broker when the decorator runs, so the import
# of broker_setup above must come first. It is imported here only for that effect.
__all__ = ["broker", "run_job", "run_session"]

_settings = runtime.settings()


@dramatiq.actor(
    queue_name=RUN_SESSION.queue,
    actor_name=RUN_SESSION.name,
    # Turn failures (model errors, cancels) are recorded on the turn and do not raise.
    # What raises is infrastructure (database down), so a few retries with a short
    # backoff cover a failover; the reconciler re-enqueues anything beyond that.
    max_retries=_settings.turn_max_retries,
    min_backoff=1_000,
    max_backoff=30_000,
    time_limit=(_settings.turn_time_limit_s + 60) * 1_000,
)
def run_session(session_id: str) -> None:
    """Run the session's next queued turn under its lease.

    Idempotent: a redelivered message finds the turn finished (or the lease held) and
    does nothing, and fenced writes keep an expired holder from replying twice.
    """
    runtime.current().runner.run_session(session_id)


@dramatiq.actor(
    queue_name=RUN_JOB.queue,
    actor_name=RUN_JOB.name,
    # Job failures are recorded on the run and do not raise; what raises is a database
    # outage, worth a few retries.
    max_retries=3,
    min_backoff=5_000,
    max_backoff=60_000,
    time_limit=60 * 60 * 1_000,
)
def run_job(job_run_id: str) -> None:
    """Run a recorded maintenance job. Idempotent: a finished run is not run again."""
    execute_run(runtime.current().db, job_run_id)
