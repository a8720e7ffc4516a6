"""Request ids and logging, body size limit, bearer-token auth, draining."""

from __future__ import annotations

import time
import uuid
from typing import Any

import falcon
import falcon.asgi
import structlog

from shared.auth.errors import InvalidToken
from shared.auth.service import hash_token, verify_token
from web.context import WebContext
from web.errors import ApiError
from web.routes import CHAT_PATHS

log = structlog.get_logger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
UPLOAD_PATH = "/api/cas"


class RequestContext:
    """Bind a request id to every log line and count requests in flight."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request_id = req.get_header("X-Request-ID") or uuid.uuid4().hex
        req.context.request_id = request_id[:64]
        req.context.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=req.context.request_id)
        self._ctx.drain.in_flight += 1

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, ok: bool
    ) -> None:
        self._ctx.drain.in_flight -= 1
        resp.set_header("X-Request-ID", req.context.request_id)
        if req.path not in PUBLIC_PATHS:
            log.debug(
                "request",
                method=req.method,
                path=req.path,
                status=resp.status,
                duration_ms=round((time.perf_counter() - req.context.started) * 1000, 2),
            )
        structlog.contextvars.unbind_contextvars("request_id")


class BodyLimit:
    """Reject bodies over ``max_body_bytes`` by their declared length; resources check
    the bytes actually read with ``read_body``."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max = max_body_bytes

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if req.method == "PUT" and req.path == UPLOAD_PATH:
            return  # streamed to the artifact store under FOXCTL_MAX_UPLOAD_BYTES
        if req.path in CHAT_PATHS:
            return  # limited by FOXCTL_CHAT_MAX_BODY_BYTES in the chat resources
        if req.content_length is not None and req.content_length > self._max:
            raise too_large(self._max)


def too_large(limit: int) -> ApiError:
    return ApiError(
        falcon.HTTP_413,
        "body_too_large",
        f"request body is larger than the limit of {limit} bytes (FOXCTL_MAX_BODY_BYTES)",
        details={"limit_bytes": limit},
    )


class BearerAuth:
    """Require ``Authorization: Bearer <token>`` on /api and /ws.

    Valid tokens are cached for ``token_cache_s`` seconds, so a revoked token stops
    working within that time.
    """

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        self._cache: dict[str, float] = {}
        self._cache_s = ctx.settings.token_cache_s

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not req.path.startswith(("/api", "/ws")) or req.method == "OPTIONS":
            return
        if req.path in CHAT_PATHS:
            return
        token = _bearer_token(req.get_header("Authorization"))
        digest = hash_token(token)
        if self._cache.get(digest, 0.0) > time.monotonic():
            return
        try:
            await self._ctx.run(lambda: self._verify(token))
        except InvalidToken as error:
            raise _unauthorized("invalid_token", error.message) from None
        self._cache[digest] = time.monotonic() + self._cache_s
        if len(self._cache) > 10_000:
            self._cache.clear()

    def _verify(self, token: str) -> None:
        with self._ctx.db.read() as db:
            verify_token(db, token)


def _bearer_token(header: str | None) -> str:
    if not header:
        raise _unauthorized(
            "missing_token",
            "missing Authorization header; send 'Authorization: Bearer <token>' "
            "(create a token with `foxctl tokens create --name NAME`)",
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("invalid_token", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(
        falcon.HTTP_401, code, message, headers={"WWW-Authenticate": 'Bearer realm="foxctl"'}
    )
