"""Live events: the console WebSocket and SSE, over the in-process hub.

The real app runs under falcon's ASGI conductor. Turns run on the harness's turn runner
in a thread and publish to the in-process publisher that the app's hub listens to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import falcon.errors
import falcon.testing
import pytest

from shared.db import Database
from shared.settings import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Harness
from web.resources.console import EventFrames

Frame = dict[str, Any]
Conductor = falcon.testing.ASGIConductor


@pytest.fixture
def foxctl(
    settings: Settings, database: Database, fake_model: FakeOpenAI, tmp_path: Path
) -> Iterator[Harness]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    harness = Harness(settings, database, fake_model.base_url, workspace)
    harness.create_agent()
    yield harness


def configure_web(foxctl: Harness, **changes: Any) -> None:
    """Change the settings that the app's resources read, after the harness built it."""
    resource, *_ = foxctl.app._router.find("/api/sessions/any/events")  # type: ignore[attr-defined]
    context = resource._ctx
    context.settings = context.settings.model_copy(update=changes)


async def post(conductor: Conductor, foxctl: Harness, session_id: str, content: str) -> None:
    # Not foxctl.post: the harness's test client runs the app's lifespan around each
    # request, and its shutdown would close the sockets under test.
    result = await conductor.simulate_post(
        f"/api/sessions/{session_id}/messages", json={"content": content}, headers=foxctl.headers
    )
    assert result.status_code == 202, result.json


def run(foxctl: Harness, scenario: Callable[[Conductor], Awaitable[None]]) -> None:
    async def main() -> None:
        async with falcon.testing.ASGIConductor(foxctl.app) as conductor:
            await asyncio.wait_for(scenario(conductor), timeout=20)

    asyncio.run(main())


async def next_event(ws: Any) -> Frame:
    """Receive frames until an event frame, skipping pings; fail on anything else."""
    while True:
        frame = await ws.receive_json()
        if frame["type"] == "ping":
            continue
        assert frame["type"] == "event", frame
        return dict(frame["event"])


async def events_until(ws: Any, last_type: str) -> list[Frame]:
    received = []
    while True:
        event = await next_event(ws)
        received.append(event)
        if event["type"] == last_type:
            return received


async def ack_and_events(ws: Any, last_type: str) -> tuple[Frame, list[Frame]]:
    """Receive an ack and events up to ``last_type``; the ack may come between events."""
    ack: Frame | None = None
    received: list[Frame] = []
    while ack is None or not received or received[-1]["type"] != last_type:
        frame = await ws.receive_json()
        if frame["type"] == "ack":
            ack = frame
        elif frame["type"] == "event":
            received.append(frame["event"])
    return ack, received


def persisted_seqs(events: list[Frame]) -> list[int]:
    return [e["seq"] for e in events if "seq" in e]


def console_path(session_id: str) -> str:
    return f"/ws/console/{session_id}"


def test_console_requires_credential(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    frames: list[Frame] = []
    codes: list[int | None] = []

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id)) as ws:
            frames.append(await ws.receive_json())
            with pytest.raises(falcon.errors.WebSocketDisconnected):
                await ws.receive_json()
            codes.append(ws.close_code)

    run(foxctl, scenario)

    assert frames[0]["type"] == "error"
    assert frames[0]["code"] == "invalid_token"
    assert codes == [4401]


def test_console_rejects_wrong_bearer_token(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    codes: list[int | None] = []

    async def scenario(conductor: Conductor) -> None:
        headers = {"Authorization": "Bearer not-a-token"}
        async with conductor.simulate_ws(console_path(session_id), headers=headers) as ws:
            await ws.receive_json()
            with pytest.raises(falcon.errors.WebSocketDisconnected):
                await ws.receive_json()
            codes.append(ws.close_code)

    run(foxctl, scenario)

    assert codes == [4401]


def test_console_token_opens_only_its_session(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    other_id = foxctl.create_session()
    issued = foxctl.call("POST", f"/api/sessions/{session_id}/console-token")
    token = issued.json["token"]
    outcomes: dict[str, Any] = {}

    async def scenario(conductor: Conductor) -> None:
        path = console_path(session_id)
        async with conductor.simulate_ws(path, query_string=f"token={token}") as ws:
            await ws.send_json({"type": "resume", "after": 0})
            outcomes["first"] = await next_event(ws)
        other = console_path(other_id)
        async with conductor.simulate_ws(other, query_string=f"token={token}") as ws:
            outcomes["other"] = await ws.receive_json()

    foxctl.post(session_id, "hello")
    run(foxctl, scenario)

    assert issued.status_code == 201
    assert issued.json["expires_in_s"] == 60
    assert outcomes["first"]["seq"] == 1
    assert outcomes["other"]["code"] == "invalid_token"


def test_console_rejects_foreign_origin(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    codes: list[int | None] = []

    async def scenario(conductor: Conductor) -> None:
        headers = {**foxctl.headers, "Origin": "https://evil.example", "Host": "127.0.0.1"}
        with pytest.raises(falcon.errors.WebSocketDisconnected):
            async with conductor.simulate_ws(console_path(session_id), headers=headers) as ws:
                codes.append(ws.close_code)
        codes.append(None)

    run(foxctl, scenario)

    assert codes == [None]


def test_console_accepts_same_host_origin(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    frames: list[Frame] = []

    async def scenario(conductor: Conductor) -> None:
        headers = {**foxctl.headers, "Origin": "http://falconframework.org"}
        async with conductor.simulate_ws(console_path(session_id), headers=headers) as ws:
            await ws.send_json({"type": "resume", "after": 0})
            frames.append(await next_event(ws))

    foxctl.post(session_id, "hello")
    run(foxctl, scenario)

    assert frames[0]["type"] == "message.created"


def test_console_malformed_frames_get_errors(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    replies: list[Frame] = []

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            for text in ("not json", "[1, 2]", '{"type": "dance"}', '{"type": "ask"}'):
                await ws.send_text(text)
                replies.append(await ws.receive_json())
            await ws.send_json({"type": "resume", "after": -1})
            replies.append(await ws.receive_json())

    run(foxctl, scenario)

    codes = [frame["code"] for frame in replies]
    assert all(frame["type"] == "error" for frame in replies)
    assert codes == [
        "malformed_frame",
        "malformed_frame",
        "unknown_frame_type",
        "invalid_frame",
        "invalid_frame",
    ]


def test_console_oversized_frame_closes_1009(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    outcome: dict[str, Any] = {}

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            await ws.send_json({"type": "ask", "content": "x" * (65 * 1024)})
            outcome["frame"] = await ws.receive_json()
            with pytest.raises(falcon.errors.WebSocketDisconnected):
                await ws.receive_json()
            outcome["code"] = ws.close_code

    run(foxctl, scenario)

    assert outcome["frame"]["code"] == "frame_too_large"
    assert outcome["code"] == 1009
    assert foxctl.messages(session_id) == []


def test_console_ask_streams_whole_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    outcome: dict[str, Any] = {}

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            await ws.send_json({"type": "ask", "content": "stream this", "client_id": "c1"})
            outcome["ack"], outcome["queued"] = await ack_and_events(ws, "turn.queued")
            await asyncio.to_thread(foxctl.run_pending)
            outcome["turn"] = await events_until(ws, "turn.succeeded")

    run(foxctl, scenario)

    received = outcome["queued"] + outcome["turn"]
    stored = foxctl.events(session_id)
    deltas = [e for e in received if e["type"] == "turn.delta"]
    assert outcome["ack"]["type"] == "ack"
    assert outcome["ack"]["client_id"] == "c1"
    assert persisted_seqs(received) == [e["seq"] for e in stored]
    assert "".join(d["text"] for d in deltas) == "echo: stream this"


def test_two_viewers_see_every_event(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    seen: list[list[Frame]] = []

    async def scenario(conductor: Conductor) -> None:
        # Without after=0 each socket starts at the latest event when the server reads
        # it, which may be after the message below was posted.
        path = console_path(session_id)
        from_start = {"headers": foxctl.headers, "query_string": "after=0"}
        async with (
            conductor.simulate_ws(path, **from_start) as first,
            conductor.simulate_ws(path, **from_start) as second,
        ):
            await post(conductor, foxctl, session_id, "hello")
            await asyncio.to_thread(foxctl.run_pending)
            for ws in (first, second):
                seen.append(await events_until(ws, "turn.succeeded"))

    run(foxctl, scenario)

    stored = [e["seq"] for e in foxctl.events(session_id)]
    assert persisted_seqs(seen[0]) == stored
    assert persisted_seqs(seen[1]) == stored


def test_resume_after_n_has_no_gap_or_duplicate(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "first")
    foxctl.run_pending()
    received: list[Frame] = []

    async def scenario(conductor: Conductor) -> None:
        path = console_path(session_id)
        async with conductor.simulate_ws(
            path, headers=foxctl.headers, query_string="after=3"
        ) as ws:
            received.extend(await events_until(ws, "turn.succeeded"))
            await post(conductor, foxctl, session_id, "second")
            await asyncio.to_thread(foxctl.run_pending)
            received.extend(await events_until(ws, "turn.succeeded"))

    run(foxctl, scenario)

    stored = [e["seq"] for e in foxctl.events(session_id)]
    assert persisted_seqs(received) == [seq for seq in stored if seq > 3]


def test_resume_frame_replays_from_sequence(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "first")
    foxctl.run_pending()
    received: list[Frame] = []

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            await ws.send_json({"type": "resume", "after": 0})
            received.extend(await events_until(ws, "turn.succeeded"))

    run(foxctl, scenario)

    stored = [e["seq"] for e in foxctl.events(session_id)]
    assert persisted_seqs(received) == stored


def test_slow_client_gets_error_and_1013(foxctl: Harness) -> None:
    configure_web(foxctl, ws_queue_events=5)
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")
    outcome: dict[str, Any] = {}
    delta = {"type": "turn.delta", "session_id": session_id, "after_seq": 2, "text": "x"}

    async def scenario(conductor: Conductor) -> None:
        path = console_path(session_id)
        async with conductor.simulate_ws(
            path, headers=foxctl.headers, query_string="after=0"
        ) as ws:
            await events_until(ws, "turn.queued")
            # More events than the queue can contain arrive before the feed runs again.
            for _ in range(20):
                foxctl.publisher.publish(session_id, delta)
            frames = []
            with pytest.raises(falcon.errors.WebSocketDisconnected):
                while True:
                    frames.append(await ws.receive_json())
            outcome["frames"] = frames
            outcome["code"] = ws.close_code

    run(foxctl, scenario)

    errors = [f for f in outcome["frames"] if f["type"] == "error"]
    assert len(outcome["frames"]) < 20
    assert errors[-1]["code"] == "slow_client"
    assert outcome["code"] == 1013


def test_cancel_frame_stops_queued_turn(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    outcome: dict[str, Any] = {}

    async def scenario(conductor: Conductor) -> None:
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            await ws.send_json({"type": "ask", "content": "never mind"})
            ack, _ = await ack_and_events(ws, "turn.queued")
            await ws.send_json({"type": "cancel"})
            outcome["ack"], events = await ack_and_events(ws, "turn.cancelled")
            outcome["event"] = events[-1]
            outcome["turn_id"] = ack["turn_id"]

    run(foxctl, scenario)

    assert outcome["ack"]["request"] == "cancel"
    assert outcome["ack"]["turn_id"] == outcome["turn_id"]
    assert outcome["event"]["type"] == "turn.cancelled"


def test_shutdown_closes_console_with_1012(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    codes: list[int | None] = []

    async def main() -> None:
        conductor = falcon.testing.ASGIConductor(foxctl.app)
        await conductor.__aenter__()
        async with conductor.simulate_ws(console_path(session_id), headers=foxctl.headers) as ws:
            await asyncio.sleep(0.05)
            await conductor.__aexit__(None, None, None)
            with pytest.raises(falcon.errors.WebSocketDisconnected):
                await asyncio.wait_for(ws.receive_json(), timeout=5)
            codes.append(ws.close_code)

    asyncio.run(main())

    assert codes == [1012]


def parse_sse(body: str) -> list[dict[str, str]]:
    messages = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            messages.append(fields)
    return messages


def test_sse_resumes_from_last_event_id(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "first")
    foxctl.run_pending()
    stored = [e["seq"] for e in foxctl.events(session_id)]
    body: list[str] = []

    async def scenario(conductor: Conductor) -> None:
        headers = {**foxctl.headers, "Accept": "text/event-stream", "Last-Event-ID": "2"}
        path = f"/api/sessions/{session_id}/events"
        async with conductor.simulate_get_stream(path, headers=headers) as stream:
            text = ""
            while "turn.succeeded" not in text:
                text += (await stream.stream.read()).decode()
            body.append(text)

    run(foxctl, scenario)

    messages = parse_sse(body[0])
    persisted = [m for m in messages if "id" in m]
    assert [int(m["id"]) for m in persisted] == [seq for seq in stored if seq > 2]
    assert json.loads(persisted[0]["data"])["seq"] == 3
    assert persisted[0]["event"] == json.loads(persisted[0]["data"])["type"]


def test_sse_sends_heartbeats(foxctl: Harness) -> None:
    configure_web(foxctl, sse_heartbeat_s=0.05)
    session_id = foxctl.create_session()
    body: list[str] = []

    async def scenario(conductor: Conductor) -> None:
        headers = {**foxctl.headers, "Accept": "text/event-stream"}
        path = f"/api/sessions/{session_id}/events"
        async with conductor.simulate_get_stream(path, headers=headers) as stream:
            text = ""
            while ": heartbeat" not in text:
                text += (await stream.stream.read()).decode()
            body.append(text)

    run(foxctl, scenario)

    assert ": heartbeat" in body[0]


def test_session_events_json_page(foxctl: Harness) -> None:
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")

    result = foxctl.call("GET", f"/api/sessions/{session_id}/events", params={"after": 1})

    assert result.status_code == 200
    assert [e["seq"] for e in result.json["items"]] == [2]


def test_session_events_unknown_session(foxctl: Harness) -> None:
    result = foxctl.call("GET", "/api/sessions/ses_missing/events")

    assert result.status_code == 404


def test_event_frames_encode_each_event_once() -> None:
    frames = EventFrames(size=2)
    event = {"type": "turn.delta", "text": "héllo", "after_seq": 3}
    first = frames.text(event)
    assert json.loads(first) == {"type": "event", "event": event}
    assert frames.text(event) is first
    # An equal but distinct object is encoded on its own, never mistaken for a cached one.
    twin = dict(event)
    assert frames.text(twin) == first
    # Evicted entries are encoded again when they come back.
    frames.text({"type": "x"})
    frames.text({"type": "y"})
    again = frames.text(event)
    assert again == first
    assert again is not first
