"""``foxctl up``: web, worker and reconciler in one process on embedded defaults."""

from __future__ import annotations

import ipaddress
import signal

import structlog
import uvicorn
from dramatiq import Worker

from shared.db import make_engine
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.settings import Settings

log = structlog.get_logger(__name__)


def run_up(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    threads: int,
    explicit: set[str],
) -> None:
    """Serve the API and run turns in this process until SIGINT or SIGTERM.

    ``explicit`` names the variables the user set; the others get laptop defaults
    (authentication off, readable logs).
    """
    overrides: dict[str, object] = {"host": host or settings.host, "port": port or settings.port}
    if "FOXCTL_AUTH" not in explicit:
        overrides["auth"] = "off"
    if "FOXCTL_LOG_FORMAT" not in explicit:
        overrides["log_format"] = "console"
    settings = settings.model_copy(update=overrides)
    if settings.auth == "off" and not _is_loopback(settings.host):
        raise SystemExit(
            f"foxctl: error: refusing to bind {settings.host} with authentication off; "
            "bind 127.0.0.1 or set FOXCTL_AUTH=on"
        )
    configure_logging(settings, process="up")

    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()

    worker = _start_worker(settings, threads)
    try:
        _serve(settings)
    finally:
        _stop_worker(worker, settings)


def _start_worker(settings: Settings, threads: int) -> Worker:
    from workers import runtime

    runtime.configure(settings)
    from workers.main import broker

    # The dramatiq CLI emits process_boot in each worker process; here we are that process.
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    log.info("in-process worker started", threads=threads, broker=settings.broker_url)
    return worker


def _stop_worker(worker: Worker, settings: Settings) -> None:
    # Running turns stop at their next safe point and go back to the queue; the
    # reconciler picks them up at the next start.
    worker.stop(timeout=settings.worker_shutdown_timeout_s * 1000)
    log.info("in-process worker stopped")


def _serve(settings: Settings) -> None:
    from web.app import build_context, create_app
    from workers.main import broker

    app = create_app(build_context(settings, broker=broker))
    # uvicorn re-raises SIGINT or SIGTERM after its graceful shutdown, which would kill
    # the process before the worker stops. With these no-op handlers installed first,
    # the re-raised signal returns here and the process exits 0 after the worker stops.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    log.info("serving", url=f"http://{settings.host}:{settings.port}")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=settings.web_graceful_timeout_s,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
