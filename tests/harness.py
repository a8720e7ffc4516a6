"""An in-process foxctl: the real app and turn runner over one database and a StubBroker."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import falcon.testing
from dramatiq.brokers.stub import StubBroker

from shared.auth.service import create_token
from shared.cas.stores import FileArtifactStore
from shared.db import Database
from shared.events.live import MemoryPublisher
from shared.queues import SEARCH, TURNS, Enqueuer
from shared.retrieval.embedders import make_embedder
from shared.retrieval.exchange import make_search_exchange
from shared.retrieval.search import SearchService
from shared.settings import Settings
from shared.turns.lease import SqlTurnLock
from web.app import build_context, create_app
from workers.agent_loop import AgentLoop, LoopSettings
from workers.context import LexicalSearch
from workers.llm.openai_compat import OpenAICompatChatModel
from workers.runtime import make_search_service
from workers.searches import SearchRunner
from workers.tools import ToolRegistry
from workers.tools.workspace import workspace_tools
from workers.turn_runner import TurnRunner


class Harness:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        model_url: str | None = None,
        workspace: Path | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.broker = StubBroker()
        self.enqueuer = Enqueuer(self.broker)
        self.stopping = threading.Event()
        self.lock = SqlTurnLock(db, ttl_s=settings.lease_ttl_s)
        self.publisher = MemoryPublisher()
        root = workspace or settings.workspace
        self.artifacts = FileArtifactStore(settings.storage_root / "cas")
        model = OpenAICompatChatModel(
            base_url=model_url or "http://127.0.0.1:9/v1", model="fake", max_attempts=1
        )
        self.runner = TurnRunner(
            db=db,
            lock=self.lock,
            enqueuer=self.enqueuer,
            loop=AgentLoop(
                db,
                lambda agent: model,
                ToolRegistry(workspace_tools(root)),
                LexicalSearch(root),
                LoopSettings(),
                self.artifacts,
            ),
            publisher=self.publisher,
            holder_prefix="test",
            stopping=self.stopping,
        )
        self.app = create_app(
            build_context(settings, db=db, broker=self.broker, publisher=self.publisher)
        )
        self.client = falcon.testing.TestClient(self.app)
        with db.write() as session:
            _, self.token = create_token(session, "tests")
        self.headers = {"Authorization": f"Bearer {self.token}"}

    # -- API shortcuts -----------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> falcon.testing.Result:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.simulate_request(method, path, headers=headers, **kwargs)

    def create_agent(self, name: str = "helper", **fields: Any) -> dict[str, Any]:
        result = self.call("POST", "/api/agents", json={"name": name, "role": "coder", **fields})
        assert result.status_code == 201, result.json
        return dict(result.json)

    def create_session(self, agent: str = "helper", **fields: Any) -> str:
        result = self.call("POST", "/api/sessions", json={"agent_id": agent, **fields})
        assert result.status_code == 201, result.json
        return str(result.json["id"])

    def post(self, session_id: str, content: str, **kwargs: Any) -> falcon.testing.Result:
        return self.call(
            "POST", f"/api/sessions/{session_id}/messages", json={"content": content}, **kwargs
        )

    def turn(self, turn_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/turns/{turn_id}").json)

    def events(self, session_id: str) -> list[dict[str, Any]]:
        result = self.call("GET", "/api/events", params={"session_id": session_id, "limit": 500})
        return list(result.json["items"])

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        result = self.call("GET", f"/api/sessions/{session_id}/messages")
        return list(result.json["items"])

    # -- worker shortcuts --------------------------------------------------------------

    def wake_ups(self) -> list[str]:
        """Drain the turns queue and return the session ids it carried."""
        queue = self.broker.queues[TURNS]
        sessions = []
        while not queue.empty():
            sessions.append(self._decode(queue.get_nowait()))
        return sessions

    def run_pending(self) -> None:
        """Run wake-ups until the queue is empty, as a single worker thread would."""
        while sessions := self.wake_ups():
            for session_id in sessions:
                self.runner.run_session(session_id)

    @staticmethod
    def _decode(raw: bytes) -> str:
        import dramatiq

        return str(dramatiq.Message.decode(raw).args[0])


class SearchQueueThread:
    """Run the harness's search queue in a thread, as an embedding worker would.

    ``GET /api/search`` waits for a worker, so a test that searches through the API
    starts one of these first (it is a context manager).
    """

    def __init__(self, harness: Harness, search: SearchService | None = None) -> None:
        settings = harness.settings
        if search is None:
            search = make_search_service(settings, harness.db, make_embedder(settings))
        self.runner = SearchRunner(search, make_search_exchange(settings))
        self._queue = harness.broker.queues[SEARCH]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="search-queue", daemon=True)
        self.handled = 0

    def __enter__(self) -> SearchQueueThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self._queue.get(timeout=0.02)
            except queue.Empty:
                continue
            self.runner.run(Harness._decode(raw))
            self.handled += 1
