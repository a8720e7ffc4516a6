"""Per-process objects for a worker: engine, lock, runner, reconciler.

Built lazily after Dramatiq forks its worker processes, because a database engine must
not cross a fork.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

from dramatiq.broker import Broker

from shared.agents.models import Agent
from shared.db import Database, make_engine
from shared.events.live import EventPublisher
from shared.heartbeat import HeartbeatWriter
from shared.queues import Enqueuer
from shared.settings import Settings, SettingsError, load_settings
from shared.turns.lease import SqlTurnLock
from workers.agent_loop import AgentLoop, LoopSettings
from workers.context import LexicalSearch
from workers.llm.base import ChatModel, ModelError, ModelReply
from workers.llm.openai_compat import OpenAICompatChatModel
from workers.reconciler import Reconciler
from workers.tools import ToolRegistry
from workers.tools.workspace import workspace_tools
from workers.turn_runner import TurnRunner


@dataclass
class WorkerRuntime:
    settings: Settings
    db: Database
    runner: TurnRunner
    reconciler: Reconciler
    stopping: threading.Event
    heartbeat: HeartbeatWriter


class UnconfiguredModel:
    """Stands in when no model provider is configured: every call fails clearly."""

    def __init__(self, name: str) -> None:
        self.name = name

    def complete(self, messages: object, tools: object, *, on_delta: object = None) -> ModelReply:
        raise ModelError(
            "no model provider is configured; set FOXCTL_LLM_BASE_URL (and "
            "FOXCTL_LLM_API_KEY) to an OpenAI-compatible server"
        )


def model_factory(settings: Settings) -> ModelFactory:
    return ModelFactory(settings)


class ModelFactory:
    """Build one client per model name and share it between threads (httpx is thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, ChatModel] = {}
        self._lock = threading.Lock()

    def __call__(self, agent: Agent) -> ChatModel:
        name = agent.model or self._settings.llm_model
        with self._lock:
            if name not in self._models:
                self._models[name] = self._build(name)
            return self._models[name]

    def _build(self, name: str) -> ChatModel:
        settings = self._settings
        if not settings.llm_base_url:
            return UnconfiguredModel(name)
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAICompatChatModel(
            base_url=settings.llm_base_url,
            model=name,
            api_key=api_key,
            timeout_s=settings.llm_timeout_s,
        )


def build_runtime(
    settings: Settings, broker: Broker, publisher: EventPublisher | None = None
) -> WorkerRuntime:
    db = Database(make_engine(settings))
    enqueuer = Enqueuer(broker)
    stopping = threading.Event()
    lock = SqlTurnLock(db, ttl_s=settings.lease_ttl_s)
    loop = AgentLoop(
        db,
        model_factory(settings),
        ToolRegistry(workspace_tools(settings.workspace)),
        LexicalSearch(settings.workspace),
        LoopSettings(context_tokens=settings.context_tokens),
    )
    runner = TurnRunner(
        db=db,
        lock=lock,
        enqueuer=enqueuer,
        loop=loop,
        publisher=publisher,
        holder_prefix=f"{socket.gethostname()}:{os.getpid()}",
        stopping=stopping,
    )
    reconciler = Reconciler(db, enqueuer, interval_s=settings.reconcile_interval_s)
    heartbeat = HeartbeatWriter(settings.run_dir, "worker")
    return WorkerRuntime(settings, db, runner, reconciler, stopping, heartbeat)


_settings: Settings | None = None


def configure(value: Settings) -> None:
    """Use ``value`` instead of reading the environment (``foxctl up`` and tests)."""
    global _settings
    _settings = value


def settings() -> Settings:
    global _settings
    if _settings is None:
        try:
            _settings = load_settings()
        except SettingsError as error:
            raise SystemExit(f"foxctl worker: {error}") from None
    return _settings


_current: WorkerRuntime | None = None


def start_process(broker: Broker) -> WorkerRuntime:
    """Build this process's runtime; called once per process after fork."""
    global _current
    _current = build_runtime(settings(), broker)
    return _current


def current() -> WorkerRuntime:
    if _current is None:
        raise RuntimeError("worker runtime not started; start_process() runs after boot")
    return _current
