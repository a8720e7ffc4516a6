"""Model providers against scripted HTTP servers on loopback.

Tests that take the ``provider`` fixture run once per protocol (OpenAI-compatible chat
completions and the Anthropic Messages API). Waits between retries go to a recorder, so
no test sleeps for a backoff.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.chat_protocols import AnthropicReplies, OpenAIReplies
from tests.fakes.scripted_http import (
    Pause,
    ScriptedServer,
    json_response,
    raw_response,
    sse_response,
)
from workers.llm.anthropic import AnthropicChatModel
from workers.llm.base import ChatModel, ModelError, ModelReply, ToolCall
from workers.llm.openai_compat import OpenAICompatChatModel

QUESTION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]
READ_FILE_TOOL = {
    "type": "function",
    "function": {
        "name": "fs_read_file",
        "description": "Read a file of the workspace.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


class SleepRecorder:
    """A stand-in for time.sleep that records each requested wait in seconds."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class Provider:
    name: str
    replies: OpenAIReplies | AnthropicReplies
    path: str
    build: Callable[..., ChatModel]


def build_openai(server: ScriptedServer, **options: Any) -> ChatModel:
    return OpenAICompatChatModel(base_url=f"{server.base_url}/v1", model="gpt-test", **options)


def build_anthropic(server: ScriptedServer, **options: Any) -> ChatModel:
    options.setdefault("api_key", "sk-ant-test")
    return AnthropicChatModel(
        base_url=server.base_url, model="claude-test", max_tokens=512, **options
    )


PROVIDERS = {
    "openai_compat": Provider(
        "openai_compat", OpenAIReplies(), "/v1/chat/completions", build_openai
    ),
    "anthropic": Provider("anthropic", AnthropicReplies(), "/v1/messages", build_anthropic),
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    server = ScriptedServer().start()
    yield server
    server.stop()


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> Provider:
    return PROVIDERS[request.param]


@pytest.fixture
def sleep() -> SleepRecorder:
    return SleepRecorder()


def make_model(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder, **options: Any
) -> ChatModel:
    options.setdefault("timeout_s", 5.0)
    return provider.build(server, sleep=sleep, **options)


# -- Replies ---------------------------------------------------------------------------------


def test_plain_reply_returns_text_and_usage(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.text("Hello there.", prompt_tokens=12, completion_tokens=3))
    model = make_model(provider, server, sleep)

    reply = model.complete(QUESTION, [])

    assert reply == ModelReply("Hello there.", [], prompt_tokens=12, completion_tokens=3)
    assert [request.path for request in server.requests] == [provider.path]
    assert "stream" not in server.requests[0].body


def test_streaming_passes_deltas_in_order(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    pieces = ["Hel", "lo ", "there", "."]
    server.push(provider.replies.text_stream(pieces, prompt_tokens=12, completion_tokens=4))
    model = make_model(provider, server, sleep)
    deltas: list[str] = []

    reply = model.complete(QUESTION, [], on_delta=deltas.append)

    assert deltas == pieces
    assert reply.content == "".join(deltas)
    assert (reply.prompt_tokens, reply.completion_tokens) == (12, 4)
    assert reply.tool_calls == []
    assert server.requests[0].body["stream"] is True


def test_tool_call_reply_returns_call(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.tool_call("call_7", "fs_read_file", {"path": "README.md"}))
    model = make_model(provider, server, sleep)

    reply = model.complete(QUESTION, [READ_FILE_TOOL])

    assert reply.content == ""
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert (call.id, call.name) == ("call_7", "fs_read_file")
    assert json.loads(call.arguments) == {"path": "README.md"}
    assert (reply.prompt_tokens, reply.completion_tokens) == (5, 2)


def test_streamed_tool_call_joins_argument_pieces(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    pieces = ['{"pa', 'th": "src/', 'main.py"}']
    server.push(provider.replies.tool_stream("call_9", "fs_read_file", pieces))
    model = make_model(provider, server, sleep)
    deltas: list[str] = []

    reply = model.complete(QUESTION, [READ_FILE_TOOL], on_delta=deltas.append)

    assert reply.tool_calls == [ToolCall("call_9", "fs_read_file", '{"path": "src/main.py"}')]
    assert reply.content == ""
    assert deltas == []


# -- Retries ---------------------------------------------------------------------------------


def test_rate_limit_waits_retry_after(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(
        provider.replies.error(429, "slow down", headers={"Retry-After": "7"}),
        provider.replies.text("Hello."),
    )
    model = make_model(provider, server, sleep)

    reply = model.complete(QUESTION, [])

    assert reply.content == "Hello."
    assert sleep.waits == [7.0]
    assert len(server.requests) == 2
    assert server.requests[1].body == server.requests[0].body


def test_retry_after_wait_is_capped(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(
        provider.replies.error(429, "slow down", headers={"Retry-After": "3600"}),
        provider.replies.text("Hello."),
    )
    model = make_model(provider, server, sleep, max_retry_wait_s=20.0)

    model.complete(QUESTION, [])

    assert sleep.waits == [20.0]


def test_retry_after_in_date_form_uses_backoff(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.push(
        provider.replies.error(503, "busy", headers={"Retry-After": date}),
        provider.replies.text("Hello."),
    )
    model = make_model(provider, server, sleep)

    model.complete(QUESTION, [])

    assert sleep.waits == [0.5]


def test_server_error_retried_with_backoff(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(500, "oops"), provider.replies.text("Hello."))
    model = make_model(provider, server, sleep)

    reply = model.complete(QUESTION, [])

    assert reply.content == "Hello."
    assert sleep.waits == [0.5]
    assert len(server.requests) == 2


def test_stream_retried_before_first_delta(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(502, "bad gateway"), provider.replies.text_stream(["Hi"]))
    model = make_model(provider, server, sleep)
    deltas: list[str] = []

    reply = model.complete(QUESTION, [], on_delta=deltas.append)

    assert reply.content == "Hi"
    assert deltas == ["Hi"]
    assert len(server.requests) == 2


def test_retries_stop_after_max_attempts(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(*[provider.replies.error(500, "still broken") for _ in range(3)])
    model = make_model(provider, server, sleep, max_attempts=3)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "HTTP 500" in raised.value.message
    assert "still broken" in raised.value.message
    assert sleep.waits == [0.5, 1.0]
    assert len(server.requests) == 3


def test_anthropic_overloaded_is_retried(server: ScriptedServer, sleep: SleepRecorder) -> None:
    provider = PROVIDERS["anthropic"]
    server.push(provider.replies.error(529, "Overloaded"), provider.replies.text("Hello."))
    model = make_model(provider, server, sleep)

    reply = model.complete(QUESTION, [])

    assert reply.content == "Hello."
    assert len(server.requests) == 2


# -- Failures --------------------------------------------------------------------------------


def test_bad_key_names_api_key_variable(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(401, "invalid key sk-...abcd"))
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "FOXCTL_LLM_API_KEY" in raised.value.message
    assert "HTTP 401" in raised.value.message
    assert "abcd" not in raised.value.message
    assert len(server.requests) == 1
    assert sleep.waits == []


def test_forbidden_names_api_key_variable(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(403, "no access"))
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "FOXCTL_LLM_API_KEY" in raised.value.message


def test_unknown_model_names_model_and_route(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(404, "model does not exist"))
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert repr(model.name) in raised.value.message
    assert provider.path in raised.value.message
    assert "FOXCTL_LLM_MODEL" in raised.value.message
    assert "model does not exist" in raised.value.message
    assert len(server.requests) == 1


def test_bad_request_shows_server_message(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(provider.replies.error(400, "messages: field required"))
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "HTTP 400" in raised.value.message
    assert "messages: field required" in raised.value.message
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("not json", raw_response(b"<html>gateway</html>", content_type="text/html")),
        ("json list", json_response([1, 2, 3])),
        ("wrong shape", json_response({"result": "Hello."})),
        ("content not a list", json_response({"choices": "x", "content": 7})),
    ],
)
def test_malformed_body_raises_model_error(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder, case: str, body: Any
) -> None:
    server.push(body)
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert server.base_url in raised.value.message
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("case", "events"),
    [
        ("data not json", [("message_start", "{not json")]),
        ("data not an object", [("message_start", "[1, 2]")]),
        ("ends early", []),
    ],
)
def test_broken_stream_raises_model_error(
    provider: Provider,
    server: ScriptedServer,
    sleep: SleepRecorder,
    case: str,
    events: list[tuple[str, str]],
) -> None:
    server.push(sse_response(events))
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError):
        model.complete(QUESTION, [], on_delta=lambda text: None)

    assert len(server.requests) == 1


def test_truncated_stream_raises(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    whole = provider.replies.text_stream(["Hel", "lo"])
    # Keep the opening events and the first text delta, then close the connection.
    whole.pieces = whole.pieces[:-4]
    server.push(whole)
    model = make_model(provider, server, sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [], on_delta=lambda text: None)

    assert "ended before" in raised.value.message
    assert len(server.requests) == 1


def test_timeout_message_names_timeout(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    late = provider.replies.text("too late")
    late.delay_s = 5.0
    server.push(late)
    model = make_model(provider, server, sleep, timeout_s=0.2, max_attempts=1)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "timed out after 0.2 s" in raised.value.message
    assert "FOXCTL_LLM_TIMEOUT_S" in raised.value.message


def test_timeout_is_retried(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    late = provider.replies.text("too late")
    late.delay_s = 5.0
    server.push(late, provider.replies.text("Hello."))
    model = make_model(provider, server, sleep, timeout_s=0.2, max_attempts=2)

    reply = model.complete(QUESTION, [])

    assert reply.content == "Hello."
    assert sleep.waits == [0.5]


def test_stalled_stream_not_retried(
    provider: Provider, server: ScriptedServer, sleep: SleepRecorder
) -> None:
    stalled = provider.replies.text_stream(["Hel", "lo"])
    # Stop for longer than the timeout after the first text delta.
    stalled.pieces.insert(-4, Pause(5.0))
    server.push(stalled, provider.replies.text_stream(["Hello"]))
    model = make_model(provider, server, sleep, timeout_s=0.3)
    deltas: list[str] = []

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [], on_delta=deltas.append)

    assert "stalled" in raised.value.message
    assert deltas == ["Hel"]
    assert len(server.requests) == 1


def test_unreachable_server_names_base_url(provider: Provider, sleep: SleepRecorder) -> None:
    closed = ScriptedServer()
    closed.stop()
    model = make_model(provider, closed, sleep, max_attempts=2)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [])

    assert "unreachable after 2 attempts" in raised.value.message
    assert "FOXCTL_LLM_BASE_URL" in raised.value.message
    assert sleep.waits == [0.5]


# -- OpenAI-compatible requests --------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "header", "value"),
    [
        ({}, "authorization", "Bearer sk-test"),
        ({"auth_header": "api-key", "auth_prefix": ""}, "api-key", "sk-test"),
        ({"auth_header": "X-Api-Key", "auth_prefix": ""}, "x-api-key", "sk-test"),
        ({"auth_header": "Authorization", "auth_prefix": "Key "}, "authorization", "Key sk-test"),
    ],
)
def test_openai_auth_header_carries_key(
    server: ScriptedServer, sleep: SleepRecorder, options: dict[str, str], header: str, value: str
) -> None:
    server.push(OpenAIReplies().text("Hello."))
    model = build_openai(server, api_key="sk-test", sleep=sleep, **options)

    model.complete(QUESTION, [])

    headers = server.requests[0].headers
    assert headers[header] == value
    if header != "authorization":
        assert "authorization" not in headers


@pytest.mark.parametrize(
    "options",
    [{"api_key": None}, {"api_key": "sk-test", "auth_mode": "none"}],
    ids=["no key", "auth mode none"],
)
def test_openai_without_auth_sends_no_key(
    server: ScriptedServer, sleep: SleepRecorder, options: dict[str, Any]
) -> None:
    server.push(OpenAIReplies().text("Hello."))
    model = build_openai(server, sleep=sleep, **options)

    model.complete(QUESTION, [])

    headers = server.requests[0].headers
    assert "authorization" not in headers
    assert "sk-test" not in json.dumps(headers)


def test_openai_request_carries_messages_and_tools(
    server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(OpenAIReplies().text("Hello."))
    model = build_openai(server, sleep=sleep)

    model.complete(QUESTION, [READ_FILE_TOOL])

    assert server.requests[0].body == {
        "model": "gpt-test",
        "messages": QUESTION,
        "tools": [READ_FILE_TOOL],
    }


def test_openai_streaming_request_asks_for_usage(
    server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(OpenAIReplies().text_stream(["Hi"]))
    model = build_openai(server, sleep=sleep)

    model.complete(QUESTION, [], on_delta=lambda text: None)

    body = server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_openai_stream_without_done_accepted(server: ScriptedServer, sleep: SleepRecorder) -> None:
    whole = OpenAIReplies().text_stream(["Hi"], prompt_tokens=3, completion_tokens=1)
    whole.pieces = whole.pieces[:-1]
    server.push(whole)
    model = build_openai(server, sleep=sleep)

    reply = model.complete(QUESTION, [], on_delta=lambda text: None)

    assert reply == ModelReply("Hi", [], prompt_tokens=3, completion_tokens=1)


def test_openai_stream_error_raises(server: ScriptedServer, sleep: SleepRecorder) -> None:
    server.push(sse_response([(None, json.dumps({"error": {"message": "context too long"}}))]))
    model = build_openai(server, sleep=sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [], on_delta=lambda text: None)

    assert "context too long" in raised.value.message


def test_openai_streams_two_tool_calls_by_index(
    server: ScriptedServer, sleep: SleepRecorder
) -> None:
    chunks = [
        {"index": 0, "id": "call_a", "function": {"name": "fs_list_dir", "arguments": ""}},
        {"index": 1, "id": "call_b", "function": {"name": "fs_read_file", "arguments": '{"pa'}},
        {"index": 0, "function": {"arguments": '{"path": "."}'}},
        {"index": 1, "function": {"arguments": 'th": "a.py"}'}},
    ]
    events: list[tuple[str | None, str] | Pause] = [
        (None, json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [chunk]}}]}))
        for chunk in chunks
    ]
    events.append((None, "[DONE]"))
    server.push(sse_response(events))
    model = build_openai(server, sleep=sleep)

    reply = model.complete(QUESTION, [], on_delta=lambda text: None)

    assert reply.tool_calls == [
        ToolCall("call_a", "fs_list_dir", '{"path": "."}'),
        ToolCall("call_b", "fs_read_file", '{"path": "a.py"}'),
    ]


# -- Anthropic requests ----------------------------------------------------------------------


def test_anthropic_request_sends_key_and_version(
    server: ScriptedServer, sleep: SleepRecorder
) -> None:
    server.push(AnthropicReplies().text("Hello."))
    model = build_anthropic(server, api_key="sk-ant-secret", sleep=sleep)

    model.complete(QUESTION, [])

    headers = server.requests[0].headers
    assert headers["x-api-key"] == "sk-ant-secret"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_anthropic_request_system_and_tools(server: ScriptedServer, sleep: SleepRecorder) -> None:
    server.push(AnthropicReplies().text("Hello."))
    model = build_anthropic(server, sleep=sleep)

    model.complete(QUESTION, [READ_FILE_TOOL])

    assert server.requests[0].body == {
        "model": "claude-test",
        "max_tokens": 512,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        "tools": [
            {
                "name": "fs_read_file",
                "description": "Read a file of the workspace.",
                "input_schema": READ_FILE_TOOL["function"]["parameters"],
            }
        ],
    }


def test_anthropic_request_converts_tool_history(
    server: ScriptedServer, sleep: SleepRecorder
) -> None:
    history = [
        {"role": "system", "content": "You read code."},
        {"role": "user", "content": "What is in a.py and b.py?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "fs_read_file", "arguments": '{"path": "a.py"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "fs_read_file", "arguments": '{"path": "b.py"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "print('a')"},
        {"role": "tool", "tool_call_id": "call_b", "content": "print('b')"},
    ]
    server.push(AnthropicReplies().text("Both print a letter."))
    model = build_anthropic(server, sleep=sleep)

    model.complete(history, [READ_FILE_TOOL])

    body = server.requests[0].body
    assert body["system"] == "You read code."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is in a.py and b.py?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_a",
                    "name": "fs_read_file",
                    "input": {"path": "a.py"},
                },
                {
                    "type": "tool_use",
                    "id": "call_b",
                    "name": "fs_read_file",
                    "input": {"path": "b.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "print('a')"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "print('b')"},
            ],
        },
    ]


def test_anthropic_text_beside_tool_use(server: ScriptedServer, sleep: SleepRecorder) -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "t", "arguments": "oops"}}
    history = [
        {"role": "user", "content": "Go."},
        {"role": "assistant", "content": "Looking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "content": "done"},
        {"role": "user", "content": "And now?"},
    ]
    server.push(AnthropicReplies().text("Done."))
    model = build_anthropic(server, sleep=sleep)

    model.complete(history, [])

    messages = server.requests[0].body["messages"]
    assert "system" not in server.requests[0].body
    assert messages[1]["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_a", "name": "t", "input": {}},
    ]
    assert messages[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": "done"},
            {"type": "text", "text": "And now?"},
        ],
    }


def test_anthropic_reply_text_and_tool_use(server: ScriptedServer, sleep: SleepRecorder) -> None:
    payload = {
        "type": "message",
        "content": [
            {"type": "text", "text": "Let me look. "},
            {"type": "text", "text": "One moment."},
            {"type": "tool_use", "id": "toolu_1", "name": "code_grep", "input": {"pattern": "def"}},
        ],
        "usage": {"input_tokens": 30, "output_tokens": 9, "cache_read_input_tokens": 10},
    }
    server.push(json_response(payload))
    model = build_anthropic(server, sleep=sleep)

    reply = model.complete(QUESTION, [])

    assert reply.content == "Let me look. One moment."
    assert reply.tool_calls == [ToolCall("toolu_1", "code_grep", '{"pattern": "def"}')]
    assert (reply.prompt_tokens, reply.completion_tokens) == (40, 9)


def test_anthropic_error_event_raises(server: ScriptedServer, sleep: SleepRecorder) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    server.push(sse_response([("error", json.dumps(error))]))
    model = build_anthropic(server, sleep=sleep)

    with pytest.raises(ModelError) as raised:
        model.complete(QUESTION, [], on_delta=lambda text: None)

    assert "Overloaded" in raised.value.message
    assert len(server.requests) == 1


def test_anthropic_rejects_unknown_role(server: ScriptedServer, sleep: SleepRecorder) -> None:
    model = build_anthropic(server, sleep=sleep)

    with pytest.raises(ModelError) as raised:
        model.complete([{"role": "developer", "content": "hi"}], [])

    assert "'developer'" in raised.value.message
    assert server.requests == []
