"""The embedding worker's side of the index: run index jobs and embed chunk batches."""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

from shared import telemetry
from shared.db import Database
from shared.metrics import EMBEDDING_CHUNKS
from shared.queues import EMBED_CHUNKS, Enqueuer
from shared.retrieval.embedders import DisabledEmbedder, Embedder, LocalEmbedder
from shared.retrieval.errors import EmbeddingError
from shared.retrieval.service import (
    EmbedReport,
    IndexReport,
    embed_chunks,
    index_workspace,
    record_error,
)
from shared.settings import Settings

log = structlog.get_logger(__name__)


class IndexWorker:
    """Index the workspace and embed chunks with at most ``embedding_concurrency``
    provider calls in flight in this process."""

    def __init__(
        self, settings: Settings, db: Database, embedder: Embedder, enqueuer: Enqueuer
    ) -> None:
        self._settings = settings
        self._db = db
        self._embedder = embedder
        self._enqueuer = enqueuer
        self._slots = threading.BoundedSemaphore(settings.embedding_concurrency)

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def enabled(self) -> bool:
        return not isinstance(self._embedder, DisabledEmbedder)

    def warm_up(self) -> None:
        """Load the local model now, so that the first search does not wait for it.

        Runs in a background thread of processes that embed; a failure is logged, and
        the first real call reports it again.
        """
        if not isinstance(self._embedder, LocalEmbedder):
            return

        def load() -> None:
            started = time.monotonic()
            try:
                self._embedder.embed(["warm-up"])
            except EmbeddingError as error:
                log.warning("embedding model failed to load", error=error.message)
                return
            log.info("embedding model loaded", seconds=round(time.monotonic() - started, 1))

        threading.Thread(target=load, name="embedding-warm-up", daemon=True).start()

    def index(self, params: dict[str, Any]) -> IndexReport:
        """Chunk new and changed files, drop deleted ones, enqueue embedding batches."""
        return index_workspace(
            self._db,
            self._settings.workspace,
            model=self._embedder.key if self.enabled else None,
            max_file_bytes=self._settings.index_max_file_bytes,
            batch_size=self._settings.embedding_batch_size,
            send_batch=self._send_batch,
            full=bool(params.get("full", False)),
        )

    def embed(self, chunk_ids: list[int]) -> EmbedReport:
        """Embed one batch. A permanent provider error is recorded, not raised.

        EmbeddingUnavailableError propagates, so that the queue retries the batch later.
        """
        attributes = {"foxctl.embedding.model": self._embedder.key, "foxctl.chunks": len(chunk_ids)}
        with self._slots, telemetry.span("embed batch", attributes) as current:
            try:
                report = embed_chunks(self._db, self._embedder, chunk_ids)
            except EmbeddingError as error:
                telemetry.record_error(current, error)
                log.error("embedding batch failed", error=error.message, chunks=len(chunk_ids))
                record_error(self._db, error.message)
                return EmbedReport(errors=[error.message])
            current.set_attribute("foxctl.embedded", report.embedded)
        EMBEDDING_CHUNKS.inc(report.embedded)
        log.debug("embedding batch done", embedded=report.embedded, copied=report.copied)
        return report

    def _send_batch(self, chunk_ids: list[int]) -> None:
        self._enqueuer.send(EMBED_CHUNKS, *(str(chunk_id) for chunk_id in chunk_ids))
