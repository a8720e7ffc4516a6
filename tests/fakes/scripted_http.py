"""A loopback HTTP server that responds to each POST with the next scripted response.

Tests push responses (JSON, raw bytes, or a streamed body sent piece by piece with
pauses) and afterwards read the requests the server received, with headers and body.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class Pause:
    """A stop of ``seconds`` in the middle of a streamed body."""

    seconds: float


@dataclass
class ScriptedResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Body parts sent in order. Each bytes piece is written and flushed on its own.
    pieces: list[bytes | Pause] = field(default_factory=list)
    #: Seconds to wait before sending the status line, to make a client time out.
    delay_s: float = 0.0
    #: Whether to send Content-Length. Without it the body ends when the connection closes.
    sized: bool = True


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: dict[str, Any]


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> ScriptedResponse:
    return ScriptedResponse(
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
        pieces=[json.dumps(payload).encode()],
    )


def raw_response(
    body: bytes, status: int = 200, content_type: str = "text/plain"
) -> ScriptedResponse:
    return ScriptedResponse(status=status, headers={"Content-Type": content_type}, pieces=[body])


def sse_response(events: list[tuple[str | None, str] | Pause]) -> ScriptedResponse:
    """Build a ``text/event-stream`` response from (event name or None, data) pairs."""
    pieces: list[bytes | Pause] = []
    for event in events:
        if isinstance(event, Pause):
            pieces.append(event)
            continue
        name, data = event
        prefix = f"event: {name}\n" if name else ""
        pieces.append(f"{prefix}data: {data}\n\n".encode())
    return ScriptedResponse(
        headers={"Content-Type": "text/event-stream"}, pieces=pieces, sized=False
    )


class ScriptedServer(LoopbackServer):
    """Serve scripted responses on 127.0.0.1 and record every request."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._script: list[ScriptedResponse] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__(self._handler(), poll_interval_s=0.02)

    @property
    def base_url(self) -> str:
        return self.origin

    def push(self, *responses: ScriptedResponse) -> None:
        with self._lock:
            self._script.extend(responses)

    def stop(self) -> None:
        # Wakes handlers that wait in a delay or a pause, so no thread outlives the test.
        self._stopping.set()
        super().stop()

    def _next_response(self, request: ReceivedRequest) -> ScriptedResponse:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.pop(0)
        message = f"scripted server has no response left for request {len(self.requests)}"
        # 418 is neither retried nor mapped to a specific error, so this text reaches the test.
        return raw_response(message.encode(), status=418)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                request = ReceivedRequest(
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=json.loads(raw) if raw else {},
                )
                response = server._next_response(request)
                try:
                    self._send(response)
                except (BrokenPipeError, ConnectionResetError):
                    # The client closed the connection, for example after its own timeout.
                    return

            # GET requests carry no body, so the same code serves them.
            do_GET = do_POST

            def _send(self, response: ScriptedResponse) -> None:
                if server._stopping.wait(response.delay_s):
                    return
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.sized:
                    size = sum(len(p) for p in response.pieces if isinstance(p, bytes))
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                for piece in response.pieces:
                    if isinstance(piece, Pause):
                        if server._stopping.wait(piece.seconds):
                            return
                        continue
                    self.wfile.write(piece)
                    self.wfile.flush()

        return Handler
