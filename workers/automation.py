"""Queue the think and tick turns that are due, on a timer.

``foxctl up`` runs this loop in its own process. Several loops may run at once: each due
time is claimed in the database, so every think or tick is queued once.
"""

from __future__ import annotations

import structlog

from shared.clock import Clock, system_clock
from shared.db import Database
from shared.queues import Enqueuer
from shared.turns.automation import due_sessions, fire_wake
from workers.periodic import PeriodicThread

log = structlog.get_logger(__name__)


class AutomationLoop:
    def __init__(
        self,
        db: Database,
        enqueuer: Enqueuer,
        *,
        interval_s: float = 1.0,
        clock: Clock = system_clock,
    ) -> None:
        self._db = db
        self._enqueuer = enqueuer
        self._clock = clock
        self._periodic = PeriodicThread("automation", interval_s, self.run_due)

    def run_due(self) -> int:
        """Queue every due think or tick turn; return how many were queued."""
        with self._db.read() as db:
            due = due_sessions(db, self._clock.now())
        queued = 0
        for session_id, due_at in due:
            with self._db.write() as db:
                turn = fire_wake(db, session_id, due_at)
            if turn is None:
                continue
            self._enqueuer.wake_session(session_id)
            log.info("automatic turn queued", session_id=session_id, trigger=turn.trigger)
            queued += 1
        return queued

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
