"""Anthropic Messages API over HTTP, with OpenAI-format messages and tools as input."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from workers.llm.base import DeltaCallback, ModelError, ModelReply, ToolCall
from workers.llm.http import ModelEndpoint, ServerSentEvent, Sleep, load_event_json

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicChatModel:
    """Call ``POST {base_url}/v1/messages``, streaming when a delta callback is given.

    ``max_tokens`` caps the length of each reply in tokens, and the Messages API requires
    it. Retries and timeouts follow ``ModelEndpoint``, which retries 529 (overloaded)
    like the other 5xx statuses.
    """

    provider = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None,
        base_url: str = "https://api.anthropic.com",
        max_tokens: int = 4096,
        timeout_s: float = 120.0,
        max_attempts: int = 3,
        max_retry_wait_s: float = 30.0,
        sleep: Sleep = time.sleep,
        client: httpx.Client | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.name = model
        self._max_tokens = max_tokens
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key is not None:
            headers["x-api-key"] = api_key
        self._endpoint = ModelEndpoint(
            url=base_url.rstrip("/") + "/v1/messages",
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
        body = self._request_body(messages, tools)
        if on_delta is None:
            return _parse_message(self._endpoint.post_json(body), self._endpoint.url)

        body["stream"] = True
        with self._endpoint.open_stream(body) as events:
            return _read_stream(events, on_delta, self._endpoint.url)

    def _request_body(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        system, converted = convert_messages(messages)
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": self._max_tokens,
            "messages": converted,
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [convert_tool(tool) for tool in tools]
        return body


# -- OpenAI chat format to Messages API ------------------------------------------------


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Split OpenAI-format messages into the ``system`` text and Messages API messages.

    Tool results become ``tool_result`` blocks in user messages. Consecutive messages of
    one role are merged into one message, so the results of all tool calls of one
    assistant message reach the model together.
    """
    system: list[str] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(_text_of(message.get("content")))
            continue
        if role == "user":
            blocks = _text_blocks(message.get("content"))
        elif role == "assistant":
            blocks = _text_blocks(message.get("content")) + _tool_use_blocks(message)
        elif role == "tool":
            blocks = [_tool_result_block(message)]
            role = "user"
        else:
            raise ModelError(f"message role {role!r} is not supported by the Anthropic API")

        if converted and converted[-1]["role"] == role:
            converted[-1]["content"].extend(blocks)
        else:
            converted.append({"role": role, "content": blocks})
    return "\n\n".join(part for part in system if part), converted


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Turn an OpenAI ``{"type": "function", "function": ...}`` tool into an Anthropic tool."""
    function = tool.get("function") or {}
    if not function.get("name"):
        raise ModelError(f"tool definition has no function name: {json.dumps(tool)[:200]}")
    converted: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def _text_of(content: Any) -> str:
    """Return the text of a message's content, a string or a list of OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text") or ""
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    # The API rejects empty text blocks, such as the content of a tool-calling message.
    text = _text_of(content)
    return [{"type": "text", "text": text}] if text else []


def _tool_use_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _arguments_object(call.get("id"), function.get("arguments")),
            }
        )
    return blocks


def _arguments_object(call_id: str | None, arguments: str | None) -> dict[str, Any]:
    # A tool call produced by another provider may carry arguments that are not a JSON
    # object. The API needs an object, and failing here would block the session for good.
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    log.warning(
        "tool call %s has arguments that are not a JSON object, so {} is sent instead", call_id
    )
    return {}


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": _text_of(message.get("content")),
    }


# -- Messages API replies -----------------------------------------------------------------


def _parse_message(payload: dict[str, Any], url: str) -> ModelReply:
    text: list[str] = []
    calls: list[ToolCall] = []
    try:
        for block in payload["content"]:
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use":
                calls.append(ToolCall(block["id"], block["name"], json.dumps(block["input"])))
        prompt_tokens, completion_tokens = _read_usage(payload.get("usage") or {})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _shape_error(url, payload) from error
    return ModelReply(
        content="".join(text),
        tool_calls=calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _read_usage(usage: dict[str, Any]) -> tuple[int, int]:
    # Tokens read from or written to the prompt cache are prompt tokens too.
    prompt_tokens = sum(
        int(usage.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return prompt_tokens, int(usage.get("output_tokens") or 0)


def _read_stream(
    events: Iterable[ServerSentEvent], on_delta: DeltaCallback, url: str
) -> ModelReply:
    stream = _StreamedMessage()
    for event in events:
        payload = load_event_json(event, url)
        kind = payload.get("type", event.event)
        if kind == "error":
            raise ModelError(f"model server {url} sent an error mid-stream: {payload.get('error')}")
        try:
            if kind == "message_stop":
                return stream.reply()
            stream.add(kind, payload, on_delta)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise _shape_error(url, payload) from error
    raise ModelError(f"streamed reply from model server {url} ended before message_stop")


@dataclass
class _StreamedBlock:
    type: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)


@dataclass
class _StreamedMessage:
    """The message so far, assembled from Messages API stream events."""

    blocks: dict[int, _StreamedBlock] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, payload: dict[str, Any], on_delta: DeltaCallback) -> None:
        if kind == "message_start":
            self.usage.update(payload["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = payload["content_block"]
            self.blocks[int(payload["index"])] = _StreamedBlock(
                type=block["type"],
                id=block.get("id") or "",
                name=block.get("name") or "",
                input=block.get("input") or {},
            )
        elif kind == "content_block_delta":
            self._add_delta(self.blocks[int(payload["index"])], payload["delta"], on_delta)
        elif kind == "message_delta":
            # message_delta usage contains running totals, so it replaces earlier values.
            self.usage.update(payload.get("usage") or {})
        # ping and content_block_stop carry nothing the reply needs.

    def _add_delta(
        self, block: _StreamedBlock, delta: dict[str, Any], on_delta: DeltaCallback
    ) -> None:
        if delta["type"] == "text_delta":
            text = delta["text"]
            if not isinstance(text, str):
                raise TypeError(f"text_delta text is {type(text).__name__}, not text")
            block.parts.append(text)
            on_delta(text)
        elif delta["type"] == "input_json_delta":
            block.parts.append(delta["partial_json"])

    def reply(self) -> ModelReply:
        text: list[str] = []
        calls: list[ToolCall] = []
        for _, block in sorted(self.blocks.items()):
            if block.type == "text":
                text.extend(block.parts)
            elif block.type == "tool_use":
                arguments = "".join(block.parts) or json.dumps(block.input)
                calls.append(ToolCall(block.id, block.name, arguments))
        prompt_tokens, completion_tokens = _read_usage(self.usage)
        return ModelReply(
            content="".join(text),
            tool_calls=calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


def _shape_error(url: str, payload: dict[str, Any]) -> ModelError:
    return ModelError(
        f"model server {url} sent a reply of an unexpected shape: {json.dumps(payload)[:200]}"
    )
