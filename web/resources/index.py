"""The workspace index: start an index job, read its status, search it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import partial

import falcon
import falcon.asgi
import redis
import structlog

from shared.errors import UnavailableError
from shared.jobs.catalog import enqueue_job, record_job
from shared.metrics import SEARCH_WAIT_SECONDS
from shared.queues import RUN_SEARCH
from shared.retrieval.embedders import DisabledEmbedder
from shared.retrieval.errors import InvalidQueryError
from shared.retrieval.exchange import SearchTimeout, SearchUnavailable
from shared.retrieval.models import IndexAccepted, IndexRequest
from shared.retrieval.search import MAX_LIMIT, SearchOptions, SearchService, check_query
from shared.retrieval.service import index_status
from web.context import WebContext
from web.errors import ApiError
from web.http import invalid_query, query_int, read_model

log = structlog.get_logger(__name__)


class IndexResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        require = self._ctx.settings.postgres_require_vector

        def status() -> object:
            return index_status(self._ctx.db, require_vector=require).model_dump(mode="json")

        resp.media = await self._ctx.run(status)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        spec = IndexRequest()
        if req.content_length:
            spec = await read_model(req, IndexRequest, self._ctx.settings.max_body_bytes)

        def start() -> object:
            with self._ctx.db.write() as db:
                run = record_job(db, "index_workspace", {"full": spec.full}, origin="api")
            enqueue_job(self._ctx.enqueuer, run)
            return IndexAccepted(job_id=run.id, full=spec.full).model_dump(mode="json")

        resp.media = await self._ctx.run(start)
        resp.status = falcon.HTTP_202


class SearchResource:
    """Hand the search to a worker on the search queue and wait for its results.

    The web tier embeds no query and calls no reranker (ARCHITECTURE invariant 5). The
    request waits on the event loop, not in the I/O pool, so slow workers do not hold
    threads that other requests need. When no worker responds within
    FOXCTL_SEARCH_TIMEOUT_S, its search fails, or Redis is unreachable, the response
    comes from full-text search alone, a database query, with a warning that gives the
    reason.
    With no embedding provider and no reranker, full text is all a worker could do, so
    the web process runs it directly.
    """

    #: After Redis failed, searches skip the hand-over for this long, so that an outage
    #: does not cost every search a connect timeout.
    REDIS_PAUSE_S = 5.0

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        settings = ctx.settings
        self._full_text = SearchService(
            ctx.db, DisabledEmbedder(), require_vector=settings.postgres_require_vector
        )
        self._text_only = (
            settings.embedding_provider == "none" and settings.rerank_provider == "none"
        )
        self._redis_failed_at = -self.REDIS_PAUSE_S
        self._redis_error = ""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = query_int(req, "limit", default=10, low=1, high=MAX_LIMIT)
        assert limit is not None
        rerank_raw = req.get_param("rerank")
        rerank: bool | None = None
        if rerank_raw is not None:
            if rerank_raw.lower() not in ("true", "false", "1", "0"):
                raise invalid_query("rerank", rerank_raw, "true or false")
            rerank = rerank_raw.lower() in ("true", "1")
        options = SearchOptions(
            limit=limit, path_prefix=req.get_param("path_prefix") or None, rerank=rerank
        )
        try:
            query = check_query(req.get_param("q") or "", options)
        except InvalidQueryError as error:
            raise _invalid_q(error.message) from error
        if self._text_only:
            # The configured search is full text, so no warning; rerank=true still
            # reports that no reranker is configured.
            resp.media = await self._ctx.run(
                lambda: self._full_text.search(query, options).model_dump(mode="json")
            )
            return
        if time.monotonic() - self._redis_failed_at < self.REDIS_PAUSE_S:
            resp.media = await self._full_text_only(query, options, self._unreachable())
            return
        resp.media = await self._hand_over(query, options)

    async def _hand_over(self, query: str, options: SearchOptions) -> dict[str, object]:
        request = {
            "q": query,
            "limit": options.limit,
            "path_prefix": options.path_prefix,
            "rerank": options.rerank,
        }
        timeout_s = self._ctx.settings.search_timeout_s
        request_id: str | None = None

        def submit() -> str:
            nonlocal request_id
            request_id = self._ctx.searches.submit(request, ttl_s=timeout_s)
            try:
                self._ctx.enqueuer.send(RUN_SEARCH, request_id)
            except redis.RedisError as error:
                raise SearchUnavailable(str(error)) from error
            return request_id

        started = time.monotonic()
        try:
            try:
                response = await self._ctx.searches.wait(await self._ctx.run(submit), timeout_s)
            except asyncio.CancelledError:
                # The client went away: drop the request, so that no worker runs it.
                if request_id is not None:
                    discard = partial(self._ctx.searches.discard, request_id)
                    await asyncio.shield(self._ctx.run(discard))
                raise
        except SearchUnavailable as error:
            SEARCH_WAIT_SECONDS.labels(outcome="unavailable").observe(time.monotonic() - started)
            log.warning("search hand-over failed: Redis unreachable", error=str(error))
            self._redis_failed_at, self._redis_error = time.monotonic(), str(error)
            return await self._full_text_only(query, options, self._unreachable())
        except SearchTimeout:
            SEARCH_WAIT_SECONDS.labels(outcome="timeout").observe(time.monotonic() - started)
            log.warning("search timed out waiting for a worker", timeout_s=timeout_s)
            warning = (
                f"no worker responded within {timeout_s:g} s (FOXCTL_SEARCH_TIMEOUT_S), so "
                "these are full-text results only; the workers on the search queue are "
                "busy or still loading the embedding model, or none consumes the queue "
                "(start one with `foxctl worker --queues embeddings --queues search`)"
            )
            return await self._full_text_only(query, options, warning)
        if "results" in response:
            SEARCH_WAIT_SECONDS.labels(outcome="ok").observe(time.monotonic() - started)
            results: dict[str, object] = response["results"]
            return results
        SEARCH_WAIT_SECONDS.labels(outcome="error").observe(time.monotonic() - started)
        code, message = response["error"]["code"], response["error"]["message"]
        if code == InvalidQueryError.code:
            raise _invalid_q(message)
        if code == UnavailableError.code:
            raise UnavailableError(message)
        warning = (
            f"the search failed on the worker ({message}), so these are full-text results only"
        )
        return await self._full_text_only(query, options, warning)

    def _unreachable(self) -> str:
        return (
            f"the broker's Redis is unreachable ({self._redis_error}), so no worker could "
            "run the search and these are full-text results only"
        )

    async def _full_text_only(
        self, query: str, options: SearchOptions, warning: str | None
    ) -> dict[str, object]:
        def search() -> dict[str, object]:
            results = self._full_text.search(query, replace(options, rerank=False))
            if warning is not None:
                results.warnings.append(warning)
            return results.model_dump(mode="json")

        return await self._ctx.run(search)


def _invalid_q(message: str) -> ApiError:
    return ApiError(falcon.HTTP_422, "invalid_query", message, details={"parameter": "q"})
