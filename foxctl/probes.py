"""Exec probes and the preStop drain, for processes in the same pod."""

from __future__ import annotations

import os
import time

import httpx

from shared.heartbeat import STALE_AFTER_S, read_heartbeats
from shared.settings import Settings
from web.drain import drain_file

PROBE_TIMEOUT_S = 3.0


def probe_local(settings: Settings, *, ready: bool) -> tuple[bool, str]:
    """Probe the web process on PORT, or else the newest worker heartbeat in run_dir."""
    path = "/readyz" if ready else "/healthz"
    try:
        response = httpx.get(f"http://127.0.0.1:{settings.port}{path}", timeout=PROBE_TIMEOUT_S)
    except httpx.ConnectError:
        return _probe_worker(settings, ready=ready)
    except httpx.HTTPError as error:
        return False, f"web {path} failed: {error}"
    return response.status_code == 200, f"web {path}: {response.status_code} {response.text}"


def _probe_worker(settings: Settings, *, ready: bool) -> tuple[bool, str]:
    beats = read_heartbeats(settings.run_dir, "worker")
    if not beats:
        return False, (
            f"no web process on port {settings.port} and no worker heartbeat in {settings.run_dir}"
        )
    newest = beats[0]
    age_s = time.time() - float(newest.get("at", 0))
    if age_s > STALE_AFTER_S:
        return False, f"worker heartbeat is {age_s:.0f} s old (limit {STALE_AFTER_S:.0f} s)"
    if ready and newest.get("stopping"):
        return False, "worker is stopping"
    if ready:
        return _check_backends(settings)
    return True, f"worker alive (pid {newest.get('pid')}, heartbeat {age_s:.1f} s ago)"


def _check_backends(settings: Settings) -> tuple[bool, str]:
    from sqlalchemy import text

    from shared.broker import check_broker, make_broker
    from shared.db import make_engine

    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        check_broker(make_broker(settings))
    except Exception as error:
        return False, f"worker not ready: {error}"
    finally:
        engine.dispose()
    return True, "worker ready"


def drain_local(settings: Settings, *, timeout_s: float, poll_s: float = 0.1) -> int:
    """Mark local web processes draining; wait until none has a request in flight.

    Returns the number of requests still in flight when ``timeout_s`` ran out (0 when
    all finished).
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    drain_file(settings.run_dir).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while True:
        in_flight = _in_flight_since(settings, started)
        if in_flight == 0:
            return 0
        if time.monotonic() > deadline:
            return in_flight if in_flight is not None else -1
        time.sleep(poll_s)


def _in_flight_since(settings: Settings, started: float) -> int | None:
    """Sum the in-flight counts of live web processes that report draining.

    Returns None while some live process has not yet reported draining after ``started``.
    """
    total = 0
    for path in settings.run_dir.glob("inflight-*"):
        pid = int(path.name.removeprefix("inflight-"))
        if not _alive(pid):
            continue
        try:
            fresh = path.stat().st_mtime >= started
            draining, _, count = path.read_text().partition(" ")
        except OSError:
            return None
        if not fresh or draining != "draining":
            return None
        total += int(count or "0")
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
