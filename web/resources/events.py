from __future__ import annotations

import falcon.asgi

from shared.events.models import EventOut, EventType
from shared.events.service import list_events
from web.context import WebContext
from web.http import invalid_query, page, page_limit, query_int

_TYPES = {t.value for t in EventType}


class EventsResource:
    """List persisted events; ``after`` is a per-session sequence, ``cursor`` a global id."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = page_limit(req)
        session_id = req.get_param("session_id")
        turn_id = req.get_param("turn_id")
        types = _parse_types(req.get_param("type"))
        after = query_int(req, "after", default=None, low=0, high=2**62)
        if after is not None and session_id is None:
            raise invalid_query(
                "after", str(after), "to be used with session_id (sequences are per session)"
            )
        cursor = query_int(req, "cursor", default=None, low=0, high=2**62)

        def list_page() -> object:
            with self._ctx.db.read() as db:
                rows = list_events(
                    db,
                    session_id=session_id,
                    turn_id=turn_id,
                    types=types,
                    after_seq=after,
                    cursor=cursor,
                    limit=limit,
                )
                return page(EventOut, rows, limit, lambda e: e.id)

        resp.media = await self._ctx.run(list_page)


def _parse_types(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    types = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [t for t in types if t not in _TYPES]
    if unknown:
        raise invalid_query("type", raw, "a comma-separated list of: " + ", ".join(sorted(_TYPES)))
    return types
