"""Stamp live events with the time they pass through Redis, from a process of their own.

foxctl's live events carry no publish time. The stamper subscribes to the sessions'
Redis channels, as the web process does, and records the wall-clock time at which each
event arrives. It runs in its own process so that no other thread of the benchmark
holds the GIL while a message waits to be stamped.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from bench.ws_clients import EventKey, event_key
from shared.events.redis_live import channel_prefix

TURN_END_TYPES = ("turn.succeeded", "turn.failed", "turn.cancelled")
#: How long the stamper waits for a message before it looks for a command from the parent.
COMMAND_POLL_S = 0.01


@dataclass(frozen=True)
class Stamp:
    at: float
    session_id: str
    event: dict[str, Any]

    @property
    def key(self) -> EventKey:
        return event_key(self.event)


class Stamper:
    """The parent's handle on the stamping process."""

    def __init__(self, redis_url: str, sessions: list[str]) -> None:
        self._prefix = channel_prefix(redis_url)
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=_run_stamper, args=(redis_url, sessions, child_end), daemon=True
        )
        self._child_end = child_end

    def __enter__(self) -> Stamper:
        self._process.start()
        self._child_end.close()
        if not self._pipe.poll(30):
            raise RuntimeError("the stamper process did not subscribe to Redis within 30 s")
        self._pipe.recv()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pipe.send(("exit",))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()

    def mark(self) -> int:
        """Return the number of events stamped so far, to pass to ``since`` later."""
        self._pipe.send(("count",))
        count: int = self._pipe.recv()
        return count

    def since(self, mark: int) -> list[Stamp]:
        self._pipe.send(("since", mark))
        raw: list[tuple[float, bytes, bytes]] = self._pipe.recv()
        return [
            Stamp(at, channel.decode()[len(self._prefix) :], json.loads(data))
            for at, channel, data in raw
        ]

    def wait_for_turn_ends(self, mark: int, turn_ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = {
                stamp.event.get("turn_id")
                for stamp in self.since(mark)
                if stamp.event.get("type") in TURN_END_TYPES
            }
            if turn_ids <= ended:
                return
            time.sleep(0.05)
        raise RuntimeError(f"turns {sorted(turn_ids)} did not end within {timeout_s} s")


def _run_stamper(redis_url: str, sessions: list[str], pipe: Connection) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    # One channel per session: only the benchmark's own sessions are stamped.
    channels = [channel_prefix(redis_url) + session_id for session_id in sessions]
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.get_message(timeout=5)
        if message is None:
            raise RuntimeError("Redis did not confirm the stamper's subscriptions")
        confirmed += message["type"] == "subscribe"
    pipe.send(("ready",))

    stamped: list[tuple[float, bytes, bytes]] = []
    while True:
        message = pubsub.get_message(timeout=COMMAND_POLL_S)
        if message is not None and message["type"] == "message":
            stamped.append((time.time(), message["channel"], message["data"]))
            continue
        if not pipe.poll():
            continue
        command = pipe.recv()
        if command[0] == "count":
            pipe.send(len(stamped))
        elif command[0] == "since":
            pipe.send(stamped[command[1] :])
        else:
            break
    pubsub.close()
    client.close()
