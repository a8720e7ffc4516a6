"""OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, llama.cpp server, ...)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import httpx

from workers.llm.base import DeltaCallback, ModelError, ModelReply, ToolCall

log = logging.getLogger(__name__)

_RETRY_STATUSES = {429, 500, 502, 503, 504}


class OpenAICompatChatModel:
    """Call ``POST {base_url}/chat/completions`` without streaming.

    Retries 429 and 5xx answers up to ``max_attempts`` times, waiting for
    ``Retry-After`` when the server sends it (capped at ``max_retry_wait_s``) and for an
    exponential backoff otherwise.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_attempts: int = 3,
        max_retry_wait_s: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_attempts = max_attempts
        self._max_retry_wait_s = max_retry_wait_s
        self._client = client or httpx.Client(timeout=timeout_s)

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        on_delta: DeltaCallback | None = None,
    ) -> ModelReply:
        body: dict[str, Any] = {"model": self.name, "messages": messages}
        if tools:
            body["tools"] = tools
        return _parse_reply(self._post(body))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._client.post(self._url, json=body, headers=self._headers)
            except httpx.HTTPError as error:
                if attempt == self._max_attempts:
                    raise ModelError(f"model server {self._url} failed: {error}") from error
                self._sleep_before_retry(attempt, None)
                continue
            if response.status_code in _RETRY_STATUSES and attempt < self._max_attempts:
                log.warning("model server answered %s; retrying", response.status_code)
                self._sleep_before_retry(attempt, response.headers.get("Retry-After"))
                continue
            return _json_or_raise(response, self.name)
        raise AssertionError("unreachable")

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        wait_s = min(2.0 ** (attempt - 1) * 0.5, self._max_retry_wait_s)
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                wait_s = min(float(retry_after), self._max_retry_wait_s)
        time.sleep(wait_s)


def _json_or_raise(response: httpx.Response, model: str) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise ModelError(
            f"model server rejected the API key (HTTP {response.status_code}); "
            "check FOXCTL_LLM_API_KEY"
        )
    if response.status_code == 404:
        raise ModelError(
            f"model {model!r} or the chat completions route was not found (HTTP 404); "
            "check FOXCTL_LLM_MODEL and FOXCTL_LLM_BASE_URL"
        )
    if response.status_code >= 400:
        raise ModelError(
            f"model server answered HTTP {response.status_code}: {response.text[:200]}"
        )
    try:
        payload = response.json()
    except ValueError as error:
        raise ModelError("model server sent a body that is not JSON") from error
    if not isinstance(payload, dict):
        raise ModelError("model server sent JSON that is not an object")
    return payload


def _parse_reply(payload: dict[str, Any]) -> ModelReply:
    try:
        message = payload["choices"][0]["message"]
        calls = [
            ToolCall(
                id=call["id"],
                name=call["function"]["name"],
                arguments=call["function"].get("arguments") or "{}",
            )
            for call in message.get("tool_calls") or []
        ]
    except (KeyError, IndexError, TypeError) as error:
        raise ModelError(
            f"model server sent an unexpected reply shape: {json.dumps(payload)[:200]}"
        ) from error
    usage = payload.get("usage") or {}
    return ModelReply(
        content=message.get("content") or "",
        tool_calls=calls,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
