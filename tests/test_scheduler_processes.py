"""Three scheduler processes for a few minutes: every slot and tick is enqueued once."""

from __future__ import annotations

import itertools
import math
import re
import time
from pathlib import Path

import pytest
from sqlmodel import col, select

from shared.agents.models import AgentCreate, AgentMode, AgentRole
from shared.agents.service import create_agent
from shared.db import Database, make_engine
from shared.jobs.models import JobRun
from shared.scheduling.models import LeaderLease
from shared.sessions.models import SessionCreate
from shared.sessions.service import create_session
from shared.settings import load_settings
from shared.turns.models import Turn
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, run_cli, wait_for_log

pytestmark = pytest.mark.slow

RUN_S = 150
TICK_INTERVAL_S = 20


def test_three_schedulers_enqueue_each_slot_once(
    postgres_dsn: str,
    redis_url: str,
    fake_model: FakeOpenAI,
    sqlite_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {
        **sqlite_env,
        "FOXCTL_DB_DRIVER": "postgres",
        "FOXCTL_POSTGRES_DSN": postgres_dsn,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_SCHEDULE_REAP_TURNS": "* * * * *",
        "FOXCTL_SCHEDULE_CAS_GC": "0 0 1 1 *",
        "FOXCTL_SCHEDULE_SESSION_CLEANUP": "0 0 1 1 *",
        "FOXCTL_SCHEDULER_LEASE_TTL_S": "3",
        "FOXCTL_LOG_FORMAT": "json",
    }
    assert run_cli(["migrate"], env).returncode == 0
    database = Database(make_engine(load_settings(env)))
    with database.write() as db:
        agent = create_agent(
            db,
            AgentCreate(
                name="ticker",
                role=AgentRole.planner,
                mode=AgentMode.tick,
                tick_interval_s=TICK_INTERVAL_S,
            ),
        )
        session_id = create_session(db, SessionCreate(agent_id=agent.id)).id

    worker = Process(
        "worker",
        ["worker", "--queues", "turns", "--queues", "maintenance"],
        {**env, "FOXCTL_RUN_DIR": str(tmp_path / "run-worker")},
        tmp_path,
    )
    wait_for_log(worker, "worker started")
    started = time.time()
    schedulers = [
        Process(
            f"scheduler-{n}",
            ["scheduler"],
            {**env, "FOXCTL_RUN_DIR": str(tmp_path / f"s{n}")},
            tmp_path,
        )
        for n in range(3)
    ]
    time.sleep(RUN_S / 2)
    leader_pid = _leader_pid(database)
    [leader] = [s for s in schedulers if s.pid == leader_pid]
    leader.kill()  # the others take over within the lease time
    time.sleep(RUN_S / 2)
    ended = time.time()
    codes = [s.terminate() for s in schedulers if s is not leader]
    worker.terminate()

    with database.read() as db:
        runs = db.exec(select(JobRun).where(JobRun.name == "reap_turns")).all()
        ticks = db.exec(
            select(Turn).where(Turn.session_id == session_id).order_by(col(Turn.number))
        ).all()
    database.dispose()

    # Minute slots from the one before the start (caught up within the grace) to the end.
    expected_slots = math.floor(ended / 60) - math.floor(started / 60) + 1
    logs = "\n".join(p.output() for p in [*schedulers, worker])
    assert len(runs) == expected_slots, logs
    assert codes == [0, 0]
    assert [t.trigger for t in ticks] == ["tick"] * len(ticks)
    assert len(ticks) >= RUN_S // (TICK_INTERVAL_S + 5), logs
    starts = [t.created_at.timestamp() for t in ticks]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= TICK_INTERVAL_S - 1, gaps
    assert all(t.status == "succeeded" for t in ticks[:-1])


def _leader_pid(database: Database) -> int:
    with database.read() as db:
        lease = db.get(LeaderLease, "scheduler")
    assert lease is not None and lease.holder, "no scheduler took the lead"
    match = re.search(r":(\d+)$", lease.holder)
    assert match, lease.holder
    return int(match.group(1))
