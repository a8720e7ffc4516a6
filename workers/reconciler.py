"""Re-enqueue work the broker lost, from the database.

The database is the source of truth and the broker only carries wake-ups. When Redis
restarts empty, or the in-process broker of ``foxctl up`` dies with its process, the
sessions that still have queued or running turns and no live lease get a new wake-up.
"""

from __future__ import annotations

import threading

import structlog

from shared.clock import Clock, system_clock
from shared.db import Database
from shared.queues import Enqueuer
from shared.turns.service import sessions_needing_work

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(
        self, db: Database, enqueuer: Enqueuer, *, interval_s: float, clock: Clock = system_clock
    ) -> None:
        self._db = db
        self._enqueuer = enqueuer
        self._interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.reconcile_once()
            except Exception:
                # Keep the loop alive through a database or broker outage.
                log.exception("reconcile pass failed")
