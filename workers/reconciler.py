"""Re-enqueue work the broker lost, from the database.

The database is the source of truth and the broker only carries wake-ups. When Redis
restarts empty, or the in-process broker of ``foxctl up`` dies with its process, the
sessions that still have queued or running turns and no live lease get a new wake-up.
"""

from __future__ import annotations

import structlog

from shared.clock import Clock, system_clock
from shared.db import Database
from shared.queues import Enqueuer
from shared.turns.service import sessions_needing_work
from workers.periodic import PeriodicThread

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(
        self, db: Database, enqueuer: Enqueuer, *, interval_s: float, clock: Clock = system_clock
    ) -> None:
        self._db = db
        self._enqueuer = enqueuer
        self._interval_s = interval_s
        self._clock = clock
        self._periodic = PeriodicThread("reconciler", interval_s, self.reconcile_once)

    def reconcile_once(self) -> int:
        """Wake sessions that have unfinished turns and no live lease; return the count.

        A turn younger than one interval is left alone, because its own wake-up may still
        be on the way. Reconcilers in other processes skip a session woken in the last
        interval; if two wake it anyway, the lease lets one run it.
        """
        with self._db.write() as db:
            session_ids = sessions_needing_work(db, self._clock.now(), quiet_s=self._interval_s)
        for session_id in session_ids:
            self._enqueuer.wake_session(session_id)
        if session_ids:
            log.info("re-enqueued sessions with unfinished turns", sessions=len(session_ids))
        return len(session_ids)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
