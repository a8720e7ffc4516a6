"""Console WebSocket clients for the fan-out benchmark, run in child processes.

Each child process opens its share of the clients on one event loop, reports to the parent
when they are all connected, and then records every text frame with the wall-clock time
it arrived. The JSON in the frames is decoded only after the turns, because the clients
share the two cores with the server. A client stops after it has seen ``turns``
turn-ending events, and the parent's ``stop`` ends the others.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import httpx
import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

#: Substrings of a frame that ends a turn. Delta texts in this benchmark never contain them.
TURN_END_MARKERS = (b"turn.succeeded", b"turn.failed", b"turn.cancelled")
#: Console tokens expire after 60 s, so a new one is requested when the current one is this old.
TOKEN_REFRESH_S = 30.0

#: An event's identity: ("e", seq, type) for a persisted event and
#: ("d", turn_id, after_seq, text) for a live-only delta.
EventKey = tuple[Any, ...]


@dataclass(frozen=True)
class ClientPlan:
    """The clients of one child process: one per entry of ``sessions``."""

    api_url: str
    api_token: str
    sessions: list[str]
    turns: int
    connect_concurrency: int
    connect_timeout_s: float


@dataclass
class ClientLog:
    session_id: str
    connect_s: float = 0.0
    connect_error: str | None = None
    close_code: int | None = None
    close_reason: str = ""
    finished: bool = False
    received: list[tuple[float, EventKey]] = field(default_factory=list)
    pings: int = 0


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit. Children inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_client_process(plan: ClientPlan, pipe: Connection) -> None:
    """Entry point of a child process: connect, report, record, and send the logs back."""
    raise_fd_limit()
    # uvloop comes with uvicorn[standard], and the web process runs on it too.
    logs = uvloop.run(_run(plan, pipe))
    pipe.send(("logs", logs))
    pipe.close()


def event_key(event: dict[str, Any]) -> EventKey:
    if "seq" in event:
        return ("e", event["seq"], event.get("type"))
    return ("d", event.get("turn_id"), event.get("after_seq"), event.get("text"))


class _Tokens:
    """Console tokens per session, fetched with the API token and renewed before expiry."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = asyncio.Lock()

    async def get(self, session_id: str) -> str:
        async with self._lock:
            issued = self._tokens.get(session_id)
            if issued is None or time.monotonic() - issued[0] > TOKEN_REFRESH_S:
                response = await self._http.post(f"/api/sessions/{session_id}/console-token")
                response.raise_for_status()
                issued = (time.monotonic(), str(response.json()["token"]))
                self._tokens[session_id] = issued
            return issued[1]


class _ConsoleSocket(asyncio.Protocol):
    """One console WebSocket on websockets' sans-I/O client, without a task per socket.

    The library parses frames and sends the pongs. Each text frame is stored with the
    time its last bytes arrived, so no task has to wake up for it.
    """

    def __init__(self, url: str, log: ClientLog, turns: int) -> None:
        self._protocol = ClientProtocol(parse_uri(url))
        self._log = log
        self._turns = turns
        self._ended = 0
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.open: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.frames: list[tuple[float, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._protocol.send_request(self._protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        received_at = time.time()
        self._protocol.receive_data(data)
        for event in self._protocol.events_received():
            if isinstance(event, Response):
                self._opened()
            elif isinstance(event, Frame):
                self._frame(received_at, event)
        self._flush()

    def eof_received(self) -> bool | None:
        self._protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(1000)
            self._flush()
        if self._transport is not None:
            self._transport.close()

    def _opened(self) -> None:
        if self._protocol.handshake_exc is not None:
            self.open.set_exception(self._protocol.handshake_exc)
        else:
            self.open.set_result(None)

    def _frame(self, received_at: float, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            payload = bytes(frame.data)
            self.frames.append((received_at, payload))
            if b"turn." in payload and any(marker in payload for marker in TURN_END_MARKERS):
                self._ended += 1
                if self._ended >= self._turns:
                    self._log.finished = True
                    self.close()
        elif frame.opcode is Opcode.CLOSE and self._protocol.close_rcvd is not None:
            self._log.close_code = self._protocol.close_rcvd.code
            self._log.close_reason = self._protocol.close_rcvd.reason

    def _flush(self) -> None:
        if self._transport is None:
            return
        for chunk in self._protocol.data_to_send():
            if chunk:
                self._transport.write(chunk)
            elif self._transport.can_write_eof():
                self._transport.write_eof()


async def _run(plan: ClientPlan, pipe: Connection) -> list[ClientLog]:
    logs = [ClientLog(session_id) for session_id in plan.sessions]
    sockets: list[_ConsoleSocket | None] = [None] * len(plan.sessions)
    ws_url = plan.api_url.replace("http://", "ws://", 1)
    server = parse_uri(ws_url)
    headers = {"Authorization": f"Bearer {plan.api_token}"}
    limit = asyncio.Semaphore(plan.connect_concurrency)
    loop = asyncio.get_running_loop()

    async with httpx.AsyncClient(base_url=plan.api_url, headers=headers, timeout=30) as http:
        tokens = _Tokens(http)

        async def open_socket(index: int) -> None:
            log = logs[index]
            async with limit:
                started = time.perf_counter()
                try:
                    token = await tokens.get(log.session_id)
                    url = f"{ws_url}/ws/console/{log.session_id}?token={token}"
                    socket = _ConsoleSocket(url, log, plan.turns)
                    await asyncio.wait_for(
                        loop.create_connection(lambda: socket, server.host, server.port),
                        plan.connect_timeout_s,
                    )
                    await asyncio.wait_for(socket.open, plan.connect_timeout_s)
                except Exception as error:
                    log.connect_error = f"{type(error).__name__}: {error}"
                    return
                log.connect_s = time.perf_counter() - started
                sockets[index] = socket

        await asyncio.gather(*(open_socket(index) for index in range(len(logs))))
        failures = sum(1 for log in logs if log.connect_error is not None)
        pipe.send(("ready", len(logs) - failures, failures))

        # The parent sends ("stop", grace_s) once the turns are over.
        _, grace_s = await loop.run_in_executor(None, pipe.recv)
        open_sockets = [socket for socket in sockets if socket is not None]
        if open_sockets:
            await asyncio.wait([socket.closed for socket in open_sockets], timeout=grace_s)
        for socket in open_sockets:
            socket.close()

    for log, opened in zip(logs, sockets, strict=True):
        if opened is not None:
            _parse(log, opened.frames)
    return logs


def _parse(log: ClientLog, frames: list[tuple[float, bytes]]) -> None:
    for received_at, text in frames:
        frame = json.loads(text)
        if frame.get("type") == "event":
            log.received.append((received_at, event_key(frame["event"])))
        elif frame.get("type") == "ping":
            log.pings += 1
        else:
            # Error frames precede a close; keep them next to the close code.
            log.close_reason += f" {text.decode()}"
