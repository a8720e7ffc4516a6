"""Durations written as ``90s``, ``30m``, ``24h``, ``7d`` or combinations like ``1h30m``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Return seconds; raise ValueError naming the text and the accepted form."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(
            f"invalid duration {text!r}; use a number and a unit (s, m, h, d, w), "
            "such as 90s, 24h or 1h30m"
        )
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)
