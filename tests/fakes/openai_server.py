"""A fake OpenAI-compatible chat server on loopback that tests can script.

Words in the last user message steer the answer, and can be combined:
- ``sleep:<seconds>`` waits before the first answer of a turn;
- ``tool:<name>`` asks for that tool once, then answers after the tool result;
- ``args:<json>`` gives that tool call's arguments (JSON without spaces);
- ``status:<code>`` answers with that HTTP status;
- ``drip:<seconds>`` streams the answer word by word, waiting that long between words;
- anything else is echoed back as ``echo: <content>``.
Every request is recorded with its start and end time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer


@dataclass
class Call:
    content: str
    started: float
    finished: float = 0.0
    body: dict[str, Any] = field(default_factory=dict)


_DIRECTIVES = {"sleep", "tool", "args", "status", "drip"}


class FakeOpenAI(LoopbackServer):
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        #: Highest number of concurrent calls seen per conversation key (the text before
        #: the first "/" of the first user message).
        self.max_concurrency: dict[str, int] = {}
        #: A tool that every turn asks for once, as if each message said ``tool:<name>``.
        self.default_tool: str | None = None
        super().__init__(self._handler())

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = str(user.get("content") or "")
        directives = dict(
            word.split(":", 1)
            for word in content.split()
            if ":" in word and word.split(":")[0] in _DIRECTIVES
        )

        if self.default_tool and "tool" not in directives:
            directives["tool"] = self.default_tool
        if "sleep" in directives and last.get("role") != "tool":
            time.sleep(float(directives["sleep"]))
        if "status" in directives:
            return int(directives["status"]), {"error": {"message": "scripted"}}
        if "tool" in directives and last.get("role") != "tool":
            name = directives["tool"]
            return 200, _completion(
                "",
                tool_calls=[
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": name, "arguments": directives.get("args", "{}")},
                    }
                ],
            )
        if last.get("role") == "tool":
            return 200, _completion(f"tool said: {last.get('content')}")
        return 200, _completion(f"echo: {content}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = _conversation_key(body)
                call = Call(content=_last_user(body), started=time.time(), body=body)
                with fake._lock:
                    fake.calls.append(call)
                    fake._active[key] = fake._active.get(key, 0) + 1
                    fake.max_concurrency[key] = max(
                        fake.max_concurrency.get(key, 0), fake._active[key]
                    )
                try:
                    status, payload = fake.answer(body)
                finally:
                    with fake._lock:
                        fake._active[key] -= 1
                    call.finished = time.time()
                drip = _drip_seconds(call.content)
                if body.get("stream") and status == 200 and drip is not None:
                    self._drip(_event_stream_chunks(payload, by_word=True), drip)
                    return
                if body.get("stream") and status == 200:
                    data = "".join(_event_stream_chunks(payload)).encode()
                    content_type = "text/event-stream"
                else:
                    data = json.dumps(payload).encode()
                    content_type = "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drip(self, chunks: list[str], pause_s: float) -> None:
                # No Content-Length: the body ends when the connection closes (HTTP/1.0).
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
                    time.sleep(pause_s)

        return Handler


def _drip_seconds(content: str) -> float | None:
    for word in content.split():
        if word.startswith("drip:"):
            return float(word.removeprefix("drip:"))
    return None


def _completion(content: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def _event_stream_chunks(payload: dict[str, Any], *, by_word: bool = False) -> list[str]:
    """Split a completion into ``chat.completion.chunk`` events: two text pieces, or words."""
    message = payload["choices"][0]["message"]
    content = message.get("content") or ""
    if by_word:
        words = content.split(" ")
        pieces = [word + " " for word in words[:-1]] + words[-1:]
    else:
        half = len(content) // 2
        pieces = [content[:half], content[half:]]
    deltas: list[dict[str, Any]] = [{"role": "assistant"}]
    deltas += [{"content": piece} for piece in pieces if piece]
    for index, call in enumerate(message.get("tool_calls") or []):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {
                            "name": call["function"]["name"],
                            "arguments": call["function"]["arguments"],
                        },
                    }
                ]
            }
        )
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        for delta in deltas
    ]
    chunks.append({"object": "chat.completion.chunk", "choices": [], "usage": payload["usage"]})
    return [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]


def _last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _conversation_key(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            return str(message.get("content") or "").split(" ")[-1].split("/")[0]
    return ""
