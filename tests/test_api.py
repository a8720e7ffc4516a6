"""HTTP API behaviour on both database drivers, with the real app and a StubBroker."""

from __future__ import annotations

from collections.abc import Iterator

import falcon.inspect
import pytest
from sqlmodel import func, select

from shared.agents.models import Agent
from shared.db import Database
from shared.events.models import Event
from shared.sessions.models import AgentSession, Message
from shared.settings import Settings
from shared.turns.models import Turn
from tests.harness import Harness


@pytest.fixture
def foxctl(settings: Settings, database: Database) -> Iterator[Harness]:
    yield Harness(settings.model_copy(update={"max_body_bytes": 4096}), database)


def row_counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {
            table.__name__: session.exec(select(func.count()).select_from(table)).one()
            for table in (Agent, AgentSession, Message, Turn, Event)
        }


def test_message_post_commits_and_enqueues(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()

    result = foxctl.post(session_id, "hello")

    assert result.status_code == 202
    assert result.json["status"] == "queued"
    assert foxctl.turn(result.json["turn_id"])["message_id"] == result.json["message_id"]
    assert foxctl.wake_ups() == [session_id]
    assert [e["type"] for e in foxctl.events(session_id)] == ["message.created", "turn.queued"]


def test_idempotency_key_replays_first_post(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    key = {"Idempotency-Key": "retry-1"}

    first = foxctl.post(session_id, "hello", headers=key)
    second = foxctl.post(session_id, "hello", headers=key)

    assert second.status_code == 202
    assert second.json["replayed"] is True
    assert second.json["turn_id"] == first.json["turn_id"]
    assert len(foxctl.messages(session_id)) == 1


def test_idempotency_key_with_other_content_conflicts(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello", headers={"Idempotency-Key": "k"})

    result = foxctl.post(session_id, "other", headers={"Idempotency-Key": "k"})

    assert result.status_code == 409
    assert result.json["error"]["code"] == "idempotency_key_reused"
    assert len(foxctl.messages(session_id)) == 1


def test_agent_crud(foxctl: Harness) -> None:
    agent = foxctl.create_agent("writer", system_prompt="Be brief.", max_iterations=3)

    changed = foxctl.call("PATCH", f"/api/agents/{agent['id']}", json={"role": "reviewer"})
    listed = foxctl.call("GET", "/api/agents")
    deleted = foxctl.call("DELETE", f"/api/agents/{agent['id']}")
    missing = foxctl.call("GET", f"/api/agents/{agent['id']}")

    assert changed.json["role"] == "reviewer"
    assert changed.json["max_iterations"] == 3
    assert [a["name"] for a in listed.json["items"]] == ["writer"]
    assert deleted.status_code == 204
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "agent_not_found"


def test_agent_name_must_be_unique(foxctl: Harness) -> None:
    foxctl.create_agent("twin")

    result = foxctl.call("POST", "/api/agents", json={"name": "twin", "role": "coder"})

    assert result.status_code == 409
    assert "twin" in result.json["error"]["message"]


def test_agent_with_sessions_cannot_be_deleted(foxctl: Harness) -> None:
    agent = foxctl.create_agent()
    foxctl.create_session()

    result = foxctl.call("DELETE", f"/api/agents/{agent['id']}")

    assert result.status_code == 409
    assert result.json["error"]["code"] == "agent_in_use"


def test_session_delete_removes_its_rows(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    foxctl.post(session_id, "hello")

    result = foxctl.call("DELETE", f"/api/sessions/{session_id}")

    assert result.status_code == 204
    counts = row_counts(foxctl.db)
    assert counts == {"Agent": 1, "AgentSession": 0, "Message": 0, "Turn": 0, "Event": 0}


def test_list_pages_with_cursor(foxctl: Harness) -> None:
    for index in range(5):
        foxctl.create_agent(f"agent-{index}")

    first = foxctl.call("GET", "/api/agents", params={"limit": 3})
    second = foxctl.call(
        "GET", "/api/agents", params={"limit": 3, "cursor": first.json["next_cursor"]}
    )

    assert len(first.json["items"]) == 3
    assert [a["name"] for a in second.json["items"]] == ["agent-3", "agent-4"]
    assert second.json["next_cursor"] is None


def test_events_filter_by_type_and_sequence(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    foxctl.post(session_id, "one")
    foxctl.post(session_id, "two")

    queued = foxctl.call(
        "GET", "/api/events", params={"session_id": session_id, "type": "turn.queued"}
    )
    after = foxctl.call("GET", "/api/events", params={"session_id": session_id, "after": 2})

    assert [e["seq"] for e in queued.json["items"]] == [2, 4]
    assert [e["seq"] for e in after.json["items"]] == [3, 4]


# -- bad input: a clear 4xx and nothing written ----------------------------------------

BAD_BODIES = [
    ("malformed JSON", b'{"content": "hi"', 400, "malformed_json"),
    ("unknown field", b'{"content": "hi", "colour": "red"}', 422, "invalid_body"),
    ("wrong type", b'{"content": 42}', 422, "invalid_body"),
    ("missing field", b"{}", 422, "invalid_body"),
    ("empty content", b'{"content": ""}', 422, "invalid_body"),
    ("not an object", b'["hi"]', 422, "invalid_body"),
    ("empty body", b"", 400, "empty_body"),
    ("blank content", b'{"content": "  \\n "}', 422, "invalid_body"),
    ("NUL character", b'{"content": "a\\u0000b"}', 422, "invalid_body"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES]
)
def test_bad_message_body_writes_nothing(
    foxctl: Harness, case: str, body: bytes, status: int, code: str
) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    before = row_counts(foxctl.db)

    result = foxctl.call(
        "POST",
        f"/api/sessions/{session_id}/messages",
        body=body,
        headers={"Content-Type": "application/json"},
    )

    assert result.status_code == status
    assert result.json["error"]["code"] == code
    assert result.json["error"]["message"]
    assert row_counts(foxctl.db) == before
    assert foxctl.wake_ups() == []


def test_invalid_body_names_field(foxctl: Harness) -> None:
    result = foxctl.call("POST", "/api/agents", json={"name": "x", "role": "pilot"})

    assert result.status_code == 422
    assert result.json["error"]["details"]["problems"][0]["field"] == "role"
    assert "role" in result.json["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "nul", "role": "coder", "system_prompt": "a\u0000b"},
        {"name": "inf", "role": "coder", "model_settings": {"temperature": float("inf")}},
        {"name": "nan", "role": "coder", "model_settings": {"nested": [float("nan")]}},
    ],
    ids=["nul-prompt", "infinite-setting", "nan-setting"],
)
def test_unstorable_agent_fields_get_422(foxctl: Harness, body: dict[str, object]) -> None:
    import json

    result = foxctl.call(
        "POST",
        "/api/agents",
        body=json.dumps(body, allow_nan=True),
        headers={"Content-Type": "application/json"},
    )

    assert result.status_code == 422
    assert row_counts(foxctl.db)["Agent"] == 0


def test_oversize_body_gets_413(foxctl: Harness) -> None:
    foxctl.create_agent()
    session_id = foxctl.create_session()
    before = row_counts(foxctl.db)

    result = foxctl.post(session_id, "x" * 5000)

    assert result.status_code == 413
    assert result.json["error"]["code"] == "body_too_large"
    assert "4096" in result.json["error"]["message"]
    assert row_counts(foxctl.db) == before


def test_missing_session_gets_404(foxctl: Harness) -> None:
    result = foxctl.post("ses_missing", "hello")

    assert result.status_code == 404
    assert result.json["error"]["code"] == "session_not_found"
    assert "ses_missing" in result.json["error"]["message"]
    assert foxctl.wake_ups() == []


def test_session_for_missing_agent_gets_404(foxctl: Harness) -> None:
    before = row_counts(foxctl.db)

    result = foxctl.call("POST", "/api/sessions", json={"agent_id": "nobody"})

    assert result.status_code == 404
    assert result.json["error"]["code"] == "agent_not_found"
    assert row_counts(foxctl.db) == before


def test_wrong_content_type_gets_415(foxctl: Harness) -> None:
    result = foxctl.call(
        "POST", "/api/agents", body="name=x", headers={"Content-Type": "text/plain"}
    )

    assert result.status_code == 415


def test_invalid_query_parameter_gets_422(foxctl: Harness) -> None:
    result = foxctl.call("GET", "/api/agents", params={"limit": "many"})

    assert result.status_code == 422
    assert result.json["error"]["message"] == (
        "invalid query parameter limit='many': expected an integer from 1 to 500"
    )


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("Bearer fox_wrong", "invalid_token"),
        ("Basic dXNlcjpwdw==", "invalid_token"),
        ("Bearer ", "invalid_token"),
    ],
)
def test_bad_token_gets_401_and_writes_nothing(
    foxctl: Harness, header: str | None, code: str
) -> None:
    before = row_counts(foxctl.db)
    headers = {"Authorization": header} if header else {}

    result = foxctl.client.simulate_post(
        "/api/agents", json={"name": "x", "role": "coder"}, headers=headers
    )

    assert result.status_code == 401
    assert result.json["error"]["code"] == code
    assert result.headers["WWW-Authenticate"].startswith("Bearer")
    assert row_counts(foxctl.db) == before


def test_revoked_token_is_refused(foxctl: Harness) -> None:
    from shared.auth.service import create_token, revoke_token

    with foxctl.db.write() as db:
        row, token = create_token(db, "short-lived")
        revoke_token(db, row.id)

    result = foxctl.client.simulate_get("/api/agents", headers={"Authorization": f"Bearer {token}"})

    assert result.status_code == 401


def test_probes_need_no_token(foxctl: Harness) -> None:
    health = foxctl.client.simulate_get("/healthz")
    ready = foxctl.client.simulate_get("/readyz")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json["checks"] == {"draining": "ok", "database": "ok", "broker": "ok"}


def test_readyz_reports_unmigrated_database(settings: Settings) -> None:
    from shared.db import make_engine
    from web.app import build_context, create_app

    empty = Database(make_engine(settings))
    client = falcon.testing.TestClient(create_app(build_context(settings, db=empty)))

    result = client.simulate_get("/readyz")
    empty.dispose()

    assert result.status_code == 503
    assert result.json["status"] == "not_ready"
    assert "foxctl migrate" in result.json["checks"]["database"]


def test_openapi_documents_every_route(foxctl: Harness) -> None:
    spec = foxctl.call("GET", "/api/openapi.json").json
    # OpenAPI has no WebSocket method; a WebSocket route is documented as its GET upgrade.
    served = {
        (route.path, "get" if method.method == "WEBSOCKET" else method.method.lower())
        for route in falcon.inspect.inspect_routes(foxctl.app)
        for method in route.methods
        if not method.internal
        # The browser console's page is not part of the API.
        and route.path != "/"
    }

    documented = {(path, method) for path, item in spec["paths"].items() for method in item}

    assert documented == served
    assert "MessageCreate" in spec["components"]["schemas"]
