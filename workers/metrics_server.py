"""Serve a worker's Prometheus metrics on FOXCTL_METRICS_PORT.

Dramatiq runs several worker processes per pod. Each tries to bind the port and the
first one serves; with ``PROMETHEUS_MULTIPROC_DIR`` set its scrape adds up the values of
every process of the pod. The others log that a sibling serves the port.
"""

from __future__ import annotations

import errno
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from dramatiq.broker import Broker

from shared.db import Database
from shared.metrics import CONTENT_TYPE, QueueCollector, TurnCollector, render
from shared.settings import Settings

log = structlog.get_logger(__name__)

_server: ThreadingHTTPServer | None = None


def start(settings: Settings, broker: Broker, db: Database) -> None:
    """Serve GET /metrics in a background thread; do nothing when the port is 0."""
    global _server
    if settings.metrics_port == 0 or _server is not None:
        return
    collectors = (QueueCollector(broker), TurnCollector(db))
    directory = settings.prometheus_multiproc_dir

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render(directory, collectors)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would drown the logs

    try:
        _server = ThreadingHTTPServer((settings.host, settings.metrics_port), Handler)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        log.info("metrics port served by another process", port=settings.metrics_port)
        return
    thread = threading.Thread(target=_server.serve_forever, name="metrics", daemon=True)
    thread.start()
    log.info("metrics served", host=settings.host, port=settings.metrics_port)


def stop() -> None:
    global _server
    server, _server = _server, None
    if server is not None:
        server.shutdown()
        server.server_close()
