"""Heartbeat files that exec probes (``foxctl health``) read for processes with no HTTP port.

A worker process writes ``<run_dir>/<kind>-<pid>.heartbeat`` every ``interval_s``
seconds with its state. ``foxctl health`` in the same pod reads the newest one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

INTERVAL_S = 5.0
#: A heartbeat older than this means the process is stuck or gone.
STALE_AFTER_S = 3 * INTERVAL_S


class HeartbeatWriter:
    def __init__(self, run_dir: Path, kind: str, *, interval_s: float = INTERVAL_S) -> None:
        self.path = run_dir / f"{kind}-{os.getpid()}.heartbeat"
        self.stopping = False
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self.path.unlink(missing_ok=True)

    def write(self) -> None:
        state = {"pid": os.getpid(), "at": time.time(), "stopping": self.stopping}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.path)

    def _loop(self) -> None:
        while not self._done.wait(self._interval_s):
            self.write()


def read_heartbeats(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Return the states of live-looking heartbeats, newest first."""
    states = []
    for path in run_dir.glob(f"{kind}-*.heartbeat"):
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(states, key=lambda s: s.get("at", 0), reverse=True)
