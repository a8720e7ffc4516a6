"""Percentiles and table printing for benchmark results."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values``, where ``fraction`` is 0.5 for p50."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def summarize_ms(values_s: Sequence[float]) -> str:
    """Format p50, p99 and max of durations given in seconds as milliseconds."""
    p50 = percentile(values_s, 0.50) * 1000
    p99 = percentile(values_s, 0.99) * 1000
    worst = max(values_s) * 1000 if values_s else math.nan
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms (n={len(values_s)})"


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
