"""Pieces of the agent loop: think sections, history budget, deltas, context injection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import Database
from shared.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from workers.agent_loop import DeltaBuffer
from workers.llm.think import ThinkFilter, strip_think
from workers.prompts import estimate_tokens, fit_history


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>plan it</think>The answer is 4.", "The answer is 4."),
        ("Before <think>a</think>middle<think>b</think> after", "Before middle after"),
        ("<think>never closed", ""),
        ("no tags here\n", "no tags here\n"),
    ],
)
def test_strip_think_removes_sections(text: str, expected: str) -> None:
    assert strip_think(text) == expected


def test_think_filter_handles_tags_split_across_pieces() -> None:
    pieces = ["Hi <thi", "nk>secret", " plan</th", "ink> there", " <", "b>bold"]
    visible = ThinkFilter()

    shown = "".join(visible.feed(piece) for piece in pieces)

    assert shown == "Hi  there <b>bold"


def test_fit_history_keeps_newest_within_budget() -> None:
    history = [{"role": "user", "content": "x" * 400} for _ in range(10)]
    history.append({"role": "user", "content": "latest question"})

    kept = fit_history(history, budget_tokens=250)

    assert kept[-1]["content"] == "latest question"
    assert sum(estimate_tokens(m["content"]) for m in kept) <= 250
    assert len(kept) == 3


def test_fit_history_cuts_single_oversized_message() -> None:
    kept = fit_history([{"role": "user", "content": "y" * 10_000}], budget_tokens=100)

    assert len(kept[0]["content"]) == 400


@pytest.fixture
def foxctl(
    settings: Settings, database: Database, fake_model: FakeOpenAI, tmp_path: Path
) -> Iterator[Harness]:
    (tmp_path / "billing").mkdir()
    (tmp_path / "billing" / "invoice.py").write_text(
        "def render_invoice(order):\n    return f'Invoice for {order.customer}'\n"
    )
    (tmp_path / "README.md").write_text("Unrelated notes.\n")
    yield Harness(settings, database, fake_model.base_url, tmp_path)


def test_reply_text_streams_as_live_deltas(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    published: list[dict] = []
    foxctl.publisher.subscribe(session_id, published.append)

    foxctl.post(session_id, "stream this")
    foxctl.run_pending()

    # Persisted events are published too; this test is about the live-only deltas.
    deltas = [e for e in published if e["type"] == "turn.delta"]
    stored = [e["seq"] for e in foxctl.events(session_id)]
    assert "".join(d["text"] for d in deltas) == "echo: stream this"
    assert len(deltas) == 2
    assert all(d["type"] == "turn.delta" and d["after_seq"] in stored for d in deltas)


def test_context_injection_records_sources(foxctl: Harness, fake_model: FakeOpenAI) -> None:
    foxctl.create_agent("reader", inject_context=True)
    session_id = foxctl.create_session("reader")

    foxctl.post(session_id, "How is an invoice rendered?")
    foxctl.run_pending()

    injected = [e for e in foxctl.events(session_id) if e["type"] == "context.injected"]
    sent = fake_model.calls[0].body["messages"]
    assert injected[0]["data"]["sources"][0]["path"] == "billing/invoice.py"
    assert "def render_invoice(order):" in sent[1]["content"]


def test_context_injection_off_for_tool_models(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()

    foxctl.post(session_id, "How is an invoice rendered?")
    foxctl.run_pending()

    assert "context.injected" not in [e["type"] for e in foxctl.events(session_id)]


def test_delta_buffer_joins_pieces_within_interval() -> None:
    now = [0.0]
    sent: list[str] = []
    buffer = DeltaBuffer(sent.append, 0.05, clock=lambda: now[0])

    buffer.add("Hel")  # the first piece goes out at once
    now[0] = 0.01
    buffer.add("lo ")
    now[0] = 0.03
    buffer.add("wor")
    now[0] = 0.06
    buffer.add("ld")  # 60 ms after the last send
    now[0] = 0.07
    buffer.add("!")
    buffer.flush()
    buffer.flush()  # nothing left: sends nothing

    assert sent == ["Hel", "lo world", "!"]


def test_delta_buffer_with_zero_interval_sends_every_piece() -> None:
    sent: list[str] = []
    buffer = DeltaBuffer(sent.append, 0.0, clock=lambda: 1.0)
    for piece in ("a", "b", "c"):
        buffer.add(piece)
    assert sent == ["a", "b", "c"]
