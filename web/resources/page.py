"""The browser console: a static page at ``/`` and its files under ``/static``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The page loads only its own script and style and talks only to its own origin
# (fetch and WebSocket), so a strict policy costs nothing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ConsolePageResource:
    """Serve ``index.html``, read once at start-up."""

    def __init__(self) -> None:
        self._body = (STATIC_DIR / "index.html").read_bytes()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self._body
        resp.set_header("Cache-Control", "no-cache")
        secure_page_headers(resp)


def secure_page_headers(resp: falcon.asgi.Response) -> None:
    resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")


def add_console_routes(app: falcon.asgi.App[Any, Any]) -> None:
    app.add_route("/", ConsolePageResource())
    app.add_static_route("/static", str(STATIC_DIR))
