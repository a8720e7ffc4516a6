"""Probes: /healthz says the process serves requests, /readyz that it can do its work."""

from __future__ import annotations

import asyncio
from typing import Any

import falcon
import falcon.asgi
from sqlalchemy import text

from shared.broker import check_broker
from shared.migrate import current_revision, head_revision
from shared.retrieval.vectors import verify_vector_support
from web.context import WebContext

CHECK_TIMEOUT_S = 2.0


class HealthResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        self._head = head_revision(ctx.db.engine)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, str] = {}
        checks["draining"] = "failed: draining" if self._ctx.drain.draining else "ok"
        checks["database"] = await self._check(self._check_database)
        checks["broker"] = await self._check(lambda: check_broker(self._ctx.broker))
        if self._ctx.settings.postgres_require_vector:
            checks["vector"] = await self._check(self._check_vector)

        ready = all(value == "ok" for value in checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not_ready", "checks": checks}

    def _check_database(self) -> None:
        with self._ctx.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = current_revision(self._ctx.db.engine)
        if current != self._head:
            raise RuntimeError(
                f"schema at revision {current}, expected {self._head}; run `foxctl migrate`"
            )

    def _check_vector(self) -> None:
        verify_vector_support(self._ctx.db.engine, required=True)

    async def _check(self, check: Any) -> str:
        try:
            await asyncio.wait_for(self._ctx.run(check), CHECK_TIMEOUT_S)
        except TimeoutError:
            return f"failed: no answer within {CHECK_TIMEOUT_S} s"
        except Exception as error:
            return f"failed: {error}"
        return "ok"
