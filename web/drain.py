"""Draining: report not-ready, refuse new turns, and let in-flight requests finish.

``foxctl drain`` (a preStop hook) creates ``<run_dir>/draining``. Every web worker
process notices the file within ``poll_s`` seconds. Each rewrites
``<run_dir>/inflight-<pid>`` on every poll with its state (serving or draining) and its
count of in-flight requests, so ``foxctl drain`` can wait until every process drains
and reaches zero.

SIGTERM and SIGINT start draining too, before the server's own handler runs. The server
then waits for open connections, and SSE streams, which end when draining begins,
would otherwise hold it until the graceful timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

DRAIN_FILE = "draining"


def drain_file(run_dir: Path) -> Path:
    return run_dir / DRAIN_FILE


def inflight_file(run_dir: Path, pid: int) -> Path:
    return run_dir / f"inflight-{pid}"


class DrainState:
    def __init__(self, run_dir: Path, *, poll_s: float = 0.25) -> None:
        self.run_dir = run_dir
        self.poll_s = poll_s
        self.draining = False
        self.in_flight = 0
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        #: Set when draining begins, so open WebSockets can close without polling.
        self.began = asyncio.Event()
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._handlers: dict[signal.Signals, Any] = {}

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._started_at = time.time()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        self._unchain_signals()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(FileNotFoundError):
            inflight_file(self.run_dir, os.getpid()).unlink()

    def begin(self, reason: str) -> None:
        if not self.draining:
            self.draining = True
            self.began.set()
            log.info("draining started", reason=reason)

    def chain_signals(self) -> None:
        """Begin draining on SIGTERM and SIGINT, then call the handler installed before.

        Call it last in startup: ``stop`` puts the earlier handlers back.
        """
        # Python sets signal handlers only in the main thread; test clients may run
        # the app elsewhere, where the server's own handling is all there is.
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            self._previous_handlers[signum] = previous

            def handler(number: int, frame: FrameType | None, previous: Any = previous) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self.begin, signal.Signals(number).name)
                if callable(previous):
                    previous(number, frame)
                elif previous == signal.SIG_DFL:
                    signal.signal(number, signal.SIG_DFL)
                    os.kill(os.getpid(), number)

            signal.signal(signum, handler)
            self._handlers[signum] = handler

    def _unchain_signals(self) -> None:
        for signum, previous in self._previous_handlers.items():
            # Another handler installed since then stays: it chains to ours, which
            # still calls the one before it.
            if previous is not None and signal.getsignal(signum) is self._handlers[signum]:
                signal.signal(signum, previous)
        self._previous_handlers.clear()
        self._handlers.clear()

    def _drain_requested(self, marker: Path) -> bool:
        # A file older than this process is left from before a container restart (an
        # emptyDir outlives its container), not a request to drain this process.
        try:
            return marker.stat().st_mtime >= self._started_at
        except FileNotFoundError:
            return False

    async def _watch(self) -> None:
        marker = drain_file(self.run_dir)
        report = inflight_file(self.run_dir, os.getpid())
        while True:
            if not self.draining and self._drain_requested(marker):
                self.begin("drain file present")
            # Written on every poll so that `foxctl drain` can tell when each process
            # has seen the drain file and how many requests it still serves.
            state = "draining" if self.draining else "serving"
            report.write_text(f"{state} {self.in_flight}")
            await asyncio.sleep(self.poll_s)
