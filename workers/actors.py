"""Dramatiq actors. Each takes ids only and is safe to run more than once."""

from __future__ import annotations

import dramatiq

from shared.errors import UnavailableError
from shared.queues import (
    DELIVER_CHAT_REPLY,
    EMBED_CHUNKS,
    INDEX_WORKSPACE,
    RUN_JOB,
    RUN_SEARCH,
    RUN_SESSION,
)
from shared.retrieval.errors import EmbeddingUnavailableError
from workers import runtime
from workers.broker_setup import broker
from workers.chat_delivery import DeliveryLater
from workers.maintenance import execute_run

# Dramatiq binds an actor to the global broker when the decorator runs, so the import
# of broker_setup above must come first. It is imported here only for that effect.
__all__ = [
    "broker",
    "deliver_chat_reply",
    "embed_chunks",
    "index_workspace",
    "run_job",
    "run_search",
    "run_session",
]

#: Dramatiq runs prefetched messages lowest priority number first. A worker on both
#: the search and embeddings queues takes a waiting search before its next batch.
SEARCH_PRIORITY = 0
BULK_PRIORITY = 10

_settings = runtime.settings()


@dramatiq.actor(
    queue_name=RUN_SESSION.queue,
    actor_name=RUN_SESSION.name,
    # Turn failures (model errors, cancels) are recorded on the turn and do not raise.
    # What raises is infrastructure (database down), so a few retries with a short
    # backoff cover a failover; the reconciler re-enqueues anything beyond that.
    max_retries=_settings.turn_max_retries,
    min_backoff=1_000,
    max_backoff=30_000,
    time_limit=(_settings.turn_time_limit_s + 60) * 1_000,
)
def run_session(session_id: str) -> None:
    """Run the session's next queued turn under its lease.

    Idempotent: a redelivered message finds the turn finished (or the lease held) and
    does nothing, and fenced writes keep an expired holder from replying twice.
    """
    runtime.current().runner.run_session(session_id)


@dramatiq.actor(
    queue_name=RUN_JOB.queue,
    actor_name=RUN_JOB.name,
    # Job failures are recorded on the run and do not raise; what raises is a database
    # outage, worth a few retries.
    max_retries=3,
    min_backoff=5_000,
    max_backoff=60_000,
    time_limit=60 * 60 * 1_000,
)
def run_job(job_run_id: str) -> None:
    """Run a recorded maintenance job. Idempotent: a finished run is not run again."""
    execute_run(runtime.current().db, job_run_id)


@dramatiq.actor(
    queue_name=DELIVER_CHAT_REPLY.queue,
    actor_name=DELIVER_CHAT_REPLY.name,
    # Retries wait for a platform's Retry-After or for a long turn; each retry resumes
    # from what the delivery row records as sent.
    max_retries=_settings.chat_delivery_max_retries,
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=(_settings.turn_time_limit_s + 120) * 1_000,
)
def deliver_chat_reply(delivery_id: str) -> None:
    """Send a turn's reply to its chat platform: placeholder, edits, final text.

    Idempotent: a delivered reply is not sent again, and a retry sends only the pieces
    not yet recorded as sent. A 429 retries after the platform's Retry-After.
    """
    try:
        runtime.current().chat.deliver(delivery_id)
    except DeliveryLater as later:
        raise dramatiq.Retry(str(later), delay=max(int(later.delay_s * 1000), 1)) from later


@dramatiq.actor(
    queue_name=INDEX_WORKSPACE.queue,
    actor_name=INDEX_WORKSPACE.name,
    max_retries=3,
    min_backoff=5_000,
    max_backoff=60_000,
    time_limit=60 * 60 * 1_000,
    priority=BULK_PRIORITY,
)
def index_workspace(job_run_id: str) -> None:
    """Run a recorded index job: chunk changed files, then enqueue embedding batches.

    Idempotent: a finished run is not run again, and files whose hash is unchanged
    are skipped.
    """
    execute_run(runtime.current().db, job_run_id)


@dramatiq.actor(
    queue_name=EMBED_CHUNKS.queue,
    actor_name=EMBED_CHUNKS.name,
    # A provider that is down or rate-limits us fails after its own short retries; the
    # queue then retries the batch after the provider's Retry-After or a longer backoff.
    # Permanent errors (wrong dimension, bad request) are recorded and not retried.
    max_retries=_settings.embedding_max_retries,
    min_backoff=2_000,
    max_backoff=300_000,
    retry_when=lambda retries, error: (
        isinstance(error, dramatiq.Retry | UnavailableError)
        and retries < _settings.embedding_max_retries
    ),
    time_limit=10 * 60 * 1_000,
    priority=BULK_PRIORITY,
)
def embed_chunks(*chunk_ids: str) -> None:
    """Embed a batch of chunks and store their vectors.

    Idempotent per chunk: chunks that already have a vector of the index's model are
    skipped.
    """
    try:
        runtime.current().indexer.embed([int(chunk_id) for chunk_id in chunk_ids])
    except EmbeddingUnavailableError as error:
        after_s = error.retry_after_s
        delay_ms = int(after_s * 1000) if after_s is not None else None
        raise dramatiq.Retry(error.message, delay=delay_ms) from error


@dramatiq.actor(
    queue_name=RUN_SEARCH.queue,
    actor_name=RUN_SEARCH.name,
    # The web process waits a few seconds and then returns full-text results alone, so
    # a retry would run a search whose results no one reads. The request is taken once.
    max_retries=0,
    time_limit=60 * 1_000,
    # Dramatiq's age limit drops a message that no worker took before the web process
    # stopped waiting, so the queue does not fill up while no worker consumes it.
    max_age=int(_settings.search_timeout_s * 1_000),
    priority=SEARCH_PRIORITY,
)
def run_search(request_id: str) -> None:
    """Run a search stored by a web process and hand it the results.

    Idempotent: the request is removed when taken, so a redelivery finds nothing.
    """
    runtime.current().searches.run(request_id)
