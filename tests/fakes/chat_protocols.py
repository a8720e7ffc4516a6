"""Scripted replies in the wire format of each chat protocol, for ScriptedServer.

Both classes build the same kinds of reply, so one test can run against either protocol.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.scripted_http import ScriptedResponse, json_response, sse_response


class OpenAIReplies:
    """Chat completions bodies and ``chat.completion.chunk`` streams."""

    def text(
        self, text: str, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> ScriptedResponse:
        message = {"role": "assistant", "content": text}
        return json_response(_completion(message, "stop", prompt_tokens, completion_tokens))

    def tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> ScriptedResponse:
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return json_response(_completion(message, "tool_calls", 5, 2))

    def text_stream(
        self, pieces: list[str], prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> ScriptedResponse:
        chunks = [_chunk({"role": "assistant", "content": ""})]
        chunks += [_chunk({"content": piece}) for piece in pieces]
        chunks.append(_chunk({}, finish_reason="stop"))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        chunks.append({"id": "chatcmpl-1", "choices": [], "usage": usage})
        return sse_response([(None, json.dumps(chunk)) for chunk in chunks] + [(None, "[DONE]")])

    def tool_stream(self, call_id: str, name: str, argument_pieces: list[str]) -> ScriptedResponse:
        first = {"index": 0, "id": call_id, "type": "function", "function": {"name": name}}
        chunks = [_chunk({"role": "assistant", "tool_calls": [first]})]
        chunks += [
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in argument_pieces
        ]
        chunks.append(_chunk({}, finish_reason="tool_calls"))
        return sse_response([(None, json.dumps(chunk)) for chunk in chunks] + [(None, "[DONE]")])

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> ScriptedResponse:
        body = {"error": {"message": message, "type": "server_error"}}
        return json_response(body, status=status, headers=headers)


class AnthropicReplies:
    """Messages API bodies and event streams."""

    def text(
        self, text: str, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> ScriptedResponse:
        content = [{"type": "text", "text": text}]
        return json_response(_message(content, "end_turn", prompt_tokens, completion_tokens))

    def tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> ScriptedResponse:
        content = [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}]
        return json_response(_message(content, "tool_use", 5, 2))

    def text_stream(
        self, pieces: list[str], prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> ScriptedResponse:
        events = [
            _event("message_start", message=_message([], None, prompt_tokens, 1)),
            _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            _event("ping"),
        ]
        events += [
            _event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
            for piece in pieces
        ]
        events += _closing_events("end_turn", completion_tokens)
        return sse_response(events)

    def tool_stream(self, call_id: str, name: str, argument_pieces: list[str]) -> ScriptedResponse:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        events = [
            _event("message_start", message=_message([], None, 5, 1)),
            _event("content_block_start", index=0, content_block=block),
        ]
        events += [
            _event(
                "content_block_delta",
                index=0,
                delta={"type": "input_json_delta", "partial_json": piece},
            )
            for piece in argument_pieces
        ]
        events += _closing_events("tool_use", 2)
        return sse_response(events)

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> ScriptedResponse:
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        return json_response(body, status=status, headers=headers)


def _completion(
    message: dict[str, Any], finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _message(
    content: list[dict[str, Any]],
    stop_reason: str | None,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _event(kind: str, **fields: Any) -> tuple[str, str]:
    return kind, json.dumps({"type": kind, **fields})


def _closing_events(stop_reason: str, output_tokens: int) -> list[tuple[str, str]]:
    return [
        _event("content_block_stop", index=0),
        _event(
            "message_delta",
            delta={"stop_reason": stop_reason},
            usage={"output_tokens": output_tokens},
        ),
        _event("message_stop"),
    ]
