"""The console WebSocket: watch a session's events and ask or cancel from one socket.

Client frames (JSON text): ``{"type": "ask", "content", "client_id"?}``,
``{"type": "cancel", "turn_id"?}`` and ``{"type": "resume", "after"}``. Server frames:
``{"type": "event", "event"}``, ``{"type": "ack", "request", ...}``,
``{"type": "error", "code", "message"}`` and ``{"type": "ping"}``.

Close codes:

- 1009: a frame over ``MAX_FRAME_BYTES``.
- 1012: the server drains or stops; reconnect and resume.
- 1013: the client fell too far behind; reconnect and resume.
- 4401: a missing or invalid credential.
- 4403: an origin that is not allowed. It is sent before the handshake completes, so
  browsers see a failed handshake.
- 4404: an unknown session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import falcon
import falcon.asgi
import structlog

from shared.auth.errors import InvalidToken
from shared.auth.service import verify_token
from shared.errors import FoxctlError, NotFoundError
from shared.events.hub import Subscription, SubscriptionClosed, SubscriptionOverflow
from shared.events.live import LiveEvent, publish_all
from shared.events.service import take_appended
from shared.metrics import WEBSOCKET_CLIENTS
from shared.sessions.errors import SessionNotFound
from shared.turns import service as turns
from shared.turns.errors import TurnNotFound
from web.console_tokens import console_token_valid
from web.context import WebContext
from web.live import current_seq, follow_session
from web.resources.sessions import MAX_IDEMPOTENCY_KEY, submit_and_wake

log = structlog.get_logger(__name__)

MAX_FRAME_BYTES = 64 * 1024
MAX_CONTENT_CHARS = 200_000
SEND_TIMEOUT_S = 1.0

CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class EventFrames:
    """Encode each event frame once for all the viewers in this process.

    The hub hands the same event object to every viewer of a session, so the first
    viewer encodes it and the others reuse the text: with many viewers, encoding per
    viewer was a fifth of the web process's CPU. An entry keeps its event alive, so the
    object's id cannot be reused while it is cached.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._texts: OrderedDict[int, tuple[LiveEvent, str]] = OrderedDict()

    def text(self, event: LiveEvent) -> str:
        key = id(event)
        cached = self._texts.get(key)
        if cached is not None and cached[0] is event:
            return cached[1]
        text = json.dumps({"type": "event", "event": event}, ensure_ascii=False)
        self._texts[key] = (event, text)
        if len(self._texts) > self._size:
            self._texts.popitem(last=False)
        return text


EVENT_FRAMES = EventFrames()


class FrameError(Exception):
    """A client frame that cannot be handled; sent back as an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConsoleResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_websocket(
        self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket, session_id: str
    ) -> None:
        if not origin_allowed(req, self._ctx.settings.ws_origins):
            log.info("console origin rejected", origin=req.get_header("Origin"))
            await ws.close(CLOSE_FORBIDDEN)
            return
        await ws.accept()
        WEBSOCKET_CLIENTS.inc()
        try:
            await self._serve(req, ws, session_id)
        finally:
            WEBSOCKET_CLIENTS.dec()

    async def _serve(
        self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket, session_id: str
    ) -> None:
        connection = ConsoleConnection(self._ctx, ws, session_id)
        if not await self._authorized(req, session_id):
            await connection.fail(
                CLOSE_UNAUTHORIZED,
                "invalid_token",
                "send 'Authorization: Bearer <token>' or a console token from "
                "POST /api/sessions/{id}/console-token in the token query parameter",
            )
            return
        try:
            latest = await current_seq(self._ctx, session_id)
        except SessionNotFound as error:
            await connection.fail(CLOSE_NOT_FOUND, error.code, error.message)
            return
        try:
            after = _after_param(req.get_param("after"), latest)
        except FrameError as error:
            await connection.fail(1008, error.code, error.message)
            return
        await connection.serve(after)

    async def _authorized(self, req: falcon.asgi.Request, session_id: str) -> bool:
        if self._ctx.settings.auth == "off":
            return True
        console_token = req.get_param("token")
        if console_token:
            return console_token_valid(self._ctx.console_secret, session_id, console_token)
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False

        def verify() -> None:
            with self._ctx.db.read() as db:
                verify_token(db, token.strip())

        try:
            await self._ctx.run(verify)
        except InvalidToken:
            return False
        return True


def origin_allowed(req: falcon.asgi.Request, allowed: frozenset[str]) -> bool:
    """Check the Origin header: listed origins, or else the API's own host.

    A missing Origin is allowed because browsers always send one. Other clients
    authenticate with a token, and a cross-site page cannot act through them.
    """
    origin = req.get_header("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return origin in allowed
    return urlsplit(origin).netloc.lower() == (req.get_header("Host") or "").lower()


def _after_param(raw: str | None, latest: int) -> int:
    if raw is None:
        return latest
    if not raw.isdigit():
        raise FrameError("invalid_after", f"after={raw!r} must be a sequence number (0 or more)")
    return int(raw)


class ConsoleConnection:
    """One open console socket: a feed of events, a ping timer, and client frames."""

    def __init__(self, ctx: WebContext, ws: falcon.asgi.WebSocket, session_id: str) -> None:
        self._ctx = ctx
        self._ws = ws
        self._session_id = session_id
        self._send_lock = asyncio.Lock()
        self._feed: asyncio.Task[None] | None = None

    async def serve(self, after: int) -> None:
        self._feed = self._start_feed(after)
        pinger = asyncio.ensure_future(self._ping())
        draining = asyncio.ensure_future(self._ctx.drain.began.wait())
        receiver: asyncio.Future[str] | None = None
        try:
            while not self._ws.closed:
                receiver = receiver or asyncio.ensure_future(self._ws.receive_text())
                feed = self._feed
                waits: set[asyncio.Future[Any]] = {receiver, feed, draining}
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if draining in done:
                    await self.close(CLOSE_RESTART)
                    return
                if feed in done:
                    await self._end_of_feed(feed)
                    return
                if receiver in done:
                    text = self._frame_text(receiver)
                    receiver = None
                    if text is None:
                        return
                    await self._handle(text)
        finally:
            for task in (receiver, self._feed, pinger, draining):
                if task is not None:
                    task.cancel()

    def _frame_text(self, receiver: asyncio.Future[str]) -> str | None:
        """Return the received text, '' for a binary frame, or None on disconnect."""
        try:
            return receiver.result()
        except falcon.errors.WebSocketDisconnected:
            return None
        except falcon.errors.PayloadTypeError:
            return ""

    async def _handle(self, text: str) -> None:
        if len(text.encode()) > MAX_FRAME_BYTES:
            await self.fail(
                CLOSE_TOO_BIG,
                "frame_too_large",
                f"frames are limited to {MAX_FRAME_BYTES} bytes",
            )
            return
        try:
            frame = _parse_frame(text)
            await self._dispatch(frame)
        except FrameError as error:
            await self.send({"type": "error", "code": error.code, "message": error.message})
        except FoxctlError as error:
            await self.send({"type": "error", "code": error.code, "message": error.message})

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ask":
            await self._ask(frame)
        elif kind == "cancel":
            await self._cancel(frame)
        elif kind == "resume":
            await self._resume(frame)
        else:
            raise FrameError(
                "unknown_frame_type", f"unknown frame type {kind!r}; use ask, cancel or resume"
            )

    async def _ask(self, frame: dict[str, Any]) -> None:
        content = frame.get("content")
        client_id = frame.get("client_id")
        if not isinstance(content, str) or not content.strip():
            raise FrameError("invalid_frame", "ask needs a non-empty string 'content'")
        if len(content) > MAX_CONTENT_CHARS:
            raise FrameError("invalid_frame", f"content is over {MAX_CONTENT_CHARS} characters")
        if client_id is not None and (
            not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_IDEMPOTENCY_KEY
        ):
            raise FrameError(
                "invalid_frame", f"client_id must be a string of 1 to {MAX_IDEMPOTENCY_KEY} chars"
            )
        if self._ctx.drain.draining:
            raise FrameError("draining", "this server is shutting down; reconnect and ask again")

        # The client id doubles as the idempotency key, so a client that repeats an ask
        # after a reconnect does not start a second turn.
        submission = await self._ctx.run(
            lambda: submit_and_wake(self._ctx, self._session_id, content, client_id)
        )
        await self.send(
            {
                "type": "ack",
                "request": "ask",
                "client_id": client_id,
                "message_id": submission.message.id,
                "turn_id": submission.turn.id,
                "status": submission.turn.status,
                "replayed": submission.replayed,
            }
        )

    async def _cancel(self, frame: dict[str, Any]) -> None:
        turn_id = frame.get("turn_id")
        if turn_id is not None and not isinstance(turn_id, str):
            raise FrameError("invalid_frame", "turn_id must be a string")
        session_id = self._session_id

        def cancel() -> tuple[str, str]:
            with self._ctx.db.write() as db:
                target = turn_id or _active_turn_id(db, session_id)
                turn = turns.get_turn(db, target)
                if turn.session_id != session_id:
                    raise TurnNotFound(f"turn {target!r} not found in session {session_id!r}")
                turn = turns.request_cancel(db, target)
                result = (turn.id, turn.status)
            publish_all(self._ctx.publisher, session_id, take_appended(db))
            return result

        cancelled_id, status = await self._ctx.run(cancel)
        await self.send(
            {"type": "ack", "request": "cancel", "turn_id": cancelled_id, "status": status}
        )

    async def _resume(self, frame: dict[str, Any]) -> None:
        after = frame.get("after")
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise FrameError("invalid_frame", "resume needs 'after', a sequence number (0 or more)")
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
        self._feed = self._start_feed(after)

    def _start_feed(self, after: int) -> asyncio.Task[None]:
        # Subscribe now, before the feed reads the database, so nothing falls between.
        try:
            subscription = self._ctx.hub.subscribe(
                self._session_id, self._ctx.settings.ws_queue_events
            )
        except SubscriptionClosed:
            return asyncio.ensure_future(_raise_closed(self._session_id))
        return asyncio.ensure_future(self._run_feed(subscription, after))

    async def _run_feed(self, subscription: Subscription, after: int) -> None:
        try:
            async for event in follow_session(self._ctx, subscription, after):
                text = EVENT_FRAMES.text(event)
                async with self._send_lock:
                    await self._ws.send_text(text)
        finally:
            subscription.close()

    async def _end_of_feed(self, feed: asyncio.Task[None]) -> None:
        error = feed.exception()
        if isinstance(error, SubscriptionOverflow):
            log.warning("console client too slow; closing", session_id=self._session_id)
            await self.fail(
                CLOSE_TRY_AGAIN,
                "slow_client",
                "the client fell too far behind the event stream; reconnect and resume "
                "with the last sequence number received",
            )
        elif isinstance(error, SubscriptionClosed):
            await self.close(CLOSE_RESTART)
        elif isinstance(error, falcon.errors.WebSocketDisconnected) or self._ws.closed:
            return
        elif error is not None:
            log.error("console feed failed", session_id=self._session_id, exc_info=error)
            await self.fail(1011, "internal_error", "the event feed failed; reconnect to resume")

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._ctx.settings.ws_ping_s)
            await self.send({"type": "ping"})

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._ws.send_media(frame)

    async def fail(self, code: int, error_code: str, message: str) -> None:
        """Send an error frame, then close with ``code``; a stuck client only gets the close."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.send({"type": "error", "code": error_code, "message": message}),
                SEND_TIMEOUT_S,
            )
        await self.close(code)

    async def close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close(code)


async def _raise_closed(session_id: str) -> None:
    raise SubscriptionClosed(session_id)


def _parse_frame(text: str) -> dict[str, Any]:
    try:
        frame = json.loads(text)
    except ValueError:
        raise FrameError("malformed_frame", "frames must be JSON text objects") from None
    if not isinstance(frame, dict):
        raise FrameError("malformed_frame", "frames must be JSON objects with a 'type'")
    return frame


def _active_turn_id(db: Any, session_id: str) -> str:
    turn = turns.next_turn(db, session_id)
    if turn is None:
        raise NoActiveTurn(f"session {session_id!r} has no queued or running turn to cancel")
    return turn.id


class NoActiveTurn(NotFoundError):
    code = "no_active_turn"
