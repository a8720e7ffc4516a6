"""The workspace index: start an index job, read its status, search it."""

from __future__ import annotations

import falcon
import falcon.asgi

from shared.jobs.catalog import enqueue_job, record_job
from shared.retrieval.embedders import make_embedder
from shared.retrieval.models import IndexAccepted, IndexRequest
from shared.retrieval.rerank import make_reranker
from shared.retrieval.search import MAX_LIMIT, SearchOptions, SearchService
from shared.retrieval.service import index_status
from web.context import WebContext
from web.http import invalid_query, query_int, read_model


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
    """Search the index. The query embedding is one provider call in the I/O pool.

    NOTE: with FOXCTL_EMBEDDING_PROVIDER=local the web process loads the MiniLM model
    on its first search; give the web tier an openai_compat provider to keep model code
    out of it.
    """

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        settings = ctx.settings
        self._search = SearchService(
            ctx.db,
            make_embedder(settings),
            make_reranker(settings),
            require_vector=settings.postgres_require_vector,
            rerank_candidates=settings.rerank_candidates,
            rerank_weight=settings.rerank_weight,
        )

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        query = req.get_param("q") or ""
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

        def search() -> object:
            return self._search.search(query, options).model_dump(mode="json")

        resp.media = await self._ctx.run(search)
