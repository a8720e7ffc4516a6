"""Run a function every few seconds on a daemon thread until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class PeriodicThread:
    """Call ``function`` every ``interval_s`` seconds; an error is logged, not fatal.

    Errors are expected during a database or broker outage, and the next pass retries.
    """

    def __init__(self, name: str, interval_s: float, function: Callable[[], object]) -> None:
        self._name = name
        self._interval_s = interval_s
        self._function = function
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._function()
            except Exception:
                log.exception("periodic pass failed", task=self._name)
