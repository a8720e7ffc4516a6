"""SIGTERM and SIGINT begin draining before the handler that was there runs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from web.drain import DrainState


def test_sigterm_begins_draining_then_calls_previous(tmp_path: Path) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: calls.append(number))

    async def scenario() -> tuple[bool, bool]:
        drain = DrainState(tmp_path)
        drain.start()
        drain.chain_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(drain.began.wait(), 5)
        draining = drain.draining
        await drain.stop()
        return draining, signal.getsignal(signal.SIGTERM) is not None

    try:
        draining, _ = asyncio.run(scenario())
        restored = signal.getsignal(signal.SIGTERM)
        restored(signal.SIGTERM, None)  # type: ignore[operator]
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert draining
    assert calls == [signal.SIGTERM, signal.SIGTERM]


def test_stop_keeps_a_handler_installed_later(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGINT)

    def later(number: int, frame: object) -> None:
        return None

    async def scenario() -> None:
        drain = DrainState(tmp_path)
        drain.start()
        drain.chain_signals()
        signal.signal(signal.SIGINT, later)
        await drain.stop()

    try:
        asyncio.run(scenario())
        installed = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert installed is later
