"""Peak memory and CPU time of foxctl processes and their children, read from /proc (Linux)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessPeak:
    pid: int
    role: str
    peak_kib: int
    first_cpu_s: float
    cpu_s: float = 0.0

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


class ProcessMonitor:
    """Record peak RSS (VmHWM) and CPU time of process trees every ``interval_s`` seconds.

    VmHWM is the kernel's high-water mark of a process's resident set, so a sample only
    has to catch each process before it exits. A short-lived child may still be missed.
    CPU time counts from the first sample that found the process to the last one.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._roots: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-monitor", daemon=True)
        self.peaks: dict[int, ProcessPeak] = {}

    def watch(self, pid: int, role: str, child_role: str) -> None:
        """Follow ``pid`` as ``role`` and each of its descendants as ``child_role``."""
        with self._lock:
            self._roots[pid] = (role, child_role)
        self.sample()

    def __enter__(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def sample(self) -> None:
        parents = _parent_map()
        with self._lock:
            for root, (role, child_role) in self._roots.items():
                self._record(root, role)
                for child in _descendants(root, parents):
                    self._record(child, child_role)

    def rows(self) -> list[tuple[str, str]]:
        """Return one (label, value) row per process seen, in order of pid."""
        ordered = sorted(self.peaks.values(), key=lambda peak: peak.pid)
        return [
            (f"{p.role} (pid {p.pid})", f"peak RSS {p.peak_mib:.1f} MiB, CPU {p.cpu_s:.1f} s")
            for p in ordered
        ]

    def _loop(self) -> None:
        while not self._done.wait(self._interval_s):
            self.sample()

    def _record(self, pid: int, role: str) -> None:
        peak_kib = read_peak_kib(pid)
        cpu_s = read_cpu_s(pid)
        if peak_kib is None or cpu_s is None:
            return
        known = self.peaks.get(pid)
        if known is None:
            self.peaks[pid] = ProcessPeak(pid, role, peak_kib, first_cpu_s=cpu_s)
            return
        known.peak_kib = max(known.peak_kib, peak_kib)
        known.cpu_s = cpu_s - known.first_cpu_s


def read_peak_kib(pid: int) -> int | None:
    """Return VmHWM of ``pid`` in KiB, or None when the process is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def read_cpu_s(pid: int) -> float | None:
    """Return the user plus system CPU seconds of ``pid``, or None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat that follow the command name."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses, so split after its last ")".
    return stat.rpartition(")")[2].split()


def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    found: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found
