from __future__ import annotations

import falcon
import falcon.asgi
import structlog

from shared.events.live import publish_all
from shared.events.service import take_appended
from shared.sessions import service
from shared.sessions.models import (
    BusyPolicy,
    MessageAccepted,
    MessageCreate,
    MessageOut,
    SessionCreate,
    SessionOut,
)
from shared.turns.service import Submission, submit_message
from web.context import WebContext
from web.errors import ApiError
from web.http import dump, page, page_limit, query_int, read_model

log = structlog.get_logger(__name__)

MAX_IDEMPOTENCY_KEY = 200


class SessionsResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = page_limit(req)
        cursor = req.get_param("cursor")
        agent_id = req.get_param("agent_id")

        def list_sessions() -> object:
            with self._ctx.db.read() as db:
                rows = service.list_sessions(db, agent_id=agent_id, limit=limit, after=cursor)
                return page(SessionOut, rows, limit, lambda s: s.id)

        resp.media = await self._ctx.run(list_sessions)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        spec = await read_model(req, SessionCreate, self._ctx.settings.max_body_bytes)
        default = BusyPolicy(self._ctx.settings.default_busy_policy)

        def create() -> object:
            with self._ctx.db.write() as db:
                return dump(SessionOut, service.create_session(db, spec, default_policy=default))

        resp.media = await self._ctx.run(create)
        resp.status = falcon.HTTP_201


class SessionResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        def get() -> object:
            with self._ctx.db.read() as db:
                return dump(SessionOut, service.get_session(db, session_id))

        resp.media = await self._ctx.run(get)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        def delete() -> None:
            with self._ctx.db.write() as db:
                service.delete_session(db, session_id)

        await self._ctx.run(delete)
        resp.status = falcon.HTTP_204


class SessionMessagesResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        limit = page_limit(req)
        cursor = query_int(req, "cursor", default=None, low=0, high=2**62)

        def list_messages() -> object:
            with self._ctx.db.read() as db:
                rows = service.list_messages(db, session_id, limit=limit, after=cursor)
                return page(MessageOut, rows, limit, lambda m: m.position)

        resp.media = await self._ctx.run(list_messages)

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        if self._ctx.drain.draining:
            raise ApiError(
                falcon.HTTP_503,
                "draining",
                "this web process is shutting down; retry the request (another replica "
                "will take it)",
                headers={"Retry-After": "1"},
            )
        key = _idempotency_key(req)
        body = await read_model(req, MessageCreate, self._ctx.settings.max_body_bytes)

        submission = await self._ctx.run(
            lambda: submit_and_wake(self._ctx, session_id, body.content, key)
        )
        # A replay gets the same status as the first post, with `replayed` set.
        resp.status = falcon.HTTP_202
        resp.media = MessageAccepted(
            message_id=submission.message.id,
            turn_id=submission.turn.id,
            session_id=session_id,
            status=submission.turn.status,
            replayed=submission.replayed,
        ).model_dump(mode="json")


def submit_and_wake(ctx: WebContext, session_id: str, content: str, key: str | None) -> Submission:
    """Commit a message and its turn, publish their events, and wake a worker.

    Blocking: run it in the context's thread pool. Shared by the HTTP API and the
    console WebSocket.
    """
    with ctx.db.write() as db:
        submission = submit_message(db, session_id, content, idempotency_key=key)
    publish_all(ctx.publisher, session_id, take_appended(db))
    structlog.contextvars.bind_contextvars(
        session_id=session_id, message_id=submission.message.id, turn_id=submission.turn.id
    )
    log.info("message accepted", replayed=submission.replayed)
    if submission.replayed:
        return submission
    # The message is committed before the wake-up is sent. If the broker is down,
    # the reconciler sends the wake-up later, so the post still succeeds.
    try:
        ctx.enqueuer.wake_session(session_id)
    except Exception as error:
        log.warning(
            "enqueue failed; the reconciler will pick the turn up",
            session_id=session_id,
            turn_id=submission.turn.id,
            error=str(error),
        )
    return submission


def _idempotency_key(req: falcon.asgi.Request) -> str | None:
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            falcon.HTTP_422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    return key
