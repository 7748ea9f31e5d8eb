"""Small statistics for the results: percentiles of samples, a robust slope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def percentile(samples: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q)) if len(samples) else None


def summary(samples: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, mean, min, p50, p90, p99 and max of ``samples`` times ``scale`` (None when empty)."""
    if not samples:
        return {"n": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None, "max": None}
    values = np.asarray(samples, dtype=np.float64) * scale
    return {
        "n": len(values),
        "mean": round(float(values.mean()), digits),
        "min": round(float(values.min()), digits),
        "p50": round(float(np.percentile(values, 50)), digits),
        "p90": round(float(np.percentile(values, 90)), digits),
        "p99": round(float(np.percentile(values, 99)), digits),
        "max": round(float(values.max()), digits),
    }


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Theil-Sen slope of ys over xs: the median of the slopes between every two points.

    Robust where least squares is not: RSS drops in one step when the allocator hands memory
    back, and one such step would make a least-squares fit read a flat series as shrinking (or a
    leaking one as flat). None with fewer than two distinct xs.
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    if not keep.any():
        return None
    return float(np.median((y[j] - y[i])[keep] / dx[keep]))


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)
