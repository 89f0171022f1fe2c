"""Periodic load recognised from the arrival rates of past rounds (docs/algorithm.md §10).

The series is one arrival rate per decision round. The period is the lag, in rounds, at
which the autocorrelation of the series' first differences peaks (differences, so a ramp
or a level shift is not mistaken for a period; a square burst's differences are a pulse
train at its edges, whose autocorrelation is high at exactly the period). The profile is
the mean rate per phase of that period over every full period but the last; the
**confidence** is the correlation of the last period's rates with that profile, so it
falls to about 0 as soon as a predicted spike fails to come (the pattern broke) and the
learner falls back to reactive sizing.

Pure functions of the series: nothing here knows the workload generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

MIN_LAG = 4          # rounds: shorter "periods" are noise at a 30 s interval


class _Cfg(Protocol):
    @property
    def min_confidence(self) -> float: ...
    @property
    def spike_ratio(self) -> float: ...


@dataclass(frozen=True)
class Forecast:
    period_s: float
    interval_s: float
    t0: float                  # time of the series' first round (phase origin)
    profile: tuple[float, ...]  # mean arrival rate per phase bin (one bin per round)
    confidence: float          # correlation of the last period with the profile, in [0, 1]
    acf: float                 # autocorrelation of the differences at the period

    @property
    def amplitude(self) -> float:
        return max(self.profile)

    @property
    def base(self) -> float:
        return float(np.median(self.profile))

    def _bin(self, t: float) -> int:
        return int(round((t - self.t0) / self.interval_s)) % len(self.profile)

    def rate_at(self, t: float) -> float:
        return self.profile[self._bin(t)]

    def in_spike(self, t: float) -> bool:
        base, amp = self.base, self.amplitude
        return self.rate_at(t) > base + 0.5 * (amp - base) and amp > base

    def peak_within(self, t: float, horizon_s: float) -> float:
        """The largest rate predicted for the rounds in (t, t + horizon_s]."""
        k = max(1, int(math.floor(horizon_s / self.interval_s + 1e-9)))
        return max(self.rate_at(t + j * self.interval_s) for j in range(1, k + 1))

    def next_spike(self, t: float) -> float:
        """Start time of the next predicted spike after t (t + one period if none)."""
        prev = self.in_spike(t)
        for j in range(1, len(self.profile) + 1):
            tj = t + j * self.interval_s
            now = self.in_spike(tj)
            if now and not prev:
                return tj
            prev = now
        return t + self.period_s

    def confident(self, cfg: _Cfg) -> bool:
        return (self.confidence >= cfg.min_confidence
                and self.amplitude >= max(self.base, 1e-9) * cfg.spike_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"period_s": self.period_s, "confidence": round(self.confidence, 3),
                "acf": round(self.acf, 3), "amplitude": round(self.amplitude, 4),
                "base": round(self.base, 4)}


def detect_period(rates: Sequence[float], min_lag: int = MIN_LAG) -> tuple[int, float]:
    """(period in rounds, autocorrelation of the differences there); (0, 0.0) if the
    series is too short (two periods at least) or flat."""
    x = np.asarray(rates, dtype=float)
    d = np.diff(x)
    d = d - d.mean() if len(d) else d
    denom = float((d * d).sum())
    max_lag = len(d) // 2
    if max_lag < min_lag or denom <= 0:
        return 0, 0.0
    acf = np.array([float((d[:-lag] * d[lag:]).sum()) / denom
                    for lag in range(min_lag, max_lag + 1)])
    top = float(acf.max())
    if top <= 0:
        return 0, 0.0
    # the first lag close to the best: multiples of the period score as high
    lag = int(np.argmax(acf >= 0.9 * top)) + min_lag
    return lag, float(acf[lag - min_lag])


def forecast(times: Sequence[float], rates: Sequence[float], cfg: Any,
             min_acf: float = 0.3) -> Forecast | None:
    """The periodic pattern of the series, or None if it has none (yet)."""
    if len(rates) < 2 * MIN_LAG + 2:
        return None
    interval = float(np.median(np.diff(np.asarray(times, dtype=float))))
    if not interval > 0:
        return None
    p, acf = detect_period(rates)
    if p == 0 or acf < min_acf:
        return None
    x = np.asarray(rates, dtype=float)
    n = len(x)
    history = n - p                   # the rounds the profile is built from
    if history < p:
        return None
    idx = np.arange(history)
    profile = np.array([x[idx[idx % p == j]].mean() for j in range(p)])
    last = x[history:]
    expected = profile[np.arange(history, n) % p]
    if last.std() <= 0 or expected.std() <= 0:
        conf = 0.0
    else:
        conf = max(0.0, float(np.corrcoef(last, expected)[0, 1]))
    return Forecast(period_s=p * interval, interval_s=interval, t0=float(times[0]),
                    profile=tuple(float(v) for v in profile), confidence=conf, acf=acf)
