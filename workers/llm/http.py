"""HTTP plumbing shared by the model clients: retries, timeouts, status errors and SSE."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from workers.llm.base import ModelError

log = logging.getLogger(__name__)

#: A function that blocks for the given seconds, such as time.sleep or a test recorder.
Sleep = Callable[[float], None]

#: Backoff before retry n (counting from 1) is this many seconds times 2 ** (n - 1).
BACKOFF_BASE_S = 0.5


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a ``text/event-stream`` body."""

    event: str
    data: str


class ModelEndpoint:
    """POST JSON to one model URL, retrying 429 and 5xx responses and translating errors.

    ``timeout_s`` bounds connecting and each wait for more response bytes, so a long
    streamed reply may take longer than ``timeout_s`` in total. Up to ``max_attempts``
    requests are sent. Between them the endpoint waits for ``Retry-After`` when the server
    sends it in seconds, and otherwise for an exponential backoff; both are capped at
    ``max_retry_wait_s``. Every failure becomes a ``ModelError`` that names the setting
    to check.
    """

    def __init__(
        self,
        *,
        url: str,
        model: str,
        headers: dict[str, str],
        timeout_s: float,
        max_attempts: int,
        max_retry_wait_s: float,
        sleep: Sleep = time.sleep,
        client: httpx.Client | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.url = url
        self._model = model
        self._headers = headers
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._client = client or httpx.Client(timeout=timeout_s)

    def post_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send ``body`` and return the JSON object of the successful response."""
        response = self._send(body, stream=False)
        try:
            payload = response.json()
        except ValueError as error:
            raise ModelError(
                f"model server {self.url} sent a body that is not JSON: {response.text[:200]!r}"
            ) from error
        if not isinstance(payload, dict):
            raise ModelError(f"model server {self.url} sent JSON that is not an object")
        return payload

    @contextlib.contextmanager
    def open_stream(self, body: dict[str, Any]) -> Iterator[Iterator[ServerSentEvent]]:
        """Send ``body`` and yield the events of the successful streamed response.

        Retries happen only before the response body is read. Once events flow, the
        caller may already have passed text on to the user, and a second attempt would
        show that text twice, so a broken or stalled stream raises ``ModelError``.
        """
        response = self._send(body, stream=True)
        try:
            yield self._read_events(response)
        finally:
            response.close()

    def _send(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        request = self._client.build_request("POST", self.url, json=body, headers=self._headers)
        for attempt in range(1, self._max_attempts + 1):
            is_last = attempt == self._max_attempts
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as error:
                if is_last:
                    raise self._transport_error(error, attempt) from error
                log.warning("model request to %s failed, retrying: %s", self.url, error)
                self._sleep(self._backoff_s(attempt))
                continue

            if _is_retryable(response.status_code) and not is_last:
                response.close()
                wait_s = self._retry_wait_s(attempt, response.headers.get("Retry-After"))
                log.warning(
                    "model server %s returned HTTP %s, retrying in %.1f s",
                    self.url,
                    response.status_code,
                    wait_s,
                )
                self._sleep(wait_s)
                continue

            if response.status_code >= 400:
                raise self._status_error(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff_s(self, attempt: int) -> float:
        return min(BACKOFF_BASE_S * 2.0 ** (attempt - 1), self._max_retry_wait_s)

    def _retry_wait_s(self, attempt: int, retry_after: str | None) -> float:
        # NOTE: only the seconds form of Retry-After is read. The HTTP-date form and
        # other values fall back to the exponential backoff.
        if retry_after is None:
            return self._backoff_s(attempt)
        try:
            seconds = float(retry_after)
        except ValueError:
            return self._backoff_s(attempt)
        return min(max(seconds, 0.0), self._max_retry_wait_s)

    def _transport_error(self, error: httpx.TransportError, attempts: int) -> ModelError:
        if isinstance(error, httpx.TimeoutException):
            return ModelError(
                f"model server {self.url} timed out after {self._timeout_s} s "
                f"({attempts} attempts). Raise FOXCTL_LLM_TIMEOUT_S or check the server."
            )
        return ModelError(
            f"model server {self.url} is unreachable after {attempts} attempts: {error}. "
            "Check FOXCTL_LLM_BASE_URL."
        )

    def _status_error(self, response: httpx.Response) -> ModelError:
        status = response.status_code
        if status in (401, 403):
            # The body is left out because some servers quote part of the rejected key.
            response.close()
            return ModelError(
                f"model server {self.url} rejected the API key (HTTP {status}). "
                "Check FOXCTL_LLM_API_KEY."
            )
        detail = _read_error_detail(response)
        if status == 404:
            return ModelError(
                f"model {self._model!r} or the route {self.url} was not found "
                f"(HTTP 404: {detail}). Check FOXCTL_LLM_MODEL and FOXCTL_LLM_BASE_URL."
            )
        return ModelError(f"model server {self.url} returned HTTP {status}: {detail}")

    def _read_events(self, response: httpx.Response) -> Iterator[ServerSentEvent]:
        try:
            yield from parse_sse(response.iter_lines())
        except httpx.TimeoutException as error:
            raise ModelError(
                f"model server {self.url} stalled for more than {self._timeout_s} s in the "
                "middle of a streamed reply. Raise FOXCTL_LLM_TIMEOUT_S or check the server."
            ) from error
        except httpx.HTTPError as error:
            raise ModelError(
                f"streamed reply from model server {self.url} broke off: {error}"
            ) from error


def parse_sse(lines: Iterator[str]) -> Iterator[ServerSentEvent]:
    """Group ``text/event-stream`` lines into events.

    A blank line ends an event, several ``data:`` lines are joined with newlines, lines
    that start with ``:`` are comments, and an event without ``event:`` is ``message``.
    """
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event, "\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue

        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield ServerSentEvent(event, "\n".join(data))


def load_event_json(event: ServerSentEvent, url: str) -> dict[str, Any]:
    """Parse the JSON object in an event's data, raising ModelError when it is not one."""
    try:
        payload = json.loads(event.data)
    except ValueError as error:
        raise ModelError(
            f"model server {url} streamed an event that is not JSON: {event.data[:200]!r}"
        ) from error
    if not isinstance(payload, dict):
        raise ModelError(f"model server {url} streamed JSON that is not an object")
    return payload


def _is_retryable(status: int) -> bool:
    # 529 is Anthropic's "overloaded", which the 5xx range already covers.
    return status == 429 or status >= 500


def _read_error_detail(response: httpx.Response) -> str:
    """Read and close an error response, returning its message or the start of its body."""
    try:
        response.read()
    except httpx.HTTPError as error:
        return f"the error body could not be read: {error}"
    finally:
        response.close()

    try:
        payload = response.json()
    except ValueError:
        return response.text[:200] or "empty body"
    server_error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(server_error, dict) and isinstance(server_error.get("message"), str):
        return str(server_error["message"])[:200]
    return json.dumps(payload)[:200]
