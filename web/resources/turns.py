from __future__ import annotations

import falcon.asgi

from shared.events.live import publish_all
from shared.events.service import take_appended
from shared.turns import service
from shared.turns.models import TurnOut
from web.context import WebContext
from web.http import dump


class TurnResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, turn_id: str
    ) -> None:
        def get() -> object:
            with self._ctx.db.read() as db:
                return dump(TurnOut, service.get_turn(db, turn_id))

        resp.media = await self._ctx.run(get)


class TurnCancelResource:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, turn_id: str
    ) -> None:
        def cancel() -> object:
            with self._ctx.db.write() as db:
                turn = dump(TurnOut, service.request_cancel(db, turn_id))
            publish_all(self._ctx.publisher, turn["session_id"], take_appended(db))
            return turn

        resp.media = await self._ctx.run(cancel)
        resp.status = falcon.HTTP_202
