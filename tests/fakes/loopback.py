"""The HTTP server under every fake: 127.0.0.1, a free port, a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """Serve ``handler`` on 127.0.0.1 at a port the system picks, once started."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], poll_interval_s: float = 0.05
    ) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # serve_forever checks for shutdown this often; its default of 0.5 s slows stop().
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": poll_interval_s},
            daemon=True,
        )

    @property
    def origin(self) -> str:
        """Scheme, host and port, such as ``http://127.0.0.1:40123``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
