"""Session events as Server-Sent Events, and console tokens for the WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import falcon
import falcon.asgi
import structlog

from shared.events.hub import SubscriptionClosed, SubscriptionOverflow
from shared.events.live import LiveEvent
from shared.events.models import EventOut
from shared.events.service import list_events
from shared.sessions.service import get_session
from web.console_tokens import CONSOLE_TOKEN_TTL_S, issue_console_token
from web.context import WebContext
from web.http import invalid_query, page, page_limit, query_int
from web.live import current_seq, follow_session

log = structlog.get_logger(__name__)

EVENT_STREAM = "text/event-stream"
MAX_SEQ = 2**62


class SessionEventsResource:
    """A session's events: a JSON page, or a live stream with ``Accept: text/event-stream``."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        if EVENT_STREAM in (req.get_header("Accept") or ""):
            await self._stream(req, resp, session_id)
            return

        limit = page_limit(req)
        after = query_int(req, "after", default=0, low=0, high=MAX_SEQ)

        def list_page() -> object:
            with self._ctx.db.read() as db:
                get_session(db, session_id)
                rows = list_events(db, session_id=session_id, after_seq=after, limit=limit)
                return page(EventOut, rows, limit, lambda e: e.seq)

        resp.media = await self._ctx.run(list_page)

    async def _stream(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        after = _resume_point(req)
        subscription = self._ctx.hub.subscribe(session_id, self._ctx.settings.ws_queue_events)
        try:
            latest = await current_seq(self._ctx, session_id)
        except BaseException:
            subscription.close()
            raise
        if after is None:
            after = latest

        resp.content_type = EVENT_STREAM
        resp.set_header("Cache-Control", "no-cache")
        # Tell nginx-style proxies not to buffer the stream.
        resp.set_header("X-Accel-Buffering", "no")
        resp.sse = _sse_events(self._ctx, subscription, after)


def _resume_point(req: falcon.asgi.Request) -> int | None:
    last_id = req.get_header("Last-Event-ID")
    if last_id is None:
        return query_int(req, "after", default=None, low=0, high=MAX_SEQ)
    if not last_id.strip().isdigit() or int(last_id) > MAX_SEQ:
        raise invalid_query("Last-Event-ID", last_id, "the id of the last event received")
    return int(last_id)


async def _sse_events(
    ctx: WebContext, subscription: Any, after: int
) -> AsyncIterator[falcon.asgi.SSEvent]:
    events = follow_session(ctx, subscription, after).__aiter__()
    draining = asyncio.ensure_future(ctx.drain.began.wait())
    pending: asyncio.Future[LiveEvent] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(events.__anext__())
            waits: set[asyncio.Future[Any]] = {pending, draining}
            done, _ = await asyncio.wait(
                waits,
                timeout=ctx.settings.sse_heartbeat_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if draining in done:
                return
            if not done:
                # A comment line keeps proxies from closing an idle stream.
                yield falcon.asgi.SSEvent(comment="heartbeat")
                continue
            try:
                event = pending.result()
            except (SubscriptionClosed, SubscriptionOverflow, StopAsyncIteration) as error:
                yield _sse_error(error)
                return
            pending = None
            yield _sse_event(event)
    finally:
        for future in (pending, draining):
            if future is not None:
                future.cancel()
        subscription.close()
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]


def _sse_event(event: LiveEvent) -> falcon.asgi.SSEvent:
    data = json.dumps(event, separators=(",", ":"))
    seq = event.get("seq")
    # Live-only deltas carry no id, so a reconnect resumes from the last persisted event.
    event_id = str(seq) if seq is not None else None
    return falcon.asgi.SSEvent(text=data, event=str(event.get("type")), event_id=event_id)


def _sse_error(error: Exception) -> falcon.asgi.SSEvent:
    if isinstance(error, SubscriptionOverflow):
        code, message = "slow_client", "the stream fell too far behind; reconnect to resume"
    else:
        code, message = "stream_closed", "the server is restarting; reconnect to resume"
    payload = json.dumps({"code": code, "message": message})
    return falcon.asgi.SSEvent(text=payload, event="error")


class ConsoleTokenResource:
    """Issue a console token for one session, valid for one minute."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        def check_session() -> None:
            with self._ctx.db.read() as db:
                get_session(db, session_id)

        await self._ctx.run(check_session)
        resp.status = falcon.HTTP_201
        resp.media = {
            "token": issue_console_token(self._ctx.console_secret, session_id),
            "session_id": session_id,
            "expires_in_s": CONSOLE_TOKEN_TTL_S,
        }
