"""Follow a session's events: persisted ones after a sequence number, then live ones.

The order of steps is what makes a resume exact. The viewer subscribes to the hub
first, then reads persisted events from the database, then drains the subscription.
An event committed while the database was being read is then either in the read or in
the subscription, and the sequence numbers tell which ones were already sent:

- a persisted event with ``seq`` at or below the last one sent is a duplicate, skipped;
- a persisted event further ahead than the next sequence means some were not delivered
  live (a lost publication, events published out of commit order by two processes),
  so the missing ones are read from the database first;
- a live-only delta is sent when its ``after_seq`` equals the last sequence sent. An
  older one belongs before events already sent, so it is dropped. A newer one first
  pulls the missing persisted events from the database.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from shared.events.hub import Subscription
from shared.events.live import LiveEvent
from shared.events.models import EventType
from shared.events.service import event_json, list_events
from shared.sessions.service import get_session
from web.context import WebContext

REPLAY_PAGE = 500


async def current_seq(ctx: WebContext, session_id: str) -> int:
    """Return the session's last event sequence; raises SessionNotFound."""

    def read() -> int:
        with ctx.db.read() as db:
            return get_session(db, session_id).event_count

    return await ctx.run(read)


async def follow_session(
    ctx: WebContext, subscription: Subscription, after: int
) -> AsyncIterator[LiveEvent]:
    """Yield the session's events after sequence ``after``, then live ones, forever.

    ``subscription`` must exist before this starts. Ends by raising what
    ``Subscription.get`` raises (overflow, hub stopped).
    """
    session_id = subscription.session_id
    last = after
    async for event in _read_after(ctx, session_id, last):
        last = event["seq"]
        yield event

    while True:
        event = await subscription.get()
        if event.get("type") == EventType.turn_delta.value:
            position = int(event.get("after_seq", -1))
        else:
            position = int(event.get("seq", -1)) - 1
        if position < last:
            continue
        if position > last:
            async for missed in _read_after(ctx, session_id, last):
                last = missed["seq"]
                yield missed
            if event.get("type") != EventType.turn_delta.value or position != last:
                continue
        if "seq" in event:
            last = event["seq"]
        yield event


async def _read_after(ctx: WebContext, session_id: str, after: int) -> AsyncIterator[LiveEvent]:
    while True:
        page = await ctx.run(functools.partial(_read_page, ctx, session_id, after))
        for event in page:
            yield event
        if len(page) < REPLAY_PAGE:
            return
        after = page[-1]["seq"]


def _read_page(ctx: WebContext, session_id: str, after: int) -> list[dict[str, Any]]:
    with ctx.db.read() as db:
        rows = list_events(db, session_id=session_id, after_seq=after, limit=REPLAY_PAGE)
        return [event_json(row) for row in rows]
