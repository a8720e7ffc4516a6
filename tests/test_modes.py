"""Execution modes: autonomous continuations, think and tick cycles, stopping an agent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.clock import ManualClock
from shared.db import Database
from shared.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from workers.automation import AutomationLoop


@pytest.fixture
def foxctl(
    settings: Settings, database: Database, fake_model: FakeOpenAI, tmp_path: Path
) -> Iterator[Harness]:
    yield Harness(settings, database, fake_model.base_url, tmp_path)


def turns_of(foxctl: Harness, session_id: str) -> list[dict]:
    started = [e for e in foxctl.events(session_id) if e["type"] == "turn.queued"]
    return [foxctl.turn(e["turn_id"]) for e in started]


def test_autonomous_agent_stops_after_max_auto_turns(foxctl: Harness) -> None:
    foxctl.create_agent("auto", mode="autonomous", max_auto_turns=2)
    session_id = foxctl.create_session("auto")

    foxctl.post(session_id, "start the survey")
    foxctl.run_pending()

    turns = turns_of(foxctl, session_id)
    assert [t["trigger"] for t in turns] == ["message", "continuation", "continuation"]
    assert all(t["status"] == "succeeded" for t in turns)
    assert foxctl.wake_ups() == []


def test_new_message_restarts_continuation_budget(foxctl: Harness) -> None:
    foxctl.create_agent("auto", mode="autonomous", max_auto_turns=1)
    session_id = foxctl.create_session("auto")
    foxctl.post(session_id, "first task")
    foxctl.run_pending()

    foxctl.post(session_id, "second task")
    foxctl.run_pending()

    triggers = [t["trigger"] for t in turns_of(foxctl, session_id)]
    assert triggers == ["message", "continuation", "message", "continuation"]


def test_proactive_agent_thinks_when_due(foxctl: Harness) -> None:
    foxctl.create_agent("watch", mode="proactive", max_auto_turns=0, think_interval_s=30)
    session_id = foxctl.create_session("watch")
    foxctl.post(session_id, "watch the build")
    foxctl.run_pending()
    clock = ManualClock(time.time())
    loop = AutomationLoop(foxctl.db, foxctl.enqueuer, clock=clock)

    early = loop.run_due()
    clock.advance(31)
    due = loop.run_due()
    again = loop.run_due()
    foxctl.run_pending()

    assert (early, due, again) == (0, 1, 0)
    assert [t["trigger"] for t in turns_of(foxctl, session_id)] == ["message", "think"]


def test_tick_agent_that_calls_end_tick_gets_no_more_ticks(
    foxctl: Harness, fake_model: FakeOpenAI
) -> None:
    agent = foxctl.create_agent("ticker", mode="tick", tick_interval_s=10)
    session_id = foxctl.create_session("ticker")
    clock = ManualClock(time.time() + 1)
    loop = AutomationLoop(foxctl.db, foxctl.enqueuer, clock=clock)

    first = loop.run_due()
    foxctl.run_pending()
    clock.advance(11)
    fake_model.default_tool = "end_tick"
    second = loop.run_due()
    foxctl.run_pending()
    clock.advance(60)
    third = loop.run_due()

    turns = turns_of(foxctl, session_id)
    assert (first, second, third) == (1, 1, 0)
    assert [t["trigger"] for t in turns] == ["tick", "tick"]
    assert foxctl.call("GET", f"/api/agents/{agent['id']}").json["status"] == "ended"
    assert "agent.ended" in [e["type"] for e in foxctl.events(session_id)]


def test_stopped_agent_runs_nothing_more(foxctl: Harness) -> None:
    agent = foxctl.create_agent("ticker", mode="tick", tick_interval_s=10)
    session_id = foxctl.create_session("ticker")
    queued = foxctl.post(session_id, "queued work").json["turn_id"]
    clock = ManualClock(time.time() + 1)

    stopped = foxctl.call("POST", f"/api/agents/{agent['id']}/stop")
    ticks = AutomationLoop(foxctl.db, foxctl.enqueuer, clock=clock).run_due()
    posted = foxctl.post(session_id, "more work")
    foxctl.run_pending()

    assert stopped.json["status"] == "stopped"
    assert ticks == 0
    assert foxctl.turn(queued)["status"] == "cancelled"
    assert posted.status_code == 409
    assert posted.json["error"]["code"] == "agent_not_active"


def test_started_agent_accepts_messages_again(foxctl: Harness) -> None:
    agent = foxctl.create_agent("helper")
    session_id = foxctl.create_session("helper")
    foxctl.call("POST", f"/api/agents/{agent['id']}/stop")

    started = foxctl.call("POST", f"/api/agents/{agent['id']}/start")
    posted = foxctl.post(session_id, "hello again")

    assert started.json["status"] == "active"
    assert posted.status_code == 202
