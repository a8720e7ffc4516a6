"""``foxctl up``: web, worker and reconciler in one process on embedded defaults."""

from __future__ import annotations

import ipaddress

import structlog
import uvicorn

from shared.db import make_engine
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.settings import Settings

log = structlog.get_logger(__name__)


def run_up(
    settings: Settings, *, host: str | None, port: int | None, threads: int, auth_explicit: bool
) -> None:
    overrides = {"host": host or settings.host, "port": port or settings.port}
    if not auth_explicit:
        overrides["auth"] = "off"
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
        _stop_worker(worker)


def _start_worker(settings: Settings, threads: int) -> object:
    from dramatiq import Worker

    from workers import runtime

    runtime.configure(settings)
    from workers.main import broker

    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    log.info("in-process worker started", threads=threads, broker=settings.broker_url)
    return worker


def _stop_worker(worker: object) -> None:
    from dramatiq import Worker

    assert isinstance(worker, Worker)
    worker.stop(timeout=settings_timeout_ms())
    log.info("in-process worker stopped")


def settings_timeout_ms() -> int:
    from workers import runtime

    return runtime.settings().worker_shutdown_timeout_s * 1000


def _serve(settings: Settings) -> None:
    from web.app import build_context, create_app
    from workers.main import broker

    app = create_app(build_context(settings, broker=broker))
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
