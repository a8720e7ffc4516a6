"""The scheduler: one leader, each cron slot once, catch-up within the misfire grace."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlmodel import select

from shared.clock import ManualClock
from shared.db import Database
from shared.jobs.models import JobRun
from shared.queues import MAINTENANCE, Enqueuer
from shared.scheduling.service import SqlLeaderLock
from shared.settings import Settings
from workers.scheduler import CronJob, Scheduler

# 2026-01-01 00:10:30 UTC: thirty seconds after the 00:10 slot of an every-minute job.
START = datetime(2026, 1, 1, 0, 10, 30, tzinfo=UTC).timestamp()
EVERY_MINUTE = CronJob("reap_turns", "* * * * *", {"stale_after": "1h"})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def broker() -> StubBroker:
    return StubBroker()


def make_scheduler(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock, holder: str
) -> Scheduler:
    return Scheduler(
        settings, database, Enqueuer(broker), clock=clock, holder=holder, jobs=[EVERY_MINUTE]
    )


def job_runs(database: Database) -> list[JobRun]:
    with database.read() as db:
        return list(db.exec(select(JobRun)))


def test_one_holder_leads_until_its_lease_expires(database: Database, clock: ManualClock) -> None:
    lock = SqlLeaderLock(database, "scheduler", ttl_s=15, clock=clock)

    first = lock.acquire("a")
    second = lock.acquire("b")
    renewed = lock.acquire("a")
    clock.advance(16)
    taken_over = lock.acquire("b")

    assert (first, second, renewed, taken_over) == (True, False, True, True)
    assert lock.leader() == "b"


def test_released_lease_is_free_at_once(database: Database, clock: ManualClock) -> None:
    lock = SqlLeaderLock(database, "scheduler", ttl_s=15, clock=clock)
    lock.acquire("a")

    lock.release("a")

    assert lock.acquire("b")


def test_slot_fires_once_across_replicas(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock
) -> None:
    replicas = [make_scheduler(settings, database, broker, clock, h) for h in ("a", "b", "c")]
    for replica in replicas:
        replica.leading = True  # as if leadership briefly overlapped

    fired = [replica.fire_due(EVERY_MINUTE) for replica in replicas]

    assert fired == [True, False, False]
    assert len(job_runs(database)) == 1
    assert broker.queues[MAINTENANCE].qsize() == 1


def test_follower_fires_nothing(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock
) -> None:
    leader = make_scheduler(settings, database, broker, clock, "a")
    follower = make_scheduler(settings, database, broker, clock, "b")
    leader.renew_leadership()
    follower.renew_leadership()
    broker.flush_all()

    assert not follower.fire_due(EVERY_MINUTE)
    assert follower.run_automation() == 0


def test_new_leader_catches_up_missed_slot_within_grace(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock
) -> None:
    scheduler = make_scheduler(settings, database, broker, clock, "a")

    scheduler.renew_leadership()  # taking the lead fires the 00:10 slot, 30 s late
    scheduler.renew_leadership()

    runs = job_runs(database)
    assert len(runs) == 1
    assert runs[0].origin == "schedule"


def test_slot_older_than_grace_is_skipped(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock
) -> None:
    strict = settings.model_copy(update={"scheduler_misfire_grace_s": 10})
    scheduler = make_scheduler(strict, database, broker, clock, "a")

    scheduler.renew_leadership()

    assert job_runs(database) == []


def test_latest_slot_is_the_last_scheduled_time(
    settings: Settings, database: Database, broker: StubBroker, clock: ManualClock
) -> None:
    scheduler = make_scheduler(settings, database, broker, clock, "a")

    slot = scheduler.latest_slot(EVERY_MINUTE)

    assert slot == datetime(2026, 1, 1, 0, 10, tzinfo=UTC).timestamp()
