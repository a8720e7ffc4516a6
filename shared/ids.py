"""Identifiers that sort by creation time, so lists and logs read in order."""

from __future__ import annotations

import os
import threading
import time


class IdGenerator:
    """Make ids like ``msg_01j9…``: a millisecond timestamp, then randomness.

    Ids made by one process are strictly increasing; ids from different processes in the
    same millisecond are ordered by their random part only.
    """

    _alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def new(self, prefix: str) -> str:
        with self._lock:
            value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
            value = max(value, self._last + 1)
            self._last = value
        return f"{prefix}_{self._encode(value)}"

    def _encode(self, value: int) -> str:
        chars = []
        for _ in range(26):
            value, index = divmod(value, 32)
            chars.append(self._alphabet[index])
        return "".join(reversed(chars))


ids = IdGenerator()
