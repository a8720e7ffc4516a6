"""The scheduler process: it only enqueues, and one replica leads at a time.

APScheduler fires three kinds of jobs: a leadership heartbeat, the think/tick loop every
second, and the maintenance jobs on their cron schedules (UTC). Only the replica that
holds the ``scheduler`` leader lease acts. Each cron slot is also recorded in the
database before its job is enqueued, so a slot fires once even when two replicas
briefly both believe they lead. At start, a slot missed while no scheduler ran fires
if it is at most ``FOXCTL_SCHEDULER_MISFIRE_GRACE_S`` old.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from shared.clock import Clock, system_clock
from shared.db import Database
from shared.heartbeat import HeartbeatWriter
from shared.jobs.catalog import enqueue_job, record_job
from shared.queues import Enqueuer
from shared.scheduling.service import SqlLeaderLock, claim_slot
from shared.settings import Settings
from workers.automation import AutomationLoop

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CronJob:
    name: str
    crontab: str
    params: dict[str, Any] = field(default_factory=dict)

    def trigger(self) -> CronTrigger:
        return CronTrigger.from_crontab(self.crontab, timezone=UTC)


def maintenance_jobs(settings: Settings) -> list[CronJob]:
    return [
        CronJob("cas_gc", settings.schedule_cas_gc, {"older_than": settings.cas_gc_older_than}),
        CronJob(
            "cleanup_sessions",
            settings.schedule_session_cleanup,
            {"older_than": settings.session_retention},
        ),
        CronJob(
            "reap_turns",
            settings.schedule_reap_turns,
            {"stale_after": f"{settings.turn_time_limit_s * 2}s"},
        ),
        CronJob(
            "prune_chat_updates",
            settings.schedule_chat_update_prune,
            {"older_than": settings.chat_update_retention},
        ),
        # Incremental: picks up commits a git-sync sidecar pulled into the workspace.
        CronJob("index_workspace", settings.schedule_reindex),
    ]


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        enqueuer: Enqueuer,
        *,
        clock: Clock = system_clock,
        holder: str | None = None,
        jobs: list[CronJob] | None = None,
    ) -> None:
        self._db = db
        self._enqueuer = enqueuer
        self._clock = clock
        self._grace_s = settings.scheduler_misfire_grace_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.lock = SqlLeaderLock(
            db, "scheduler", ttl_s=settings.scheduler_lease_ttl_s, clock=clock
        )
        self.automation = AutomationLoop(db, enqueuer, clock=clock)
        self.jobs = maintenance_jobs(settings) if jobs is None else jobs
        self.leading = False
        # `foxctl health` reads "worker" heartbeats for any process without a port.
        self.heartbeat = HeartbeatWriter(settings.run_dir, "worker")

    def renew_leadership(self) -> bool:
        leading = self.lock.acquire(self.holder)
        changed = leading != self.leading
        self.leading = leading
        if changed:
            log.info("scheduler leadership " + ("taken" if leading else "lost"), holder=self.holder)
        if changed and leading:
            self.catch_up()
        return leading

    def run_automation(self) -> int:
        if not self.leading:
            return 0
        return self.automation.run_due()

    def fire(self, job: CronJob, slot: float) -> bool:
        """Enqueue ``job`` for ``slot`` unless that slot already fired; True if enqueued."""
        if not self.leading:
            return False
        with self._db.write() as db:
            if not claim_slot(db, job.name, slot, self.holder):
                return False
            run = record_job(db, job.name, dict(job.params), origin="schedule")
        enqueue_job(self._enqueuer, run)
        log.info("maintenance job enqueued", job=job.name, slot=_iso(slot), job_run_id=run.id)
        return True

    def fire_due(self, job: CronJob) -> bool:
        """Fire the job's latest slot (the cron trigger calls this at the slot's time)."""
        slot = self.latest_slot(job)
        return slot is not None and self.fire(job, slot)

    def catch_up(self) -> None:
        """Fire slots missed while no scheduler led, if they are within the grace."""
        for job in self.jobs:
            slot = self.latest_slot(job)
            if slot is not None and self._clock.now() - slot <= self._grace_s:
                self.fire(job, slot)

    def latest_slot(self, job: CronJob) -> float | None:
        """Return the newest scheduled time of ``job`` that is not in the future."""
        now = datetime.fromtimestamp(self._clock.now(), UTC)
        trigger = job.trigger()
        slot = None
        candidate = trigger.get_next_fire_time(None, now - timedelta(seconds=self._grace_s))
        while candidate is not None and candidate <= now:
            slot = candidate
            candidate = trigger.get_next_fire_time(candidate, candidate + timedelta(seconds=1))
        return slot.timestamp() if slot is not None else None

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT; release leadership on the way out."""
        scheduler = BlockingScheduler(timezone=UTC)
        beat_s = self.lock.ttl_s / 3
        scheduler.add_job(
            self.renew_leadership,
            "interval",
            seconds=beat_s,
            next_run_time=datetime.now(UTC),
            id="leadership",
        )
        scheduler.add_job(
            self.run_automation,
            "interval",
            seconds=1,
            id="automation",
            max_instances=1,
            coalesce=True,
        )
        for job in self.jobs:
            scheduler.add_job(
                self.fire_due,
                job.trigger(),
                args=[job],
                id=job.name,
                misfire_grace_time=self._grace_s,
                coalesce=True,
            )

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("scheduler stopping", signal=signum)
            self.heartbeat.stopping = True
            scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("scheduler started", holder=self.holder, jobs=[j.name for j in self.jobs])
        self.heartbeat.start()
        try:
            scheduler.start()
        finally:
            self.heartbeat.stop()
            self.lock.release(self.holder)
            log.info("scheduler stopped", holder=self.holder)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
