"""Create the broker from settings and wire worker lifecycle hooks.

Imported before any actor module, because Dramatiq binds actors to the global broker
at import time.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import dramatiq
import structlog
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from shared.broker import make_broker
from shared.logging import configure_logging
from shared.queues import ALL_QUEUES, CHAT_DELIVERY, EMBEDDINGS, SEARCH, TURNS
from shared.telemetry import configure_tracing, shutdown_tracing
from workers import metrics_server, runtime

log = structlog.get_logger(__name__)


class RuntimeMiddleware(Middleware):
    """Build per-process state after fork; stop taking turns at shutdown."""

    def after_process_boot(self, broker: Broker) -> None:
        # Per process: the span exporter's thread does not survive Dramatiq's fork.
        configure_tracing(runtime.settings(), process="worker")
        runtime.start_process(broker)
        ignore_repeated_sigterm()

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        queues = worker.consumer_whitelist
        if queues is None or TURNS in queues:
            runtime.current().reconciler.start()
        # Lost delivery wake-ups are re-sent only where they are consumed, so that a
        # deployment without a chat-delivery worker does not fill that queue.
        if queues is None or CHAT_DELIVERY in queues:
            runtime.current().delivery_reconciler.start()
        if queues is None or {SEARCH, EMBEDDINGS} & set(queues):
            runtime.current().indexer.warm_up()
        runtime.current().heartbeat.start()
        metrics_server.start(runtime.settings(), broker, runtime.current().db)
        log.info("worker started", queues=sorted(queues or ALL_QUEUES))

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # Running turns stop at their next safe point and go back to the queue.
        log.info("worker stopping")
        current = runtime.current()
        current.stopping.set()
        current.heartbeat.stopping = True
        current.heartbeat.write()
        current.reconciler.stop()
        current.delivery_reconciler.stop()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        runtime.current().heartbeat.stop()
        runtime.current().db.dispose()
        metrics_server.stop()
        # Dramatiq's worker processes are multiprocessing children, which end with
        # os._exit and skip atexit hooks, so the buffered spans are exported here.
        shutdown_tracing()
        log.info("worker stopped")


#: A second SIGTERM this soon after the first is taken as the same request to stop.
REPEATED_SIGTERM_WINDOW_S = 2.0


def ignore_repeated_sigterm() -> None:
    """Let a worker process stop gracefully when SIGTERM reaches it twice at once.

    Dramatiq's worker process stops gracefully on the first SIGTERM and exits at once on
    the second. Procfile runners (honcho, and platforms that signal every process of a
    container) send SIGTERM to the whole process group, and Dramatiq's main process
    forwards its own copy, so the worker process gets two. Here a second one within
    REPEATED_SIGTERM_WINDOW_S is ignored; a later one still exits at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    dramatiq_handler = signal.getsignal(signal.SIGTERM)
    # Only in Dramatiq's worker processes; `foxctl up` handles its signals itself.
    if not callable(dramatiq_handler):
        return
    first_at: float | None = None

    def handler(number: int, frame: FrameType | None) -> None:
        nonlocal first_at
        now = time.monotonic()
        if first_at is not None and now - first_at < REPEATED_SIGTERM_WINDOW_S:
            log.info("repeated SIGTERM ignored; the worker is already stopping")
            return
        first_at = first_at or now
        dramatiq_handler(number, frame)

    signal.signal(signal.SIGTERM, handler)


def setup_broker() -> Broker:
    settings = runtime.settings()
    configure_logging(settings, process="worker")
    broker = make_broker(settings)
    broker.add_middleware(RuntimeMiddleware())
    for queue in ALL_QUEUES:
        broker.declare_queue(queue)
    dramatiq.set_broker(broker)
    return broker


broker = setup_broker()
