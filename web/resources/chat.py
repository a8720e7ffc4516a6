"""Chat webhooks: Telegram updates, Discord interactions, Teams activities.

Each verifies its platform's signature before reading the body as JSON, stores the
message with its turn and a pending reply in one transaction, wakes a worker and a
chat-delivery worker, and responds at once. A delivery id seen before (a retry, or the
same update on another replica) stores nothing and gets the same answer.
"""

from __future__ import annotations

import json
from typing import Any

import falcon
import falcon.asgi
import structlog
from sqlalchemy.exc import IntegrityError

from shared.chat import discord, telegram
from shared.chat.errors import SignatureInvalid
from shared.chat.models import Platform
from shared.chat.service import Accepted, InboundMessage, accept_message, delivery_seen
from shared.chat.teams import TeamsTokenVerifier, parse_activity
from shared.events.live import publish_all
from shared.events.service import take_appended
from shared.queues import DELIVER_CHAT_REPLY
from shared.sessions.models import BusyPolicy
from web.context import WebContext
from web.errors import ApiError
from web.middleware import too_large

log = structlog.get_logger(__name__)


class ChatEndpoint:
    """Base of the three webhooks: the adapter switch, the body limit, message intake."""

    platform: Platform

    def __init__(self, ctx: WebContext, enabled: frozenset[str]) -> None:
        self._ctx = ctx
        self._enabled = self.platform.value in enabled

    def _require_enabled(self) -> None:
        if not self._enabled:
            name = self.platform.value
            raise ApiError(
                falcon.HTTP_404,
                "adapter_not_enabled",
                f"the {name} chat adapter is not enabled on this server; start it with "
                f"`foxctl web serve --chat {name}` or FOXCTL_CHAT_ADAPTERS={name}",
            )

    async def _read_raw(self, req: falcon.asgi.Request) -> bytes:
        limit = self._ctx.settings.chat_max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise too_large(limit)
        raw = await req.stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large(limit)
        return raw

    async def _accept(self, inbound: InboundMessage) -> Accepted | None:
        accepted = await self._ctx.run(lambda: self._store(inbound))
        if accepted is None:
            log.info(
                "chat delivery seen before; ignored",
                platform=inbound.platform,
                delivery_id=inbound.delivery_id,
            )
            return None
        log.info(
            "chat message accepted",
            platform=inbound.platform,
            session_id=accepted.submission.message.session_id,
            turn_id=accepted.submission.turn.id,
        )
        await self._ctx.run(lambda: self._wake(accepted))
        return accepted

    def _store(self, inbound: InboundMessage) -> Accepted | None:
        settings = self._ctx.settings
        agent = settings.chat_agent_for(inbound.platform, inbound.chat_id)
        policy = BusyPolicy(settings.default_busy_policy)
        try:
            with self._ctx.db.write() as db:
                accepted = accept_message(db, inbound, agent=agent, default_policy=policy)
            events = take_appended(db)
        except IntegrityError:
            # Another replica stored the same delivery id while this one waited on it.
            if self._seen(inbound):
                return None
            raise
        if accepted is not None:
            publish_all(self._ctx.publisher, accepted.submission.message.session_id, events)
        return accepted

    def _seen(self, inbound: InboundMessage) -> bool:
        with self._ctx.db.read() as db:
            return delivery_seen(db, inbound.platform, inbound.delivery_id)

    def _wake(self, accepted: Accepted) -> None:
        session_id = accepted.submission.message.session_id
        # A failed enqueue is recovered from the database: the reconcilers re-send both
        # the turn's and the delivery's wake-up.
        try:
            self._ctx.enqueuer.wake_session(session_id)
            self._ctx.enqueuer.send(DELIVER_CHAT_REPLY, accepted.delivery_id)
        except Exception as error:
            log.warning("enqueue failed", session_id=session_id, error=str(error))


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(
            falcon.HTTP_400, "malformed_json", "the request body is not valid JSON"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(falcon.HTTP_400, "malformed_json", "the request body must be an object")
    return body


class TelegramWebhookResource(ChatEndpoint):
    platform = Platform.telegram

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._require_enabled()
        settings = self._ctx.settings
        secret = settings.telegram_webhook_secret
        telegram.verify_secret(
            req.get_header(telegram.SECRET_HEADER),
            secret.get_secret_value() if secret is not None else None,
        )
        update = _parse_json(await self._read_raw(req))

        inbound = telegram.parse_update(
            update,
            bot_username=settings.telegram_bot_username,
            allowed_groups=settings.telegram_group_ids,
        )
        if inbound is not None:
            await self._accept(inbound)
        resp.media = {"ok": True}


class DiscordInteractionsResource(ChatEndpoint):
    platform = Platform.discord

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._require_enabled()
        settings = self._ctx.settings
        raw = await self._read_raw(req)
        discord.verify_signature(
            settings.discord_public_key or "",
            req.get_header(discord.SIGNATURE_HEADER),
            req.get_header(discord.TIMESTAMP_HEADER),
            raw,
            max_skew_s=settings.discord_max_skew_s,
        )
        interaction = _parse_json(raw)

        if interaction.get("type") == discord.PING:
            resp.media = {"type": discord.PONG}
            return
        inbound = discord.parse_interaction(interaction)
        if inbound is None:
            resp.media = discord.ephemeral("Unknown command: this bot supports only /ask.")
            return
        await self._accept(inbound)
        # A retried interaction gets the same deferred response, because its reply is on its way.
        resp.media = {"type": discord.DEFERRED_CHANNEL_MESSAGE}


class TeamsMessagesResource(ChatEndpoint):
    platform = Platform.teams

    def __init__(self, ctx: WebContext, enabled: frozenset[str]) -> None:
        super().__init__(ctx, enabled)
        self._verifier = TeamsTokenVerifier.from_settings(ctx.settings) if self._enabled else None

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._require_enabled()
        assert self._verifier is not None
        raw = await self._read_raw(req)
        activity = _parse_json(raw)
        header = req.get_header("Authorization")
        verifier = self._verifier
        await self._ctx.run(lambda: verifier.verify(header, activity.get("serviceUrl")))

        inbound = parse_activity(activity)
        if inbound is not None:
            await self._accept(inbound)
        resp.status = falcon.HTTP_200
        resp.media = {}


__all__ = [
    "DiscordInteractionsResource",
    "SignatureInvalid",
    "TeamsMessagesResource",
    "TelegramWebhookResource",
]
