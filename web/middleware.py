"""Request ids, logging and metrics, body size limit, bearer-token auth, tracing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import falcon
import falcon.asgi
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.auth.errors import InvalidToken
from shared.auth.service import hash_token, verify_token
from shared.metrics import HTTP_REQUEST_SECONDS
from shared.telemetry import tracer
from web.context import WebContext
from web.errors import ApiError
from web.routes import CHAT_PATHS

log = structlog.get_logger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UPLOAD_PATH = "/api/cas"


class RequestContext:
    """Bind a request id to every log line, count requests in flight, time requests."""

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
        duration_s = time.perf_counter() - req.context.started
        HTTP_REQUEST_SECONDS.labels(req.method, route_of(req), str(resp.status_code)).observe(
            duration_s
        )
        if req.path not in PUBLIC_PATHS:
            log.debug(
                "request",
                method=req.method,
                path=req.path,
                status=resp.status,
                duration_ms=round(duration_s * 1000, 2),
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
            req.context.authenticated = True
            return
        try:
            await self._ctx.run(lambda: self._verify(token))
        except InvalidToken as error:
            raise _unauthorized("invalid_token", error.message) from None
        req.context.authenticated = True
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


def route_of(req: falcon.asgi.Request) -> str:
    """Return the matched route template, such as /api/sessions/{session_id}."""
    return req.uri_template or "unmatched"


class RequestTracing:
    """Open a SERVER span for each HTTP request and keep it current while it is served.

    An inbound ``traceparent`` is continued only as ``trust`` allows: ``authenticated``
    (the caller passed bearer authentication), ``always`` or ``never``. Otherwise the
    request starts a new trace, so an unauthenticated caller cannot attach its spans to
    another trace. Requests rejected before this middleware (401, 413) get a span too,
    opened when the response is ready.
    """

    def __init__(self, trust: str) -> None:
        self._trust = trust

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        parent = otel_context.Context()
        if self._trusted(req):
            parent = propagate.extract(req.headers)
        span = tracer().start_span(
            f"{req.method} {req.path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": req.method, "url.path": req.path},
        )
        req.context.span = span
        req.context.span_token = otel_context.attach(trace.set_span_in_context(span))

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, ok: bool
    ) -> None:
        span = req.context.get("span")
        if span is None:
            span = tracer().start_span(
                f"{req.method} {req.path}",
                context=otel_context.Context(),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": req.method, "url.path": req.path},
            )
        route = route_of(req)
        span.update_name(f"{req.method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", resp.status_code)
        if resp.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        token = req.context.get("span_token")
        if token is not None:
            otel_context.detach(token)

    def _trusted(self, req: falcon.asgi.Request) -> bool:
        if self._trust == "always":
            return True
        if self._trust == "never":
            return False
        return bool(req.context.get("authenticated", False))
