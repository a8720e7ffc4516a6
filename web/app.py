"""Build the Falcon ASGI app from settings and backing clients."""

from __future__ import annotations

import secrets
from typing import Any

import falcon
import falcon.asgi
import structlog
from dramatiq.broker import Broker

from shared.broker import make_broker
from shared.cas.stores import make_artifact_store
from shared.chat.adapters import selected_adapters
from shared.db import Database, make_engine
from shared.events.fanout import make_event_hub, make_publisher
from shared.events.live import EventPublisher
from shared.queues import Enqueuer
from shared.retrieval.exchange import make_search_exchange
from shared.retrieval.vectors import verify_vector_support
from shared.settings import Settings
from shared.telemetry import flush_tracing
from web import errors
from web.context import WebContext
from web.drain import DrainState
from web.middleware import BearerAuth, BodyLimit, RequestContext, RequestTracing
from web.resources.agents import (
    AgentResource,
    AgentsResource,
    AgentStartResource,
    AgentStopResource,
)
from web.resources.cas import ArtifactPinResource, ArtifactResource, ArtifactsResource
from web.resources.chat import (
    DiscordInteractionsResource,
    TeamsMessagesResource,
    TelegramWebhookResource,
)
from web.resources.console import ConsoleResource
from web.resources.events import EventsResource
from web.resources.health import HealthResource, ReadyResource
from web.resources.index import IndexResource, SearchResource
from web.resources.jobs import JobsResource
from web.resources.live import ConsoleTokenResource, SessionEventsResource
from web.resources.metrics import MetricsResource
from web.resources.openapi import OpenApiResource
from web.resources.page import add_console_routes
from web.resources.sessions import SessionMessagesResource, SessionResource, SessionsResource
from web.resources.turns import TurnCancelResource, TurnResource
from web.routes import ROUTES, openapi_document

log = structlog.get_logger(__name__)


class Lifespan:
    """Start and stop per-process background work with the ASGI lifespan."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def process_startup(self, scope: Any, event: Any) -> None:
        settings = self._ctx.settings
        # Fails startup when FOXCTL_POSTGRES_REQUIRE_VECTOR=true and pgvector is missing.
        verify_vector_support(self._ctx.db.engine, required=settings.postgres_require_vector)
        await self._ctx.start()
        log.info(
            "web process started",
            auth=self._ctx.settings.auth,
            db_driver=self._ctx.settings.db_driver,
        )

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        await self._ctx.stop()
        # The last requests' spans are still buffered; export them before the exit.
        flush_tracing()
        log.info("web process stopped")


def build_context(
    settings: Settings,
    *,
    db: Database | None = None,
    broker: Broker | None = None,
    publisher: EventPublisher | None = None,
) -> WebContext:
    """Build the context; ``publisher`` is the in-process one shared with a worker, if any."""
    owns_db = db is None
    db = db or Database(make_engine(settings))
    broker = broker or make_broker(settings)
    publisher = publisher or make_publisher(settings)
    # One thread per pooled connection: more threads would only queue on the pool.
    io_threads = settings.postgres_max_conns if settings.db_driver == "postgres" else 8
    return WebContext(
        settings=settings,
        db=db,
        broker=broker,
        enqueuer=Enqueuer(broker),
        drain=DrainState(settings.run_dir),
        publisher=publisher,
        hub=make_event_hub(settings, publisher),
        console_secret=console_secret(settings),
        searches=make_search_exchange(settings),
        io_threads=io_threads,
        owns_db=owns_db,
    )


def console_secret(settings: Settings) -> bytes:
    if settings.console_token_secret is not None:
        return settings.console_token_secret.get_secret_value().encode()
    if settings.web_concurrency > 1 or not settings.broker_url.startswith("memory://"):
        log.warning(
            "FOXCTL_CONSOLE_TOKEN_SECRET is not set; console tokens work only on the "
            "process that issued them, so set it when running several web processes"
        )
    return secrets.token_bytes(32)


def create_app(ctx: WebContext) -> falcon.asgi.App[Any, Any]:
    middleware: list[Any] = [
        Lifespan(ctx),
        RequestContext(ctx),
        BodyLimit(ctx.settings.max_body_bytes),
    ]
    if ctx.settings.auth == "on":
        middleware.append(BearerAuth(ctx))
    else:
        log.warning(
            "authentication is OFF (FOXCTL_AUTH=off): anyone who can reach this "
            "port can use the API"
        )
    # After authentication, which decides whether an inbound traceparent is trusted.
    middleware.append(RequestTracing(ctx.settings.trace_inbound))

    app = falcon.asgi.App(middleware=middleware)
    errors.install(app)
    resources = _resources(ctx)
    for route in ROUTES:
        app.add_route(route.path, resources[route.resource])
    add_console_routes(app)
    return app


def _resources(ctx: WebContext) -> dict[str, object]:
    store = make_artifact_store(ctx.settings)
    chat = selected_adapters(ctx.settings)
    if chat:
        log.info("chat adapters enabled", adapters=sorted(chat))
    return {
        "health": HealthResource(),
        "ready": ReadyResource(ctx),
        "metrics": MetricsResource(ctx),
        "openapi": OpenApiResource(openapi_document()),
        "agents": AgentsResource(ctx),
        "agent": AgentResource(ctx),
        "agent_stop": AgentStopResource(ctx),
        "agent_start": AgentStartResource(ctx),
        "sessions": SessionsResource(ctx),
        "session": SessionResource(ctx),
        "session_messages": SessionMessagesResource(ctx),
        "session_events": SessionEventsResource(ctx),
        "console_token": ConsoleTokenResource(ctx),
        "console": ConsoleResource(ctx),
        "turn": TurnResource(ctx),
        "turn_cancel": TurnCancelResource(ctx),
        "events": EventsResource(ctx),
        "jobs": JobsResource(ctx),
        "index": IndexResource(ctx),
        "search": SearchResource(ctx),
        "artifacts": ArtifactsResource(ctx, store),
        "artifact": ArtifactResource(ctx, store),
        "artifact_pin": ArtifactPinResource(ctx, pinned=True),
        "artifact_unpin": ArtifactPinResource(ctx, pinned=False),
        "telegram_webhook": TelegramWebhookResource(ctx, chat),
        "discord_interactions": DiscordInteractionsResource(ctx, chat),
        "teams_messages": TeamsMessagesResource(ctx, chat),
    }


__all__ = ["build_context", "create_app"]
