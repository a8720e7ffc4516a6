"""Turns from post to reply: ordering, busy policies, cancel, redelivery, fencing.

The real app and turn runner share one database; the broker is a StubBroker that the
tests drain by hand, so each step is deterministic.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from shared.clock import ManualClock
from shared.db import Database
from shared.settings import Settings
from shared.turns.models import SessionLease
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from workers.reconciler import Reconciler


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "notes.md").write_text("The deploy key rotates on Mondays.\n")
    (tmp_path / "secret.txt").write_text("outside the workspace")
    return root


@pytest.fixture
def foxctl(
    settings: Settings, database: Database, fake_model: FakeOpenAI, workspace: Path
) -> Iterator[Harness]:
    harness = Harness(settings, database, fake_model.base_url, workspace)
    harness.create_agent()
    yield harness


def wait_for_status(foxctl: Harness, turn_id: str, status: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while foxctl.turn(turn_id)["status"] != status:
        assert time.monotonic() < deadline, f"turn {turn_id} never reached {status}"
        time.sleep(0.02)


def run_in_thread(foxctl: Harness, session_id: str) -> threading.Thread:
    thread = threading.Thread(target=foxctl.runner.run_session, args=(session_id,))
    thread.start()
    return thread


def test_turn_produces_reply_and_ordered_events(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "hello").json["turn_id"]

    foxctl.run_pending()

    turn = foxctl.turn(turn_id)
    events = foxctl.events(session_id)
    assert turn["status"] == "succeeded"
    assert (turn["prompt_tokens"], turn["completion_tokens"]) == (7, 3)
    assert [m["content"] for m in foxctl.messages(session_id)] == ["hello", "echo: hello"]
    assert [e["type"] for e in events] == [
        "message.created",
        "turn.queued",
        "turn.started",
        "model.called",
        "message.created",
        "turn.succeeded",
    ]
    assert [e["seq"] for e in events] == list(range(1, 7))


def test_turns_run_in_posting_order(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    turn_ids = [foxctl.post(session_id, f"message {n}").json["turn_id"] for n in range(4)]

    foxctl.run_pending()

    turns = [foxctl.turn(turn_id) for turn_id in turn_ids]
    assert [t["status"] for t in turns] == ["succeeded"] * 4
    assert [c.content for c in fake_model.calls] == [f"message {n}" for n in range(4)]
    for earlier, later in itertools.pairwise(turns):
        assert earlier["finished_at"] <= later["started_at"]


def test_history_reaches_model(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "first")
    foxctl.run_pending()

    foxctl.post(session_id, "second")
    foxctl.run_pending()

    sent = fake_model.calls[-1].body["messages"]
    assert [m["content"] for m in sent[1:]] == ["first", "echo: first", "second"]
    assert sent[0]["role"] == "system"
    assert sent[0]["content"].startswith("You are a coding agent.")


def test_tool_call_result_goes_back_to_model(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "tool:search find it").json["turn_id"]

    foxctl.run_pending()

    types = [e["type"] for e in foxctl.events(session_id)]
    result = next(e for e in foxctl.events(session_id) if e["type"] == "tool.result")
    assert foxctl.turn(turn_id)["status"] == "succeeded"
    assert types.count("tool.called") == 1
    assert result["data"]["ok"] is False
    assert "tool 'search' is not available" in result["data"]["output"]
    assert foxctl.messages(session_id)[-1]["content"].startswith("tool said: error:")


def test_workspace_tool_result_reaches_model(foxctl: Harness) -> None:
    session_id = foxctl.create_session()

    foxctl.post(session_id, 'tool:fs_read_file args:{"path":"notes.md"} when?')
    foxctl.run_pending()

    reply = foxctl.messages(session_id)[-1]["content"]
    assert reply == "tool said: 1: The deploy key rotates on Mondays.\n"


def test_escaping_tool_call_gets_tool_error(foxctl: Harness) -> None:
    session_id = foxctl.create_session()

    foxctl.post(session_id, 'tool:fs_read_file args:{"path":"../secret.txt"} read')
    foxctl.run_pending()

    result = next(e for e in foxctl.events(session_id) if e["type"] == "tool.result")
    assert result["data"]["ok"] is False
    assert "leaves the workspace" in result["data"]["output"]
    assert "outside the workspace" not in foxctl.messages(session_id)[-1]["content"]


def test_max_iterations_ends_turn_as_failed(foxctl: Harness) -> None:
    foxctl.create_agent("once", max_iterations=1)
    session_id = foxctl.create_session("once")
    turn_id = foxctl.post(session_id, "tool:search x").json["turn_id"]

    foxctl.run_pending()

    turn = foxctl.turn(turn_id)
    assert turn["status"] == "failed"
    assert "max_iterations=1" in turn["error"]


def test_bad_api_key_fails_turn_clearly(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "status:401 hi").json["turn_id"]

    foxctl.run_pending()

    turn = foxctl.turn(turn_id)
    failed = [e for e in foxctl.events(session_id) if e["type"] == "turn.failed"]
    assert turn["status"] == "failed"
    assert "FOXCTL_LLM_API_KEY" in turn["error"]
    assert failed[0]["data"]["error"] == turn["error"]


def test_redelivered_wake_up_adds_no_reply(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")
    foxctl.run_pending()

    foxctl.runner.run_session(session_id)
    foxctl.runner.run_session(session_id)

    assert [m["role"] for m in foxctl.messages(session_id)] == ["user", "assistant"]


# -- busy policies ---------------------------------------------------------------------


def test_enqueue_policy_queues_second_message(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    first = foxctl.post(session_id, "sleep:0.3 one").json["turn_id"]
    worker = run_in_thread(foxctl, session_id)
    wait_for_status(foxctl, first, "running")

    second = foxctl.post(session_id, "two")
    worker.join()
    foxctl.run_pending()

    assert second.status_code == 202
    assert foxctl.turn(first)["status"] == "succeeded"
    assert foxctl.turn(second.json["turn_id"])["status"] == "succeeded"


def test_reject_policy_answers_409_with_running_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session(busy_policy="reject")
    first = foxctl.post(session_id, "sleep:0.3 one").json["turn_id"]
    worker = run_in_thread(foxctl, session_id)
    wait_for_status(foxctl, first, "running")

    second = foxctl.post(session_id, "two")
    worker.join()

    assert second.status_code == 409
    assert second.json["error"]["code"] == "session_busy"
    assert second.json["error"]["details"]["turn_id"] == first
    assert [m["content"] for m in foxctl.messages(session_id)] == [
        "sleep:0.3 one",
        "echo: sleep:0.3 one",
    ]


def test_reject_policy_accepts_after_turn_ends(foxctl: Harness) -> None:
    session_id = foxctl.create_session(busy_policy="reject")
    foxctl.post(session_id, "one")
    foxctl.run_pending()

    result = foxctl.post(session_id, "two")

    assert result.status_code == 202


def test_interrupt_policy_cancels_running_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session(busy_policy="interrupt")
    first = foxctl.post(session_id, "sleep:0.3 tool:search slow").json["turn_id"]
    worker = run_in_thread(foxctl, session_id)
    wait_for_status(foxctl, first, "running")

    second = foxctl.post(session_id, "newer").json["turn_id"]
    worker.join()
    foxctl.run_pending()

    assert foxctl.turn(first)["status"] == "cancelled"
    assert foxctl.turn(second)["status"] == "succeeded"
    assert foxctl.messages(session_id)[-1]["content"] == "echo: newer"
    assert [e["type"] for e in foxctl.events(session_id)].count("tool.called") == 0


def test_interrupt_policy_cancels_queued_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session(busy_policy="interrupt")
    first = foxctl.post(session_id, "one").json["turn_id"]

    second = foxctl.post(session_id, "two").json["turn_id"]
    foxctl.run_pending()

    assert foxctl.turn(first)["status"] == "cancelled"
    assert foxctl.turn(second)["status"] == "succeeded"


# -- cancel ----------------------------------------------------------------------------


def test_cancel_queued_turn_never_calls_model(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "hello").json["turn_id"]

    cancel = foxctl.call("POST", f"/api/turns/{turn_id}/cancel")
    foxctl.run_pending()

    assert cancel.status_code == 202
    assert cancel.json["status"] == "cancelled"
    assert fake_model.calls == []


def test_cancel_running_then_follow_up_is_processed(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    first = foxctl.post(session_id, "sleep:0.3 long job").json["turn_id"]
    worker = run_in_thread(foxctl, session_id)
    wait_for_status(foxctl, first, "running")

    cancel = foxctl.call("POST", f"/api/turns/{first}/cancel")
    follow_up = foxctl.post(session_id, "are you there?").json["turn_id"]
    worker.join()
    foxctl.run_pending()

    assert cancel.json["cancel_requested"] is True
    assert foxctl.turn(first)["status"] == "cancelled"
    assert foxctl.turn(follow_up)["status"] == "succeeded"
    assert foxctl.messages(session_id)[-1]["content"] == "echo: are you there?"
    assert "echo: sleep:0.3 long job" not in [m["content"] for m in foxctl.messages(session_id)]


def test_cancelled_tool_call_is_not_run(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "tool:search sleep").json["turn_id"]
    foxctl.call("POST", f"/api/turns/{turn_id}/cancel")

    foxctl.run_pending()

    types = [e["type"] for e in foxctl.events(session_id)]
    assert "tool.called" not in types
    assert foxctl.turn(turn_id)["status"] == "cancelled"


def test_cancel_finished_turn_is_conflict(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "hello").json["turn_id"]
    foxctl.run_pending()

    result = foxctl.call("POST", f"/api/turns/{turn_id}/cancel")

    assert result.status_code == 409
    assert result.json["error"]["code"] == "turn_finished"


def test_cancel_unknown_turn_is_404(foxctl: Harness) -> None:
    result = foxctl.call("POST", "/api/turns/turn_missing/cancel")

    assert result.status_code == 404


# -- fencing, hand-back, reconciler -----------------------------------------------------


def test_holder_that_lost_lease_cannot_reply(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "sleep:0.5 slow").json["turn_id"]
    worker = run_in_thread(foxctl, session_id)
    wait_for_status(foxctl, turn_id, "running")

    # Another worker takes over, as it would after this holder paused past its expiry.
    table = SessionLease.__table__  # type: ignore[attr-defined]
    with foxctl.db.write() as db:
        db.exec(update(table).values(holder="other", token=table.c.token + 1, expires_at=0.0))
    worker.join()
    stuck = foxctl.turn(turn_id)
    foxctl.runner.run_session(session_id)

    assert stuck["status"] == "running"
    assert foxctl.turn(turn_id)["status"] == "succeeded"
    assert foxctl.turn(turn_id)["attempts"] == 2
    assert [m["role"] for m in foxctl.messages(session_id)] == ["user", "assistant"]
    assert len(fake_model.calls) == 2


def test_stopping_worker_hands_turn_back(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "tool:search x").json["turn_id"]
    foxctl.wake_ups()
    foxctl.stopping.set()

    foxctl.runner.run_session(session_id)
    handed_back = foxctl.turn(turn_id)
    woken = foxctl.wake_ups()
    foxctl.stopping.clear()
    foxctl.runner.run_session(session_id)

    assert handed_back["status"] == "queued"
    assert woken == [session_id]
    assert foxctl.turn(turn_id)["status"] == "succeeded"


def test_stopping_worker_hands_back_mid_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "tool:search x").json["turn_id"]
    foxctl.wake_ups()
    original = foxctl.runner._loop._tools.run

    def stop_during_tool(profile, call):  # type: ignore[no-untyped-def]
        foxctl.stopping.set()
        return original(profile, call)

    foxctl.runner._loop._tools.run = stop_during_tool  # type: ignore[method-assign]

    foxctl.runner.run_session(session_id)

    types = [e["type"] for e in foxctl.events(session_id)]
    assert foxctl.turn(turn_id)["status"] == "queued"
    assert types[-1] == "turn.requeued"
    assert foxctl.wake_ups() == [session_id]


def test_reconciler_recovers_lost_wake_up(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "hello").json["turn_id"]
    foxctl.wake_ups()  # the broker loses the message
    clock = ManualClock(time.time() + 2)
    reconciler = Reconciler(foxctl.db, foxctl.enqueuer, interval_s=1, clock=clock)

    recovered = reconciler.reconcile_once()
    again = reconciler.reconcile_once()
    foxctl.run_pending()

    assert recovered == 1
    assert again == 0
    assert foxctl.turn(turn_id)["status"] == "succeeded"


def test_reconciler_leaves_fresh_turn_alone(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")
    foxctl.wake_ups()

    recovered = Reconciler(foxctl.db, foxctl.enqueuer, interval_s=60).reconcile_once()

    assert recovered == 0


def test_reconciler_skips_session_with_live_lease(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")
    foxctl.wake_ups()
    foxctl.lock.claim(session_id, "busy-worker")

    clock = ManualClock(time.time() + 2)

    reconciler = Reconciler(foxctl.db, foxctl.enqueuer, interval_s=1, clock=clock)

    assert reconciler.reconcile_once() == 0
    assert foxctl.wake_ups() == []


def test_unexpected_error_fails_turn_once(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    turn_id = foxctl.post(session_id, "tool:fs_list_dir look").json["turn_id"]

    def broken_tool(allowed, call):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug in a tool")

    foxctl.runner._loop._tools.run = broken_tool  # type: ignore[method-assign]
    foxctl.run_pending()

    turn = foxctl.turn(turn_id)
    assert turn["status"] == "failed"
    assert turn["error"] == "internal error: RuntimeError"
    assert len(fake_model.calls) == 1


def test_queued_follow_up_sees_previous_reply(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "first")
    foxctl.post(session_id, "second")

    foxctl.run_pending()

    sent = fake_model.calls[-1].body["messages"]
    listed = [m["content"] for m in foxctl.messages(session_id)]
    assert [m["content"] for m in sent[1:]] == ["first", "echo: first", "second"]
    assert listed == ["first", "echo: first", "second", "echo: second"]


def test_long_tool_output_is_stored_as_artifact(foxctl: Harness, workspace: Path) -> None:
    from shared.cas.gc import collect_garbage

    (workspace / "big.txt").write_text("line of text\n" * 20_000)
    session_id = foxctl.create_session()

    foxctl.post(session_id, 'tool:fs_read_file args:{"path":"big.txt"} go')
    foxctl.run_pending()

    result = [e for e in foxctl.events(session_id) if e["type"] == "tool.result"][-1]["data"]
    digest = result["output_digest"]
    stored = foxctl.call("GET", f"/api/cas/{digest}")
    assert result["output_bytes"] > 64 * 1024
    assert len(result["output"].encode()) < 66 * 1024
    assert f"stored as artifact {digest}" in result["output"]
    assert stored.status_code == 200
    assert stored.text.startswith("1: line of text\n")
    assert len(stored.content) == result["output_bytes"]

    kept = collect_garbage(foxctl.db, foxctl.artifacts, older_than_s=0)
    foxctl.call("DELETE", f"/api/sessions/{session_id}")
    collected = collect_garbage(foxctl.db, foxctl.artifacts, older_than_s=0)

    assert kept.deleted == 0
    assert collected.deleted == 1
