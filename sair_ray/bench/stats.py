"""Summaries over seeds shared by the benchmark scripts (benchmarks/bench_live.py,
benchmarks/bench_learning_curve.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mean_ci(x: Iterable[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t; NaN for n < 2)."""
    v = np.array([y for y in x if math.isfinite(y)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    from scipy import stats  # type: ignore[import-untyped]  # the benchmarks' dependency, not the core's

    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), h
