"""Read when turns were created, started and finished, as the database recorded it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TurnTimes:
    """Timestamps in seconds since the epoch: ``created_s`` is set by the web process
    before its commit, ``started_s`` and ``finished_s`` by the worker before its commits."""

    turn_id: str
    status: str
    created_s: float
    started_s: float
    finished_s: float

    @property
    def queued_s(self) -> float:
        return self.started_s - self.created_s

    @property
    def running_s(self) -> float:
        return self.finished_s - self.started_s

    @property
    def total_s(self) -> float:
        return self.finished_s - self.created_s


def fetch_turn_times(db: psycopg.Connection[Any], turn_ids: list[str]) -> list[TurnTimes]:
    """Return the times of the given turns that have finished."""
    rows = db.execute(
        "SELECT id, status, extract(epoch FROM created_at), extract(epoch FROM started_at),"
        " extract(epoch FROM finished_at) FROM turns"
        " WHERE id = ANY(%s) AND finished_at IS NOT NULL",
        (turn_ids,),
    ).fetchall()
    return [TurnTimes(row[0], row[1], *(float(value) for value in row[2:])) for row in rows]


def count_unfinished(db: psycopg.Connection[Any], turn_ids: list[str]) -> int:
    row = db.execute(
        "SELECT count(*) FROM turns WHERE id = ANY(%s) AND status <> ALL(%s)",
        (turn_ids, list(FINAL_STATUSES)),
    ).fetchone()
    assert row is not None
    return int(row[0])
