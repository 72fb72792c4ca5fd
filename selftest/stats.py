"""Summary statistics for repeated timings (no numpy: usable on any host)."""

from __future__ import annotations

import math
from typing import Optional, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    frac = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


def coefficient_of_variation(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation over mean; None when it is undefined."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / abs(mean)


def summarize(values: Sequence[float]) -> dict:
    """median, p10, p90, mean, min, max, cv and n of a list of samples."""
    if not values:
        raise ValueError("summarize needs at least one value")
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "median": percentile(vals, 50),
        "p10": percentile(vals, 10),
        "p90": percentile(vals, 90),
        "mean": sum(vals) / len(vals),
        "min": min(vals),
        "max": max(vals),
        "cv": coefficient_of_variation(vals),
    }
