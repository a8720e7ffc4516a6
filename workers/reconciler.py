"""Re-enqueue work the broker lost, from the database.

The database is the source of truth and the broker only carries wake-ups. When Redis
restarts empty, or the in-process broker of ``foxctl up`` dies with its process, the
sessions that still have queued or running turns and no live lease get a new wake-up,
and so do chat deliveries that are still pending and made no progress for a while.
"""

from __future__ import annotations

import structlog

from shared.chat.deliveries import abandon_deliveries, deliveries_needing_work
from shared.clock import Clock, system_clock
from shared.db import Database
from shared.queues import DELIVER_CHAT_REPLY, Enqueuer
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


class DeliveryReconciler:
    """Re-enqueue chat deliveries whose wake-up was lost; runs where chat-delivery is consumed.

    A delivery is re-enqueued when it is pending, has no live claim, and its
    row was not written for ``STALE_INTERVALS`` reconcile intervals. A running attempt
    writes its row at least every third of its claim's lifetime, so it is never
    re-enqueued, and a copy that arrives while it runs finds the claim held and ends.
    """

    #: Reconcile intervals without a write after which a pending delivery counts as lost.
    STALE_INTERVALS = 4
    #: Deliveries re-enqueued per pass, at most; the rest wait for the next pass.
    BATCH = 100
    #: A delivery still pending this long after the message arrived is marked failed: a
    #: reply a day late is worth less than an endless retry, and Discord interaction
    #: tokens expire after 15 minutes anyway.
    GIVE_UP_AFTER_S = 24 * 3600.0

    def __init__(
        self, db: Database, enqueuer: Enqueuer, *, interval_s: float, clock: Clock = system_clock
    ) -> None:
        self._db = db
        self._enqueuer = enqueuer
        self.stale_s = interval_s * self.STALE_INTERVALS
        self._clock = clock
        self._periodic = PeriodicThread("delivery-reconciler", interval_s, self.reconcile_once)

    def reconcile_once(self) -> int:
        """Re-enqueue lost deliveries and give up on expired ones; return the re-enqueued count.

        Picking a delivery marks it, so reconcilers in other processes skip it for
        ``stale_s``.
        """
        now = self._clock.now()
        with self._db.write() as db:
            abandoned = abandon_deliveries(
                db, now, older_than_s=self.GIVE_UP_AFTER_S, limit=self.BATCH
            )
            delivery_ids = deliveries_needing_work(db, now, stale_s=self.stale_s, limit=self.BATCH)
        if abandoned:
            log.warning(
                "chat deliveries still pending a day after their message; marked failed",
                delivery_ids=abandoned,
            )
        for delivery_id in delivery_ids:
            self._enqueuer.send(DELIVER_CHAT_REPLY, delivery_id)
        if delivery_ids:
            log.info("re-enqueued chat deliveries without progress", deliveries=len(delivery_ids))
        return len(delivery_ids)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
