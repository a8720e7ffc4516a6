from __future__ import annotations

import time

import falcon
import falcon.asgi

from shared.agents import service
from shared.agents.models import AgentCreate, AgentOut, AgentUpdate
from web.context import WebContext
from web.http import dump, page, page_limit, read_model


class AgentsResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = page_limit(req)
        cursor = req.get_param("cursor")

        def list_agents() -> object:
            with self._ctx.db.read() as db:
                rows = service.list_agents(db, limit=limit, after=cursor)
                return page(AgentOut, rows, limit, lambda a: a.id)

        resp.media = await self._ctx.run(list_agents)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        spec = await read_model(req, AgentCreate, self._ctx.settings.max_body_bytes)

        def create() -> object:
            with self._ctx.db.write() as db:
                return dump(AgentOut, service.create_agent(db, spec))

        resp.media = await self._ctx.run(create)
        resp.status = falcon.HTTP_201


class AgentResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent_id: str
    ) -> None:
        def get() -> object:
            with self._ctx.db.read() as db:
                return dump(AgentOut, service.get_agent(db, agent_id))

        resp.media = await self._ctx.run(get)

    async def on_patch(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent_id: str
    ) -> None:
        change = await read_model(req, AgentUpdate, self._ctx.settings.max_body_bytes)

        def update() -> object:
            with self._ctx.db.write() as db:
                return dump(AgentOut, service.update_agent(db, agent_id, change))

        resp.media = await self._ctx.run(update)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent_id: str
    ) -> None:
        def delete() -> None:
            with self._ctx.db.write() as db:
                service.delete_agent(db, agent_id)

        await self._ctx.run(delete)
        resp.status = falcon.HTTP_204


class AgentStopResource:
    """Stop an agent: its automatic turns end and its pending turns are cancelled."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent_id: str
    ) -> None:
        def stop() -> object:
            with self._ctx.db.write() as db:
                return dump(AgentOut, service.stop_agent(db, agent_id))

        resp.media = await self._ctx.run(stop)


class AgentStartResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent_id: str
    ) -> None:
        def start() -> object:
            with self._ctx.db.write() as db:
                return dump(AgentOut, service.start_agent(db, agent_id, time.time()))

        resp.media = await self._ctx.run(start)
