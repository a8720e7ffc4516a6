"""Per-process objects for a worker: engine, lock, runner, reconcilers.

Built lazily after Dramatiq forks its worker processes, because a database engine must
not cross a fork.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import httpx
from dramatiq.broker import Broker

from shared.agents.models import Agent
from shared.cas.stores import make_artifact_store
from shared.chat.adapters import make_reply_clients
from shared.db import Database, make_engine
from shared.events.fanout import make_publisher
from shared.events.live import EventPublisher
from shared.heartbeat import HeartbeatWriter
from shared.queues import Enqueuer
from shared.retrieval.embedders import Embedder, make_embedder
from shared.retrieval.exchange import make_search_exchange
from shared.retrieval.rerank import make_reranker
from shared.retrieval.search import SearchService
from shared.retrieval.vectors import verify_vector_support
from shared.settings import Settings, SettingsError, load_settings
from shared.turns.lease import SqlTurnLock
from workers.agent_loop import AgentLoop, LoopSettings
from workers.chat_delivery import ChatDeliverer, DeliverySettings, feed_factory
from workers.context import IndexedSearch, LexicalSearch
from workers.embedding import IndexWorker
from workers.llm.anthropic import AnthropicChatModel
from workers.llm.base import ChatModel, ModelError, ModelReply
from workers.llm.local import LocalChatModel
from workers.llm.openai_compat import OpenAICompatChatModel
from workers.reconciler import DeliveryReconciler, Reconciler
from workers.searches import SearchRunner
from workers.tools import ToolRegistry
from workers.tools.search import SemanticSearchTool
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
    chat: ChatDeliverer
    delivery_reconciler: DeliveryReconciler
    indexer: IndexWorker
    search: SearchService
    searches: SearchRunner


class UnconfiguredModel:
    """Stands in for a provider that cannot work: every call fails with ``reason``."""

    provider = "unconfigured"

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self._reason = reason

    def complete(self, messages: object, tools: object, *, on_delta: object = None) -> ModelReply:
        raise ModelError(self._reason)


class ModelFactory:
    """Build one client per provider, model and base URL, shared between threads.

    An agent overrides the defaults with its ``model`` field and the ``provider`` and
    ``base_url`` keys of its ``model_settings``.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[tuple[str, str, str | None], ChatModel] = {}
        self._lock = threading.Lock()

    def __call__(self, agent: Agent) -> ChatModel:
        overrides = agent.model_settings or {}
        provider = str(overrides.get("provider") or self._settings.llm_provider)
        base_url = overrides.get("base_url") or self._settings.llm_base_url
        name = agent.model or self._settings.llm_model
        key = (provider, name, base_url)
        with self._lock:
            if key not in self._models:
                self._models[key] = self._build(provider, name, base_url)
            return self._models[key]

    def _build(self, provider: str, name: str, base_url: str | None) -> ChatModel:
        settings = self._settings
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        if provider == "local":
            return LocalChatModel(model_path=settings.local_model_path)
        if provider == "anthropic":
            return AnthropicChatModel(
                model=name,
                api_key=api_key,
                base_url=base_url or "https://api.anthropic.com",
                max_tokens=settings.llm_max_tokens,
                timeout_s=settings.llm_timeout_s,
                max_attempts=settings.llm_max_attempts,
            )
        if provider != "openai_compat":
            return UnconfiguredModel(
                name, f"unknown provider {provider!r}; use openai_compat, anthropic or local"
            )
        if not base_url:
            return UnconfiguredModel(
                name,
                "no model provider is configured; set "
                "FOXCTL_LLM_BASE_URL to an OpenAI-compatible server, or "
                "FOXCTL_LLM_PROVIDER=local after `pip install 'foxctl[local]'`",
            )
        return OpenAICompatChatModel(
            base_url=base_url,
            model=name,
            api_key=api_key,
            auth_mode=settings.llm_auth_mode,
            auth_header=settings.llm_auth_header,
            auth_prefix=settings.llm_auth_prefix,
            timeout_s=settings.llm_timeout_s,
            max_attempts=settings.llm_max_attempts,
        )


def build_runtime(
    settings: Settings, broker: Broker, publisher: EventPublisher | None = None
) -> WorkerRuntime:
    db = Database(make_engine(settings))
    verify_vector_support(db.engine, required=settings.postgres_require_vector)
    enqueuer = Enqueuer(broker)
    stopping = threading.Event()
    lock = SqlTurnLock(db, ttl_s=settings.lease_ttl_s)
    publisher = publisher or make_publisher(settings)
    embedder = make_embedder(settings)
    search = make_search_service(settings, db, embedder)
    loop = AgentLoop(
        db,
        ModelFactory(settings),
        ToolRegistry([*workspace_tools(settings.workspace), SemanticSearchTool(search)]),
        IndexedSearch(search, LexicalSearch(settings.workspace)),
        LoopSettings(
            context_tokens=settings.context_tokens,
            delta_interval_s=settings.delta_interval_ms / 1000,
        ),
        make_artifact_store(settings),
    )
    runner = TurnRunner(
        db=db,
        lock=lock,
        enqueuer=enqueuer,
        loop=loop,
        publisher=publisher,
        holder_prefix=f"{socket.gethostname()}:{os.getpid()}",
        stopping=stopping,
        time_limit_s=settings.turn_time_limit_s,
    )
    reconciler = Reconciler(db, enqueuer, interval_s=settings.reconcile_interval_s)
    heartbeat = HeartbeatWriter(settings.run_dir, "worker")
    indexer = IndexWorker(settings, db, embedder, enqueuer)
    return WorkerRuntime(
        settings,
        db,
        runner,
        reconciler,
        stopping,
        heartbeat,
        build_chat(settings, db, publisher, stopping),
        DeliveryReconciler(db, enqueuer, interval_s=settings.reconcile_interval_s),
        indexer,
        search,
        SearchRunner(search, make_search_exchange(settings)),
    )


def build_chat(
    settings: Settings, db: Database, publisher: EventPublisher, stopping: threading.Event
) -> ChatDeliverer:
    return ChatDeliverer(
        db,
        make_reply_clients(settings, httpx.Client(timeout=15)),
        feed_factory(settings.broker_url, publisher),
        DeliverySettings(
            edit_interval_s=settings.chat_edit_interval_s,
            placeholder_text=settings.chat_placeholder_text,
            follow_s=float(settings.turn_time_limit_s),
            claim_ttl_s=settings.lease_ttl_s,
        ),
        stopping=stopping,
    )


def make_search_service(settings: Settings, db: Database, embedder: Embedder) -> SearchService:
    return SearchService(
        db,
        embedder,
        make_reranker(settings),
        require_vector=settings.postgres_require_vector,
        rerank_candidates=settings.rerank_candidates,
        rerank_weight=settings.rerank_weight,
    )


_settings: Settings | None = None
_publisher: EventPublisher | None = None


def configure(value: Settings, publisher: EventPublisher | None = None) -> None:
    """Use ``value`` instead of reading the environment (``foxctl up`` and tests).

    ``publisher`` replaces the one chosen from the settings, so that ``foxctl up`` can
    share an in-process publisher with its web server.
    """
    global _settings, _publisher
    _settings = value
    _publisher = publisher


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
    _current = build_runtime(settings(), broker, _publisher)
    return _current


def current() -> WorkerRuntime:
    if _current is None:
        raise RuntimeError("worker runtime not started; start_process() runs after boot")
    return _current
