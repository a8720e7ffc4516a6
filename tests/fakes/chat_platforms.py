"""A fake chat platform API on loopback: Telegram, Discord and Teams in one server.

It responds to every method the adapters call, records each request with its arrival
time, and can fail the next matching requests with 429 and a Retry-After. It
also serves OpenID metadata and a JWKS for Teams tokens, and a token endpoint.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class PlatformCall:
    method: str
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class _Failure:
    path_part: str
    status: int
    retry_after_s: float
    times: int


@dataclass
class FakePlatform(LoopbackServer):
    calls: list[PlatformCall] = field(default_factory=list)
    #: Keys served at /jwks and /entra/jwks.
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    entra_jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._ids = itertools.count(100)
        LoopbackServer.__init__(self, self._handler())

    @property
    def base_url(self) -> str:
        return self.origin

    def fail_next(
        self, path_part: str, *, status: int = 429, retry_after_s: float = 1, times: int = 1
    ) -> None:
        """Fail the next ``times`` requests whose path contains ``path_part`` with ``status``."""
        with self._lock:
            self._failures.append(_Failure(path_part, status, retry_after_s, times))

    def calls_to(self, path_part: str, method: str | None = None) -> list[PlatformCall]:
        with self._lock:
            return [
                c
                for c in self.calls
                if path_part in c.path and (method is None or c.method == method)
            ]

    def _answer(self, call: PlatformCall) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.calls.append(call)
            for failure in self._failures:
                if failure.times > 0 and failure.path_part in call.path:
                    failure.times -= 1
                    headers = {"Retry-After": f"{failure.retry_after_s:g}"}
                    body = {"ok": False, "retry_after": failure.retry_after_s}
                    return failure.status, headers, body
            new_id = next(self._ids)
        return 200, {}, self._body(call, new_id)

    def _body(self, call: PlatformCall, new_id: int) -> Any:
        path = call.path
        if path.endswith("/entra/openid"):
            return {"issuer": "x", "jwks_uri": f"{self.base_url}/entra/jwks"}
        if path.endswith("/openid"):
            return {"issuer": "x", "jwks_uri": f"{self.base_url}/jwks"}
        if path.endswith("/entra/jwks"):
            return self.entra_jwks
        if path.endswith("/jwks"):
            return self.jwks
        if path.endswith("/token"):
            return {"access_token": "connector-token", "expires_in": 3600}
        if path.startswith("/bot"):
            if path.endswith("/sendMessage"):
                return {"ok": True, "result": {"message_id": new_id}}
            return {"ok": True, "result": True}
        if "/commands" in path:
            return call.body
        return {"id": f"id-{new_id}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                call = PlatformCall(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                )
                status, headers, payload = fake._answer(call)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _handle

        return Handler
