"""A small JSON client for platform APIs that turns 429 and 5xx into RateLimited."""

from __future__ import annotations

from typing import Any

import httpx

from shared.chat.errors import PlatformError, RateLimited

#: Seconds to wait before retrying a 5xx response without Retry-After.
SERVER_ERROR_RETRY_S = 2.0


def call_json(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send one request and return its JSON object (empty for an empty body).

    Raises RateLimited for 429 and 5xx (and for a connection failure), PlatformError
    for any other error status.
    """
    try:
        response = client.request(method, url, json=json, headers=headers, data=data)
    except httpx.HTTPError as error:
        raise RateLimited(f"{method} {_path(url)} failed: {error}", SERVER_ERROR_RETRY_S) from error
    if response.status_code == 429 or response.status_code >= 500:
        wait_s = retry_after_s(response)
        raise RateLimited(f"{method} {_path(url)} returned {response.status_code}", wait_s)
    if response.status_code >= 400:
        raise PlatformError(
            f"{method} {_path(url)} returned {response.status_code}: {response.text[:300]}"
        )
    if not response.content:
        return {}
    body = response.json()
    return body if isinstance(body, dict) else {"items": body}


def retry_after_s(response: httpx.Response) -> float:
    """Seconds to wait from Retry-After, or a JSON ``retry_after`` (Discord, Telegram)."""
    header = response.headers.get("Retry-After")
    if header is not None:
        try:
            return max(float(header), 0.0)
        except ValueError:
            pass
    try:
        body = response.json()
    except ValueError:
        return SERVER_ERROR_RETRY_S
    if isinstance(body, dict):
        value = body.get("retry_after") or (body.get("parameters") or {}).get("retry_after")
        if isinstance(value, int | float):
            return max(float(value), 0.0)
    return SERVER_ERROR_RETRY_S


def _path(url: str) -> str:
    # Telegram puts the bot token in the path; never show it.
    path = httpx.URL(url).path
    parts = path.split("/")
    return "/".join("bot***" if part.startswith("bot") and ":" in part else part for part in parts)
