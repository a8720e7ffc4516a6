"""Chat adapters in process: webhooks on the real app, replies sent to a fake platform."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import httpx
import pytest
from sqlalchemy import update
from sqlmodel import func, select

from shared.chat import telegram
from shared.chat.adapters import make_reply_clients, selected_adapters
from shared.chat.errors import SignatureInvalid
from shared.chat.models import ChatConversation, ChatDelivery, ChatUpdate
from shared.chat.service import InboundMessage, accept_message, split_text
from shared.clock import Clock, ManualClock, system_clock
from shared.db import Database
from shared.events.live import LiveEvent
from shared.queues import CHAT_DELIVERY, TURNS
from shared.settings import Settings, SettingsError
from shared.turns.models import Turn
from shared.turns.service import record_reply, start_turn
from tests import chat_helpers as h
from tests.fakes.chat_platforms import FakePlatform
from tests.harness import Harness
from tests.processes import run_cli
from workers.chat_delivery import ChatDeliverer, DeliveryLater, DeliverySettings
from workers.reconciler import DeliveryReconciler


class NoFeed:
    def poll(self, timeout_s: float) -> list[LiveEvent]:
        return []

    def close(self) -> None:
        return None


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    fake = FakePlatform().start()
    yield fake
    fake.stop()


def chat_settings(settings: Settings, platform: FakePlatform, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "chat_adapters": "telegram,discord,teams",
        "telegram_bot_token": "123:abc",
        "telegram_webhook_secret": h.TELEGRAM_SECRET,
        "telegram_bot_username": "foxbot",
        "telegram_allowed_groups": "-100",
        "telegram_api_base": platform.base_url,
        "discord_application_id": "app-1",
        "discord_public_key": h.discord_public_hex(),
        "discord_api_base": platform.base_url,
        "teams_app_id": h.TEAMS_APP_ID,
        "teams_app_password": "teams-password",
        "teams_tenant_id": h.TEAMS_TENANT,
        "teams_openid_url": f"{platform.base_url}/openid",
        "teams_entra_openid_url": f"{platform.base_url}/{{tenant}}/entra/openid",
        "teams_token_url": f"{platform.base_url}/{{tenant}}/token",
        **overrides,
    }
    return Settings.model_validate({**settings.model_dump(), **values})


@pytest.fixture
def foxctl(settings: Settings, database: Database, platform: FakePlatform) -> Iterator[Harness]:
    platform.jwks = {"keys": [h.jwk("bf", "bf-1")]}
    platform.entra_jwks = {"keys": [h.jwk("entra", "entra-1")]}
    harness = Harness(chat_settings(settings, platform), database)
    harness.create_agent("assistant")
    yield harness


def deliverer(foxctl: Harness, wall_clock: Clock = system_clock) -> ChatDeliverer:
    clients = make_reply_clients(foxctl.settings, httpx.Client(timeout=5))
    return ChatDeliverer(
        foxctl.db,
        clients,
        lambda _: NoFeed(),
        DeliverySettings(edit_interval_s=0),
        wall_clock=wall_clock,
    )


def deliveries(foxctl: Harness) -> list[str]:
    queue = foxctl.broker.queues[CHAT_DELIVERY]
    found = []
    while not queue.empty():
        found.append(str(dramatiq.Message.decode(queue.get_nowait()).args[0]))
    return found


def deliver_all(foxctl: Harness) -> None:
    foxctl.run_pending()
    for delivery_id in deliveries(foxctl):
        deliverer(foxctl).deliver(delivery_id)


def count(db: Database, table: type) -> int:
    with db.read() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def nothing_enqueued(foxctl: Harness) -> bool:
    turns_empty = foxctl.broker.queues[TURNS].empty()
    return (
        turns_empty and foxctl.broker.queues[CHAT_DELIVERY].empty() and count(foxctl.db, Turn) == 0
    )


def telegram_post(
    foxctl: Harness, update: dict[str, Any], secret: str | None = h.TELEGRAM_SECRET
) -> Any:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return foxctl.client.simulate_post("/api/telegram/webhook", json=update, headers=headers)


# -- Telegram --------------------------------------------------------------------------


def test_telegram_update_edits_placeholder(
    foxctl: Harness, platform: FakePlatform, fake_model: Any
) -> None:
    # The fixture's harness has no model, so this one uses the fake model.
    harness = Harness(foxctl.settings, foxctl.db, model_url=fake_model.base_url)

    result = telegram_post(harness, h.telegram_update(1, "hello bot"))
    deliver_all(harness)

    assert result.status_code == 200
    assert count(harness.db, Turn) == 1
    methods = [c.path.rsplit("/", 1)[1] for c in platform.calls]
    assert methods == ["sendChatAction", "sendMessage", "editMessageText"]
    placeholder, final = platform.calls[1], platform.calls[2]
    assert placeholder.body["text"] == "…"
    assert final.body == {"chat_id": 42, "message_id": 100 + 1, "text": "echo: hello bot"}


def test_telegram_update_delivered_twice_runs_one_turn(foxctl: Harness) -> None:
    update = h.telegram_update(5, "hello")

    first = telegram_post(foxctl, update)
    second = telegram_post(foxctl, update)

    assert (first.status_code, second.status_code) == (200, 200)
    assert count(foxctl.db, Turn) == 1
    assert count(foxctl.db, ChatUpdate) == 1
    assert len(deliveries(foxctl)) == 1


def test_telegram_chat_keeps_one_session(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "one"))
    telegram_post(foxctl, h.telegram_update(2, "two"))
    telegram_post(foxctl, h.telegram_update(3, "three", chat_id=43))

    with foxctl.db.read() as db:
        conversations = db.exec(select(ChatConversation)).all()
    assert sorted(c.chat_id for c in conversations) == ["42", "43"]
    assert count(foxctl.db, Turn) == 3


def test_concurrent_first_messages_share_a_session(foxctl: Harness) -> None:
    inbound = [
        InboundMessage(platform="telegram", delivery_id=str(n), chat_id="42", text=f"m{n}")
        for n in range(4)
    ]
    barrier = threading.Barrier(len(inbound))

    def accept(message: InboundMessage) -> None:
        barrier.wait()
        with foxctl.db.write() as db:
            accept_message(db, message, agent="assistant")

    threads = [threading.Thread(target=accept, args=(m,)) for m in inbound]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with foxctl.db.read() as db:
        conversations = db.exec(select(ChatConversation)).all()
        sessions = {t.session_id for t in db.exec(select(Turn)).all()}
    assert len(conversations) == 1
    assert sessions == {conversations[0].session_id}
    assert count(foxctl.db, Turn) == 4


def test_deleted_session_gets_a_new_one(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "one"))
    [first] = foxctl.call("GET", "/api/sessions").json["items"]

    deleted = foxctl.call("DELETE", f"/api/sessions/{first['id']}")
    telegram_post(foxctl, h.telegram_update(2, "two"))

    [second] = foxctl.call("GET", "/api/sessions").json["items"]
    assert deleted.status_code == 204
    assert second["id"] != first["id"]
    assert [m["content"] for m in foxctl.messages(second["id"])] == ["two"]


@pytest.mark.parametrize(
    ("secret", "code"),
    [(None, "invalid_signature"), ("wrong", "invalid_signature"), ("", "invalid_signature")],
)
def test_telegram_bad_secret_is_refused(foxctl: Harness, secret: str | None, code: str) -> None:
    result = telegram_post(foxctl, h.telegram_update(1, "hi"), secret=secret)

    assert result.status_code == 401
    assert result.json["error"]["code"] == code
    assert nothing_enqueued(foxctl)


def test_telegram_unset_secret_fails_closed(
    foxctl: Harness, platform: FakePlatform, database: Database
) -> None:
    unset = chat_settings(foxctl.settings, platform, telegram_webhook_secret=None)

    with pytest.raises(SettingsError, match="FOXCTL_TELEGRAM_WEBHOOK_SECRET"):
        Harness(unset, database)
    with pytest.raises(SignatureInvalid, match="no Telegram webhook secret"):
        telegram.verify_secret("anything", None)
    with pytest.raises(SignatureInvalid):
        telegram.verify_secret("", "")
    assert nothing_enqueued(foxctl)


@pytest.mark.parametrize(
    ("text", "chat_id", "reply_to_bot", "answered"),
    [
        ("hello all", -100, False, False),
        ("@foxbot hello", -100, False, True),
        ("hello", -100, True, True),
        ("/ask what time is it", -100, False, True),
        ("/ask@otherbot what", -100, False, False),
        ("@foxbot hello", -200, False, False),
    ],
)
def test_telegram_group_rules(
    foxctl: Harness, text: str, chat_id: int, reply_to_bot: bool, answered: bool
) -> None:
    update = h.telegram_update(9, text, chat_id=chat_id, chat_type="supergroup")
    if reply_to_bot:
        update["message"]["reply_to_message"] = {"from": {"is_bot": True, "username": "foxbot"}}

    result = telegram_post(foxctl, update)

    assert result.status_code == 200
    assert count(foxctl.db, Turn) == (1 if answered else 0)


def test_telegram_ask_command_sends_its_argument(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "/ask@foxbot what is up"))

    [session] = foxctl.call("GET", "/api/sessions").json["items"]
    assert [m["content"] for m in foxctl.messages(session["id"])] == ["what is up"]


def test_unselected_adapter_answers_404(
    foxctl: Harness, platform: FakePlatform, database: Database
) -> None:
    harness = Harness(chat_settings(foxctl.settings, platform, chat_adapters="discord"), database)

    result = telegram_post(harness, h.telegram_update(1, "hi"))

    assert result.status_code == 404
    assert result.json["error"]["code"] == "adapter_not_enabled"


def test_missing_credentials_name_the_variable(foxctl: Harness, platform: FakePlatform) -> None:
    settings = chat_settings(foxctl.settings, platform, discord_public_key=None)

    with pytest.raises(SettingsError, match="FOXCTL_DISCORD_PUBLIC_KEY"):
        selected_adapters(settings)


def test_body_over_limit_is_refused(foxctl: Harness) -> None:
    update = h.telegram_update(1, "x" * (2 * 1024 * 1024 + 10))

    result = telegram_post(foxctl, update)

    assert result.status_code == 413
    assert nothing_enqueued(foxctl)


def test_rate_limited_reply_arrives_once(foxctl: Harness, platform: FakePlatform) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    with foxctl.db.write() as db:  # finish the turn without a model
        turn = db.exec(select(Turn)).one()
        start_turn(db, turn)
        record_reply(db, turn, "x" * 5000)
    [delivery_id] = deliveries(foxctl)
    platform.fail_next("editMessageText", retry_after_s=3)
    clock = ManualClock(time.time())

    with pytest.raises(DeliveryLater) as later:
        deliverer(foxctl, clock).deliver(delivery_id)
    deliverer(foxctl, clock).deliver(delivery_id)  # before Retry-After: skipped
    edits_before_retry = len(platform.calls_to("editMessageText"))
    clock.advance(3)
    deliverer(foxctl, clock).deliver(delivery_id)
    deliverer(foxctl, clock).deliver(delivery_id)

    assert later.value.delay_s == 3
    assert edits_before_retry == 1
    edits = platform.calls_to("editMessageText")
    sends = [c for c in platform.calls_to("sendMessage") if c.body["text"] != "…"]
    assert len(edits) == 2  # the refused one, then the one that arrived
    assert [len(c.body["text"]) for c in sends] == [5000 - len(edits[1].body["text"])]
    assert len(platform.calls_to("sendChatAction")) == 1


class ScriptedFeed:
    """Return one streamed piece per poll, then finish the turn in the database."""

    def __init__(self, db: Database, turn_id: str, pieces: list[str]) -> None:
        self._db = db
        self._turn_id = turn_id
        self._pieces = list(pieces)

    def poll(self, timeout_s: float) -> list[LiveEvent]:
        if self._pieces:
            piece = self._pieces.pop(0)
            return [{"type": "turn.delta", "turn_id": self._turn_id, "text": piece}]
        with self._db.write() as db:
            turn = db.get(Turn, self._turn_id)
            assert turn is not None
            if turn.status == "queued":
                start_turn(db, turn)
                record_reply(db, turn, "Hello world")
        return []

    def close(self) -> None:
        return None


def test_streamed_reply_is_edited_progressively(foxctl: Harness, platform: FakePlatform) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)
    with foxctl.db.read() as db:
        turn_id = db.exec(select(Turn)).one().id
    clients = make_reply_clients(foxctl.settings, httpx.Client(timeout=5))
    feed = ScriptedFeed(foxctl.db, turn_id, ["Hel", "lo wor"])
    chat = ChatDeliverer(foxctl.db, clients, lambda _: feed, DeliverySettings(edit_interval_s=0))

    chat.deliver(delivery_id)

    edits = [c.body["text"] for c in platform.calls_to("editMessageText")]
    assert edits == ["Hel", "Hello wor", "Hello world"]


def test_rejected_reply_is_marked_failed(foxctl: Harness, platform: FakePlatform) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)
    platform.fail_next("sendMessage", status=403)

    deliverer(foxctl).deliver(delivery_id)
    deliverer(foxctl).deliver(delivery_id)

    with foxctl.db.read() as db:
        delivery = db.get(ChatDelivery, delivery_id)
    assert delivery is not None
    assert delivery.status == "failed"
    assert len(platform.calls_to("sendMessage")) == 1


# -- lost delivery wake-ups -------------------------------------------------------------


class IdleFeed:
    """A live feed on which nothing arrives; each poll waits its whole timeout."""

    def poll(self, timeout_s: float) -> list[LiveEvent]:
        time.sleep(timeout_s)
        return []

    def close(self) -> None:
        return None


def finish_turn(db: Database, text: str) -> None:
    with db.write() as session:
        turn = session.exec(select(Turn)).one()
        start_turn(session, turn)
        record_reply(session, turn, text)


def age_deliveries(db: Database, seconds: float) -> None:
    table = ChatDelivery.__table__  # type: ignore[attr-defined]
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    with db.write() as session:
        session.exec(update(table).values(updated_at=past, created_at=past))


def delivery_row(db: Database, delivery_id: str) -> ChatDelivery:
    with db.read() as session:
        row = session.get(ChatDelivery, delivery_id)
    assert row is not None
    return row


def test_lost_delivery_is_sent_once_after_reconcile(
    foxctl: Harness, platform: FakePlatform
) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)  # drained: the broker lost the wake-up
    finish_turn(foxctl.db, "the answer")
    age_deliveries(foxctl.db, seconds=120)
    reconciler = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=15)

    recovered = reconciler.reconcile_once()
    again = reconciler.reconcile_once()
    redelivered = deliveries(foxctl)
    for queued_id in redelivered:
        deliverer(foxctl).deliver(queued_id)

    assert (recovered, again) == (1, 0)
    assert redelivered == [delivery_id]
    assert delivery_row(foxctl.db, delivery_id).status == "done"
    assert [c.body["text"] for c in platform.calls_to("sendMessage")] == ["…"]
    assert [c.body["text"] for c in platform.calls_to("editMessageText")] == ["the answer"]


def test_fresh_delivery_is_not_re_enqueued(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    deliveries(foxctl)

    recovered = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=15).reconcile_once()

    assert recovered == 0
    assert deliveries(foxctl) == []


def test_running_delivery_is_not_re_enqueued(foxctl: Harness, platform: FakePlatform) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)
    clients = make_reply_clients(foxctl.settings, httpx.Client(timeout=5))
    # A short claim makes the attempt write its row every 0.2 s while it follows the turn.
    fast = DeliverySettings(edit_interval_s=0, claim_ttl_s=0.6)
    running = ChatDeliverer(foxctl.db, clients, lambda _: IdleFeed(), fast)
    copy = ChatDeliverer(foxctl.db, clients, lambda _: IdleFeed(), fast)
    reconciler = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=0.25)
    thread = threading.Thread(target=running.deliver, args=(delivery_id,))
    thread.start()
    time.sleep(reconciler.stale_s * 1.5)  # longer than a delivery may go without writes

    recovered = reconciler.reconcile_once()
    copy.deliver(delivery_id)  # a duplicate wake-up while the first attempt runs
    finish_turn(foxctl.db, "the answer")
    thread.join(timeout=10)

    assert recovered == 0
    assert deliveries(foxctl) == []
    assert not thread.is_alive()
    assert delivery_row(foxctl.db, delivery_id).status == "done"
    assert len(platform.calls_to("sendChatAction")) == 1
    assert [c.body["text"] for c in platform.calls_to("sendMessage")] == ["…"]
    assert [c.body["text"] for c in platform.calls_to("editMessageText")] == ["the answer"]


def test_finished_delivery_is_left_alone(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)
    finish_turn(foxctl.db, "the answer")
    deliverer(foxctl).deliver(delivery_id)
    age_deliveries(foxctl.db, seconds=120)
    before = delivery_row(foxctl.db, delivery_id)

    recovered = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=15).reconcile_once()

    after = delivery_row(foxctl.db, delivery_id)
    assert recovered == 0
    assert deliveries(foxctl) == []
    assert after.status == "done"
    assert after.updated_at == before.updated_at


def test_day_old_pending_delivery_is_marked_failed(foxctl: Harness) -> None:
    telegram_post(foxctl, h.telegram_update(1, "hello"))
    [delivery_id] = deliveries(foxctl)
    age_deliveries(foxctl.db, seconds=DeliveryReconciler.GIVE_UP_AFTER_S + 60)

    recovered = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=15).reconcile_once()

    assert recovered == 0
    assert deliveries(foxctl) == []
    assert delivery_row(foxctl.db, delivery_id).status == "failed"


def test_reconcile_pass_is_bounded(foxctl: Harness) -> None:
    for update_id in range(3):
        telegram_post(foxctl, h.telegram_update(update_id, f"hello {update_id}"))
    deliveries(foxctl)
    age_deliveries(foxctl.db, seconds=120)
    reconciler = DeliveryReconciler(foxctl.db, foxctl.enqueuer, interval_s=15)
    reconciler.BATCH = 2

    first = reconciler.reconcile_once()
    second = reconciler.reconcile_once()

    assert (first, second) == (2, 1)
    assert len(set(deliveries(foxctl))) == 3


def test_split_text_keeps_every_character() -> None:
    text = "word " * 1000

    pieces = split_text(text, 2000)

    assert all(len(p) <= 2000 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


# -- Discord ---------------------------------------------------------------------------


def discord_post(foxctl: Harness, body: bytes, headers: dict[str, str]) -> Any:
    return foxctl.client.simulate_post("/api/discord/interactions", body=body, headers=headers)


def ask_body(interaction_id: str, prompt: str) -> bytes:
    # Unusual whitespace and \\u escapes: the signature covers these exact bytes.
    escaped = json.dumps(prompt)
    return (
        f'{{ "type" : 2,\n\t"id":"{interaction_id}", "application_id":"app-1",'
        f' "token":"tok-{interaction_id}",\n  "channel_id":"chan-1", "guild_id":"guild-1",\n'
        f'  "data":{{"name":"ask","options":[{{"name":"prompt","type":3,'
        f'"value":{escaped}}}]}}  }}\n'
    ).encode()


def test_discord_ping_gets_pong(foxctl: Harness) -> None:
    body = b'{"type":1}'

    result = discord_post(foxctl, body, h.discord_headers(body))

    assert result.status_code == 200
    assert result.json == {"type": 1}


def test_discord_ask_is_deferred_then_edited(
    foxctl: Harness, platform: FakePlatform, fake_model: Any
) -> None:
    harness = Harness(foxctl.settings, foxctl.db, model_url=fake_model.base_url)
    body = ask_body("int-1", "héllo ☃")

    result = discord_post(harness, body, h.discord_headers(body))
    again = discord_post(harness, body, h.discord_headers(body))
    deliver_all(harness)

    assert result.json == {"type": 5}
    assert again.json == {"type": 5}
    assert count(harness.db, Turn) == 1
    [edit] = platform.calls_to("/messages/@original", "PATCH")
    assert edit.path == "/webhooks/app-1/tok-int-1/messages/@original"
    assert edit.body == {"content": "echo: héllo ☃"}


@pytest.mark.parametrize("case", ["bad_signature", "missing_headers", "stale", "other_body"])
def test_discord_bad_requests_are_refused(foxctl: Harness, case: str) -> None:
    body = ask_body("int-2", "hi")
    headers = h.discord_headers(body)
    if case == "bad_signature":
        headers["X-Signature-Ed25519"] = "00" * 64
    if case == "missing_headers":
        headers = {"Content-Type": "application/json"}
    if case == "stale":
        headers = h.discord_headers(body, timestamp=int(time.time()) - 3600)
    if case == "other_body":
        body = body.replace(b"hi", b"ho")

    result = discord_post(foxctl, body, headers)

    assert result.status_code == 401
    assert nothing_enqueued(foxctl)


# -- Teams -----------------------------------------------------------------------------


def teams_post(foxctl: Harness, activity: dict[str, Any], token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return foxctl.client.simulate_post("/api/teams/messages", json=activity, headers=headers)


def test_teams_message_is_answered_through_the_connector(
    foxctl: Harness, platform: FakePlatform, fake_model: Any
) -> None:
    harness = Harness(foxctl.settings, foxctl.db, model_url=fake_model.base_url)
    service_url = f"{platform.base_url}/teams/"
    activity = h.teams_activity("act-1", "hello teams", service_url=service_url)
    token = h.teams_token(service_url=service_url)

    first = teams_post(harness, activity, token)
    second = teams_post(harness, activity, token)
    deliver_all(harness)

    assert (first.status_code, second.status_code) == (200, 200)
    assert count(harness.db, Turn) == 1
    [token_call] = platform.calls_to("/token")
    assert "grant_type=client_credentials" in token_call.body
    replies = platform.calls_to("/v3/conversations/")
    assert [c.method for c in replies] == ["POST", "POST", "PUT"]
    assert replies[0].body["type"] == "typing"
    assert replies[2].body["text"] == "echo: hello teams"
    assert all(c.headers["authorization"] == "Bearer connector-token" for c in replies)
    with harness.db.read() as db:
        [conversation] = db.exec(select(ChatConversation)).all()
    assert conversation.reference["service_url"] == service_url


def test_teams_single_tenant_token_is_accepted(foxctl: Harness) -> None:
    token = h.teams_token(
        issuer=f"https://sts.windows.net/{h.TEAMS_TENANT}/", key="entra", kid="entra-1"
    )

    result = teams_post(foxctl, h.teams_activity("act-2", "hi"), token)

    assert result.status_code == 200
    assert count(foxctl.db, Turn) == 1


TEAMS_REJECTIONS = {
    "wrong_audience": lambda: h.teams_token(audience="someone-else"),
    "expired": lambda: h.teams_token(expires_in_s=-3600),
    "unknown_kid": lambda: h.teams_token(key="other", kid="unknown-1"),
    "none_algorithm": lambda: _unsigned_token(),
    "hs256": lambda: _hs256_token(),
    "malformed": lambda: "not.a.jwt",
    "service_url_mismatch": lambda: h.teams_token(service_url="https://elsewhere.example/"),
    "other_tenant": lambda: h.teams_token(
        issuer="https://sts.windows.net/99999999-0000-0000-0000-000000000000/",
        key="entra",
        kid="entra-1",
    ),
    "missing": lambda: None,
}


@pytest.mark.parametrize("case", sorted(TEAMS_REJECTIONS))
def test_teams_bad_tokens_are_refused(foxctl: Harness, case: str) -> None:
    token = TEAMS_REJECTIONS[case]()

    result = teams_post(foxctl, h.teams_activity("act-3", "hi"), token)

    assert result.status_code == 401, result.json
    assert nothing_enqueued(foxctl)


def test_teams_key_refresh_throttled(foxctl: Harness, platform: FakePlatform) -> None:
    token = h.teams_token(key="other", kid="unknown-1")

    for _ in range(3):
        teams_post(foxctl, h.teams_activity("act-4", "hi"), token)

    assert len(platform.calls_to("/jwks", "GET")) == 1


def _unsigned_token() -> str:
    import base64

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": "https://api.botframework.com", "aud": h.TEAMS_APP_ID, "exp": 2**31}
    return f"{part({'alg': 'none', 'kid': 'bf-1'})}.{part(claims)}."


def _hs256_token() -> str:
    import jwt

    claims = {"iss": "https://api.botframework.com", "aud": h.TEAMS_APP_ID, "exp": 2**31}
    return jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": "bf-1"})


# -- command line ----------------------------------------------------------------------


def test_cli_sets_the_telegram_webhook(platform: FakePlatform, sqlite_env: dict[str, str]) -> None:
    env = {
        **sqlite_env,
        "FOXCTL_TELEGRAM_BOT_TOKEN": "123:abc",
        "FOXCTL_TELEGRAM_WEBHOOK_SECRET": h.TELEGRAM_SECRET,
        "FOXCTL_TELEGRAM_API_BASE": platform.base_url,
    }

    result = run_cli(
        ["chat", "telegram", "set-webhook", "https://bot.example/api/telegram/webhook"], env
    )

    assert result.returncode == 0, result.stderr
    [call] = platform.calls_to("/setWebhook")
    assert call.path == "/bot123:abc/setWebhook"
    assert call.body["url"] == "https://bot.example/api/telegram/webhook"
    assert call.body["secret_token"] == h.TELEGRAM_SECRET
    assert "123:abc" not in result.stdout + result.stderr


def test_cli_registers_the_discord_command(
    platform: FakePlatform, sqlite_env: dict[str, str]
) -> None:
    env = {
        **sqlite_env,
        "FOXCTL_DISCORD_APPLICATION_ID": "app-1",
        "FOXCTL_DISCORD_BOT_TOKEN": "bot-token",
        "FOXCTL_DISCORD_API_BASE": platform.base_url,
    }

    result = run_cli(["chat", "discord", "register-commands"], env)

    assert result.returncode == 0, result.stderr
    [call] = platform.calls_to("/applications/app-1/commands", "PUT")
    assert call.headers["authorization"] == "Bot bot-token"
    assert [command["name"] for command in call.body] == ["ask"]


def test_cli_chat_errors_are_one_line(sqlite_env: dict[str, str]) -> None:
    result = run_cli(["chat", "discord", "register-commands"], sqlite_env)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "FOXCTL_DISCORD_APPLICATION_ID" in result.stderr


def test_web_serve_missing_credentials(
    sqlite_env: dict[str, str],
) -> None:
    result = run_cli(["web", "serve", "--chat", "telegram"], sqlite_env)

    assert result.returncode == 1
    assert "FOXCTL_TELEGRAM_BOT_TOKEN" in result.stderr
    assert result.stderr.strip().count("\n") == 0
