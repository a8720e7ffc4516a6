"""Prometheus metrics of this pod's web processes, plus queue and turn gauges."""

from __future__ import annotations

import falcon
import falcon.asgi

from shared.metrics import CONTENT_TYPE, QueueCollector, TurnCollector, render
from web.context import WebContext


class MetricsResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        self._collectors = (QueueCollector(ctx.broker), TurnCollector(ctx.db))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # The collectors query Redis and the database, so rendering runs in the pool.
        directory = self._ctx.settings.prometheus_multiproc_dir
        resp.data = await self._ctx.run(lambda: render(directory, self._collectors))
        resp.content_type = CONTENT_TYPE
