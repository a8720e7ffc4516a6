"""OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, llama.cpp server, ...)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from workers.llm.base import DeltaCallback, ModelError, ModelReply, ToolCall
from workers.llm.http import ModelEndpoint, ServerSentEvent, Sleep, load_event_json

#: Where the API key goes: into a header (``Authorization`` by default), or nowhere.
AuthMode = Literal["header", "none"]


class OpenAICompatChatModel:
    """Call ``POST {base_url}/chat/completions``, streaming when a delta callback is given.

    The API key goes into ``auth_header`` as ``auth_prefix + api_key``: a bearer token
    by default, or for example ``auth_header="api-key", auth_prefix=""`` for Azure.
    No key header is sent when ``api_key`` is None or ``auth_mode`` is ``"none"``.
    Retries and timeouts follow ``ModelEndpoint``.
    """

    provider = "openai_compat"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        auth_mode: AuthMode = "header",
        auth_header: str = "Authorization",
        auth_prefix: str = "Bearer ",
        timeout_s: float = 120.0,
        max_attempts: int = 3,
        max_retry_wait_s: float = 30.0,
        sleep: Sleep = time.sleep,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = model
        headers = {}
        if api_key is not None and auth_mode == "header":
            headers[auth_header] = f"{auth_prefix}{api_key}"
        self._endpoint = ModelEndpoint(
            url=base_url.rstrip("/") + "/chat/completions",
            model=model,
            headers=headers,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            max_retry_wait_s=max_retry_wait_s,
            sleep=sleep,
            client=client,
        )

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
        if on_delta is None:
            return _parse_reply(self._endpoint.post_json(body), self._endpoint.url)

        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        with self._endpoint.open_stream(body) as events:
            return _read_stream(events, on_delta, self._endpoint.url)


def _parse_reply(payload: dict[str, Any], url: str) -> ModelReply:
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
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise _shape_error(url, payload) from error
    prompt_tokens, completion_tokens = _read_usage(payload, url)
    return ModelReply(
        content=content,
        tool_calls=calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _read_stream(
    events: Iterable[ServerSentEvent], on_delta: DeltaCallback, url: str
) -> ModelReply:
    stream = _StreamedReply()
    for event in events:
        if event.data == "[DONE]":
            return stream.reply()
        chunk = load_event_json(event, url)
        if "error" in chunk:
            raise ModelError(f"model server {url} sent an error mid-stream: {chunk['error']}")
        try:
            stream.add(chunk, on_delta)
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise _shape_error(url, chunk) from error
        stream.prompt_tokens, stream.completion_tokens = _read_usage(
            chunk, url, default=(stream.prompt_tokens, stream.completion_tokens)
        )

    # Some servers end the stream without [DONE], and a finish_reason shows the reply is whole.
    if stream.finished:
        return stream.reply()
    raise ModelError(f"streamed reply from model server {url} ended before it was complete")


@dataclass
class _StreamedCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _StreamedReply:
    """The reply so far, assembled from ``chat.completion.chunk`` objects."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _StreamedCall] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: bool = False

    def add(self, chunk: dict[str, Any], on_delta: DeltaCallback) -> None:
        # The final chunk that carries usage has an empty choices list.
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError(f"delta content is {type(content).__name__}, not text")
            if content:
                self.text.append(content)
                on_delta(content)
            for position, piece in enumerate(delta.get("tool_calls") or []):
                self._add_call_piece(piece, position)
            if choice.get("finish_reason"):
                self.finished = True

    def _add_call_piece(self, piece: dict[str, Any], position: int) -> None:
        # The first piece of a call carries its id and name. Later pieces carry only more
        # argument text and are matched to the call by index.
        call = self.calls.setdefault(int(piece.get("index", position)), _StreamedCall())
        function = piece.get("function") or {}
        call.id = piece.get("id") or call.id
        call.name = function.get("name") or call.name
        if function.get("arguments"):
            call.arguments.append(function["arguments"])

    def reply(self) -> ModelReply:
        calls = [
            ToolCall(id=call.id, name=call.name, arguments="".join(call.arguments) or "{}")
            for _, call in sorted(self.calls.items())
        ]
        return ModelReply(
            content="".join(self.text),
            tool_calls=calls,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def _read_usage(
    payload: dict[str, Any], url: str, default: tuple[int, int] = (0, 0)
) -> tuple[int, int]:
    usage = payload.get("usage")
    if not usage:
        return default
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError, AttributeError) as error:
        raise _shape_error(url, payload) from error


def _shape_error(url: str, payload: dict[str, Any]) -> ModelError:
    return ModelError(
        f"model server {url} sent a reply of an unexpected shape: {json.dumps(payload)[:200]}"
    )
