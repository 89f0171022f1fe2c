"""Metric records the simulator keeps, and the per-window summaries it computes from them.

Records are appended in completion order, so every column store is sorted by its end-time
column and a window [start, end) is a binary search away. Columns are `array('d')`
(8 bytes a value) viewed as numpy arrays at query time; new rows first land in plain
lists (the simulator appends several values per request per stage, and `list.append` is
about three times cheaper than `array.append`) and move into the arrays on the next read.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass

import numpy as np

from sair_ray.types import (
    Context,
    StageAllocation,
    StageKind,
    StageObservation,
)


class Columns:
    """A few float columns appended row by row; `key` (one column) is non-decreasing.

    Append through `appenders` (one bound `list.append` per column, in `names` order);
    every read first moves the buffered rows into the arrays.
    """

    def __init__(self, names: tuple[str, ...], key: str) -> None:
        self.names = names
        self.cols = {n: array("d") for n in names}
        self._buf: dict[str, list[float]] = {n: [] for n in names}
        self.key = key
        # bound once; `_flush` clears the lists in place, so these stay valid
        self.appenders = tuple(self._buf[n].append for n in names)

    def _flush(self) -> None:
        if self._buf[self.key]:
            for n in self.names:
                b = self._buf[n]
                self.cols[n].fromlist(b)
                b.clear()

    def __len__(self) -> int:
        return len(self.cols[self.key]) + len(self._buf[self.key])

    def view(self, name: str) -> np.ndarray:
        self._flush()
        return np.frombuffer(self.cols[name], dtype=float) if len(self) else np.empty(0)

    def range(self, lo: float, hi: float) -> slice:
        """Rows with lo <= key < hi."""
        self._flush()
        k = self.cols[self.key]
        return slice(bisect.bisect_left(k, lo), bisect.bisect_left(k, hi))

    def count(self, lo: float, hi: float) -> int:
        """Number of rows with lo <= key < hi."""
        r = self.range(lo, hi)
        return r.stop - r.start

    def compact(self, before: float) -> None:
        """Forget rows whose key is < before (bounds memory on long runs)."""
        self._flush()
        cut = bisect.bisect_left(self.cols[self.key], before)
        if cut:
            for n in self.names:
                del self.cols[n][:cut]


class StepSeries:
    """A right-continuous step function of time (value changes appended in time order)."""

    def __init__(self, t0: float, v0: float) -> None:
        self.t = array("d", [t0])
        self.v = array("d", [v0])

    def set(self, t: float, v: float) -> None:
        if self.v[-1] == v:
            return
        if self.t[-1] == t:
            self.v[-1] = v
        else:
            self.t.append(t)
            self.v.append(v)

    def at(self, t: float) -> float:
        i = bisect.bisect_right(self.t, t) - 1
        return self.v[max(i, 0)]

    def integral(self, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        t = np.frombuffer(self.t, dtype=float)
        v = np.frombuffer(self.v, dtype=float)
        edges = np.clip(np.r_[t[1:], np.inf], a, b)
        starts = np.clip(t, a, b)
        return float(np.sum(v * (edges - starts)))

    def compact(self, before: float) -> None:
        i = bisect.bisect_right(self.t, before) - 1
        if i > 0:
            del self.t[:i]
            del self.v[:i]


class LatencyHistogram:
    """Log-spaced latency buckets (1 % wide, 10 us to ~28 h) for whole-run percentiles of
    records that were compacted away; quantiles are exact to the bucket width."""

    RATIO = 1.01
    LOW_S = 1e-5

    def __init__(self) -> None:
        n = math.ceil(math.log(1e5 / self.LOW_S) / math.log(self.RATIO)) + 1
        self.edges = self.LOW_S * self.RATIO ** np.arange(n + 1)
        self.edges[0] = 0.0
        self.counts = np.zeros(n, dtype=np.int64)

    def add(self, latencies_s: np.ndarray) -> None:
        if len(latencies_s):
            x = np.clip(latencies_s, 0.0, self.edges[-1] * 0.999999)
            self.counts += np.histogram(x, bins=self.edges)[0]

    def quantiles_ms(self, extra_s: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
        """Quantiles of the histogram plus `extra_s` (upper bucket edges, in ms)."""
        counts = self.counts.copy()
        if len(extra_s):
            counts += np.histogram(np.clip(extra_s, 0.0, self.edges[-1] * 0.999999),
                                   bins=self.edges)[0]
        total = counts.sum()
        if total == 0:
            return tuple(0.0 for _ in qs)
        cum = np.cumsum(counts)
        return tuple(float(self.edges[min(int(np.searchsorted(cum, q * total)) + 1,
                                          len(self.edges) - 1)]) * 1e3 for q in qs)


@dataclass(frozen=True)
class StageMetrics:
    """One stage over one window [start, end)."""

    name: str
    kind: StageKind
    allocation: StageAllocation     # declared allocation at `end`
    serving_replicas: float         # time-average of replicas able to serve
    queue: int                      # requests waiting at `end`
    util: float                     # docs/algorithm.md §2 units (GPU: normalised to the rate quota)
    p50_ms: float                   # processing latency of requests finished in the window
    p99_ms: float
    queue_delay_ms: float           # mean wait in the input queue of those requests
    queue_delay_p50_ms: float
    queue_delay_p99_ms: float
    throughput_rps: float
    completed: int
    drops: int
    errors: int


@dataclass(frozen=True)
class WindowMetrics:
    """The whole pipeline over one window [start, end)."""

    start: float
    end: float
    arrivals: int
    arrival_rate: float
    completed: int
    throughput_rps: float
    p50_ms: float                   # end-to-end, see docs/simulator.md for what counts
    p99_ms: float
    mean_ms: float
    drops: int
    errors: int
    in_flight: int
    sla_violations: int             # requests counted in the percentiles that missed the SLA
    cost_rate_effective: float      # $/h at `end`
    cost_rate_billable: float
    cost_effective_usd: float       # $ spent over the window
    cost_billable_usd: float
    stages: tuple[StageMetrics, ...]

    def to_context(self, app: str, sla_ms: float, *, effective: bool = True) -> Context:
        obs = tuple(StageObservation(
            name=s.name, kind=s.kind, replicas=s.allocation.replicas, cpu_m=s.allocation.cpu_m,
            mem_mb=s.allocation.mem_mb, rate=s.allocation.rate, queue=float(s.queue),
            util=s.util, p50_ms=s.p50_ms, p99_ms=s.p99_ms, queue_delay_ms=s.queue_delay_ms,
            throughput_rps=s.throughput_rps, serving=s.serving_replicas) for s in self.stages)
        return Context(app=app, time=self.end, stages=obs, arrival_rate=self.arrival_rate,
                       p50_ms=self.p50_ms, p99_ms=self.p99_ms, sla_ms=sla_ms,
                       errors=self.errors, drops=self.drops,
                       cost_rate=self.cost_rate_effective if effective
                       else self.cost_rate_billable)


@dataclass(frozen=True)
class SimTotals:
    """Everything since the start of the simulation."""

    time: float
    arrivals: int
    completed: int
    drops: int
    errors: int
    within_sla: int
    cost_effective_usd: float
    cost_billable_usd: float
    p50_ms: float = 0.0             # end-to-end over the whole run (failures at k x SLA),
    p99_ms: float = 0.0             # to 1 % (histogram buckets)

    @property
    def usd_per_1000_effective(self) -> float:
        return _per_1000(self.cost_effective_usd, self.completed)

    @property
    def usd_per_1000_billable(self) -> float:
        return _per_1000(self.cost_billable_usd, self.completed)


def _per_1000(usd: float, n: int) -> float:
    return usd / n * 1000 if n > 0 else float("nan")


def percentiles_ms(x: np.ndarray) -> tuple[float, float]:
    """(p50, p99) in ms of durations in seconds; zeros when empty."""
    if len(x) == 0:
        return 0.0, 0.0
    p50, p99 = np.percentile(x, [50, 99])
    return float(p50) * 1e3, float(p99) * 1e3
