"""Request parsing and response helpers shared by the resources."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import falcon
import falcon.asgi
from pydantic import BaseModel, ValidationError

from web.errors import ApiError, invalid_body
from web.middleware import too_large

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_PAGE = 500


async def read_model(req: falcon.asgi.Request, model: type[ModelT], max_bytes: int) -> ModelT:
    """Read the body (at most ``max_bytes``) and validate it as ``model``.

    Raises 413 for a larger body, 415 for a non-JSON content type, 400 for malformed
    JSON and 422 for unknown fields, wrong types or missing fields.
    """
    if req.content_type is not None and not req.content_type.startswith("application/json"):
        raise ApiError(
            falcon.HTTP_415,
            "unsupported_media_type",
            f"content type {req.content_type!r} is not supported; send application/json",
        )
    raw = await req.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    if not raw.strip():
        raise ApiError(
            falcon.HTTP_400, "empty_body", "the request body is empty; send a JSON object"
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise invalid_body(error) from None


def query_int(
    req: falcon.asgi.Request, name: str, *, default: int | None, low: int, high: int
) -> int | None:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_query(name, raw, f"an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise invalid_query(name, raw, f"an integer from {low} to {high}")
    return value


def page_limit(req: falcon.asgi.Request) -> int:
    limit = query_int(req, "limit", default=100, low=1, high=MAX_PAGE)
    assert limit is not None
    return limit


def invalid_query(name: str, value: str, expected: str) -> ApiError:
    return ApiError(
        falcon.HTTP_422,
        "invalid_query",
        f"invalid query parameter {name}={value!r}: expected {expected}",
        details={"parameter": name},
    )


def dump(model: type[BaseModel], row: Any) -> dict[str, Any]:
    return model.model_validate(row, from_attributes=True).model_dump(mode="json")


def page(
    model: type[BaseModel], rows: Sequence[Any], limit: int, cursor_of: Callable[[Any], Any]
) -> dict[str, Any]:
    """Wrap one page of rows; ``next_cursor`` is null on the last page."""
    next_cursor = str(cursor_of(rows[-1])) if len(rows) == limit else None
    return {"items": [dump(model, row) for row in rows], "next_cursor": next_cursor}
