from __future__ import annotations

import falcon.asgi

from shared.jobs.models import JobRunOut
from shared.jobs.service import list_runs
from web.context import WebContext
from web.http import page, page_limit


class JobsResource:
    """List recent maintenance job runs, newest first."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = page_limit(req)
        cursor = req.get_param("cursor")
        name = req.get_param("name")

        def list_page() -> object:
            with self._ctx.db.read() as db:
                rows = list_runs(db, name=name, limit=limit, before=cursor)
                return page(JobRunOut, rows, limit, lambda r: r.id)

        resp.media = await self._ctx.run(list_page)
