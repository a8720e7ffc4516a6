"""POST JSON to a provider with retries on 429, 5xx and timeouts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from shared.retrieval.errors import EmbeddingError, EmbeddingUnavailableError

log = logging.getLogger(__name__)

#: A function that blocks for the given seconds, such as time.sleep or a test recorder.
Sleep = Callable[[float], None]
#: Backoff before retry n (counting from 1) is this many seconds times 2 ** (n - 1).
BACKOFF_BASE_S = 0.5
RETRIED_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ProviderEndpoint:
    """One provider URL. Sends up to ``max_attempts`` requests per call.

    Between attempts it waits for ``Retry-After`` (in seconds) when the server sends one,
    else for an exponential backoff, both capped at ``max_retry_wait_s``. A Retry-After
    longer than the cap ends the call at once, so that the queue retries the whole
    batch later instead of holding a worker thread. Raises EmbeddingUnavailableError when
    the attempts run out and EmbeddingError for a client error (4xx other than 429).
    """

    def __init__(
        self,
        *,
        url: str,
        headers: dict[str, str],
        timeout_s: float,
        max_attempts: int,
        max_retry_wait_s: float = 30.0,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.url = url
        self._headers = headers
        self._max_attempts = max_attempts
        self._max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout_s)

    def post_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send ``body``; return the JSON object of the first successful response."""
        last: EmbeddingUnavailableError | None = None
        for attempt in range(1, self._max_attempts + 1):
            if last is not None:
                wait_s = self._wait_before(attempt, last)
                log.warning("retrying %s in %.1f s: %s", self.url, wait_s, last.message)
                self._sleep(wait_s)
            try:
                return self._post_once(body)
            except EmbeddingUnavailableError as error:
                last = error
                if (error.retry_after_s or 0) > self._max_retry_wait_s:
                    break
        assert last is not None
        raise last

    def close(self) -> None:
        self._client.close()

    def _wait_before(self, attempt: int, error: EmbeddingUnavailableError) -> float:
        if error.retry_after_s is not None:
            return min(error.retry_after_s, self._max_retry_wait_s)
        return float(min(BACKOFF_BASE_S * 2 ** (attempt - 2), self._max_retry_wait_s))

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(self.url, json=body, headers=self._headers)
        except httpx.TimeoutException as error:
            raise EmbeddingUnavailableError(f"{self.url} timed out: {error}") from error
        except httpx.HTTPError as error:
            raise EmbeddingUnavailableError(f"{self.url} failed: {error}") from error

        if response.status_code in RETRIED_STATUSES:
            raise EmbeddingUnavailableError(
                f"{self.url} returned HTTP {response.status_code}: {response.text[:200]!r}",
                retry_after_s=_retry_after_s(response),
            )
        if response.status_code >= 400:
            raise EmbeddingError(
                f"{self.url} rejected the request with HTTP {response.status_code}: "
                f"{response.text[:200]!r}; check the base URL, model name and API key"
            )
        try:
            payload = response.json()
        except ValueError as error:
            raise EmbeddingError(f"{self.url} sent a body that is not JSON") from error
        if not isinstance(payload, dict):
            raise EmbeddingError(f"{self.url} sent JSON that is not an object")
        return payload


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        # An HTTP date; the exponential backoff applies instead.
        return None
