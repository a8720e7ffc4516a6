"""Turn every error into a JSON body ``{"error": {"code", "message"}}`` in one place."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import structlog
from pydantic import ValidationError

from shared.errors import (
    AuthError,
    ConflictError,
    FoxctlError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

_STATUS_BY_KIND: list[tuple[type[FoxctlError], str]] = [
    (InvalidInputError, falcon.HTTP_422),
    (NotFoundError, falcon.HTTP_404),
    (ConflictError, falcon.HTTP_409),
    (AuthError, falcon.HTTP_401),
    (UnavailableError, falcon.HTTP_503),
]


class ApiError(falcon.HTTPError):
    """An HTTP error with foxctl's JSON body."""

    def __init__(
        self,
        status: str,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, headers=headers)
        self.error_code = code
        self.message = message
        self.details = details or {}

    def to_dict(self, obj_type: type = dict) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


def status_for(error: FoxctlError) -> str:
    for kind, status in _STATUS_BY_KIND:
        if isinstance(error, kind):
            return status
    return falcon.HTTP_500


def invalid_body(error: ValidationError) -> ApiError:
    """Describe the first problems in a request body: where, what, and which value."""
    problems = [
        {
            "field": ".".join(str(part) for part in item["loc"]) or "(body)",
            "problem": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_input=False)[:10]
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return ApiError(
            falcon.HTTP_400,
            "malformed_json",
            "the request body is not valid JSON; send a JSON object",
        )
    first = problems[0]
    return ApiError(
        falcon.HTTP_422,
        "invalid_body",
        f"invalid request body: {first['field']}: {first['problem']}",
        details={"problems": problems},
    )


async def handle_foxctl_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: FoxctlError, params: Any
) -> None:
    status = status_for(error)
    if status == falcon.HTTP_503:
        log.warning("backing service unavailable", error=error.message)
    _respond(resp, ApiError(status, error.code, error.message, details=error.details))


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: Exception, params: Any
) -> None:
    if isinstance(error, falcon.HTTPError):
        _respond(resp, _as_api_error(error))
        return
    log.exception("unhandled error", path=req.path, method=req.method)
    _respond(
        resp,
        ApiError(
            falcon.HTTP_500,
            "internal_error",
            "the server failed to handle the request; it was logged with this request's id",
        ),
    )


def _respond(resp: falcon.Response, error: ApiError) -> None:
    resp.status = error.status
    resp.media = error.to_dict()
    for name, value in dict(error.headers or {}).items():
        resp.set_header(name, value)


def _as_api_error(error: falcon.HTTPError, req: falcon.Request | None = None) -> ApiError:
    if isinstance(error, ApiError):
        return error
    title = (error.title or "error").split(" ", 1)[-1]
    message = error.description or title
    if req is not None and error.status_code == 404:
        message = f"no route matches {req.path}; see GET /api/openapi.json"
    if req is not None and error.status_code == 405:
        message = f"method {req.method} is not allowed on {req.path}"
    return ApiError(
        str(error.status),
        title.lower().replace(" ", "_"),
        message,
        headers=dict(error.headers or {}),
    )


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    resp.media = _as_api_error(error, req).to_dict()
    resp.content_type = falcon.MEDIA_JSON


def install(app: falcon.asgi.App[Any, Any]) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(FoxctlError, handle_foxctl_error)
    app.set_error_serializer(serialize_error)
