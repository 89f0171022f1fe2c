"""In-memory aggregation of replica reports, with bounded memory and window queries.

Pure Python + numpy and clock-free (every time is an argument), so it is unit-tested
without Ray; `sair_ray.observe.client` hosts one instance in a named Ray actor per app.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from sair_ray.backends.metrics import NAN, AppWindow, StageWindow

INGRESS = "_ingress"  # the stage name under which the ingress deployment reports


@dataclass(frozen=True)
class ReplicaReport:
    """What one replica pushes every flush interval.

    `records` rows are (arrival, start, end, ok) wall-clock seconds of the requests that
    finished since the previous report; `arrivals_total` is cumulative since the replica
    started, so arrivals in any window can be counted even while requests are still queued.
    """

    stage: str
    replica: str
    time: float
    interval_s: float
    cpu_s: float
    cores: float
    waiting: int
    ongoing: int
    arrivals_total: int
    records: tuple[tuple[float, float, float, bool], ...] = ()
    gpu_active_s: float | None = None


@dataclass
class _Sample:
    time: float
    interval_s: float
    cpu_s: float
    cores: float
    waiting: int
    ongoing: int
    arrivals_total: int
    gpu_active_s: float | None


@dataclass
class _StageData:
    # Record chunks, one per report: (max end time, array of shape (n, 4)).
    chunks: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    rows: int = 0
    samples: dict[str, deque[_Sample]] = field(default_factory=dict)


class MetricsStore:
    """Holds the reports of one application's replicas.

    Memory is bounded two ways: data older than `retention_s` (relative to the newest
    report) is dropped, and each stage keeps at most `max_records` request records and
    `max_samples` samples per replica, oldest dropped first.

    A push costs O(log replicas), not O(replicas): expiry pops a heap holding each
    replica's oldest sample time (one entry per replica) instead of scanning every
    replica, and touches only the replicas that have something to drop.
    """

    def __init__(self, app: str, *, retention_s: float = 900.0, max_records: int = 200_000,
                 max_samples: int = 1_200, stale_s: float = 3.0) -> None:
        if retention_s <= 0 or max_records <= 0 or max_samples <= 0 or stale_s <= 0:
            raise ValueError("retention_s, max_records, max_samples and stale_s must be > 0")
        self.app = app
        self.retention_s = retention_s
        self.max_records = max_records
        self.max_samples = max_samples
        self.stale_s = stale_s
        self._stages: dict[str, _StageData] = {}
        self._newest = -math.inf
        self.reports = 0
        # (a replica's oldest sample time, entry number, stage, replica, its samples): one
        # entry per replica, so the next one to expire is on top
        self._expiry: list[tuple[float, int, str, str, deque[_Sample]]] = []
        self._seq = itertools.count()

    # ---- ingest -------------------------------------------------------------------------

    def push(self, reports: Iterable[ReplicaReport]) -> None:
        for rep in reports:
            self._push_one(rep)
        self._expire()

    def _push_one(self, rep: ReplicaReport) -> None:
        data = self._stages.setdefault(rep.stage, _StageData())
        if rep.records:
            arr = np.asarray(rep.records, dtype=np.float64).reshape(-1, 4)
            data.chunks.append((float(arr[:, 2].max()), arr))
            data.rows += len(arr)
            while data.rows > self.max_records and len(data.chunks) > 1:
                data.rows -= len(data.chunks.popleft()[1])
        samples = data.samples.get(rep.replica)
        if samples is None:
            samples = data.samples[rep.replica] = deque(maxlen=self.max_samples)
            heapq.heappush(self._expiry, (rep.time, next(self._seq), rep.stage, rep.replica,
                                          samples))
        samples.append(_Sample(rep.time, rep.interval_s, rep.cpu_s, rep.cores, rep.waiting,
                               rep.ongoing, rep.arrivals_total, rep.gpu_active_s))
        self._newest = max(self._newest, rep.time)
        self.reports += 1

    def _expire(self) -> None:
        """Drop what is older than `retention_s` before the newest report: record chunks,
        samples, and replicas with no sample left (their latest is too old)."""
        horizon = self._newest - self.retention_s
        for data in self._stages.values():  # per stage, not per replica
            while data.chunks and data.chunks[0][0] < horizon:
                data.rows -= len(data.chunks.popleft()[1])
        heap = self._expiry
        while heap and heap[0][0] < horizon:
            _, _, stage, rid, samples = heapq.heappop(heap)
            while samples and samples[0].time < horizon:
                samples.popleft()
            if samples:  # its new oldest sample (later than the entry's: maxlen dropped it)
                heapq.heappush(heap, (samples[0].time, next(self._seq), stage, rid, samples))
            else:
                del self._stages[stage].samples[rid]

    @property
    def stage_names(self) -> list[str]:
        return [s for s in self._stages if s != INGRESS]

    def record_count(self) -> int:
        return sum(d.rows for d in self._stages.values())

    # ---- query --------------------------------------------------------------------------

    def window(self, start: float, end: float) -> AppWindow:
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise ValueError(f"window needs finite start < end, got [{start}, {end})")
        stages = {name: self._stage_window(name, start, end) for name in self.stage_names}
        dur = end - start
        ing = self._stages.get(INGRESS)
        if ing is None:
            return AppWindow(self.app, start, end, stages)
        rec = _records_ending_in(ing, start, end)
        ok = rec[rec[:, 3] > 0.5]
        e2e = (ok[:, 2] - ok[:, 0]) * 1e3
        arrivals = _arrivals(ing, start, end)
        waiting, ongoing, _ = _at_end(ing, end, self.stale_s)
        return AppWindow(
            self.app, start, end, stages, arrivals=arrivals, arrival_rate=arrivals / dur,
            completions=len(ok), errors=len(rec) - len(ok), p50_ms=_pct(e2e, 50),
            p95_ms=_pct(e2e, 95), p99_ms=_pct(e2e, 99), in_flight=waiting + ongoing)

    def _stage_window(self, name: str, start: float, end: float) -> StageWindow:
        data = self._stages[name]
        rec = _records_ending_in(data, start, end)
        ok = rec[rec[:, 3] > 0.5]
        proc = (ok[:, 2] - ok[:, 1]) * 1e3
        wait = (ok[:, 1] - ok[:, 0]) * 1e3
        waiting, ongoing, live = _at_end(data, end, self.stale_s)
        cpu = alloc = gpu = gpu_wall = 0.0
        gpu_seen = False
        for samples in data.samples.values():
            for s in samples:
                if start < s.time <= end:
                    cpu += s.cpu_s
                    alloc += s.interval_s * s.cores
                    if s.gpu_active_s is not None:
                        gpu_seen = True
                        gpu += s.gpu_active_s
                        gpu_wall += s.interval_s
        return StageWindow(
            name, replicas=live, arrivals=_arrivals(data, start, end), completions=len(ok),
            errors=len(rec) - len(ok), p50_ms=_pct(proc, 50), p99_ms=_pct(proc, 99),
            queue_delay_ms=float(wait.mean()) if len(wait) else NAN, queue=waiting,
            ongoing=ongoing, util=cpu / alloc if alloc > 0 else NAN,
            throughput_rps=len(ok) / (end - start),
            gpu_util=(gpu / gpu_wall if gpu_wall > 0 else 0.0) if gpu_seen else None)


def _records_ending_in(data: _StageData, start: float, end: float) -> np.ndarray:
    parts = [a for max_end, a in data.chunks if max_end >= start]
    if not parts:
        return np.empty((0, 4))
    rec = np.concatenate(parts)
    return rec[(rec[:, 2] >= start) & (rec[:, 2] < end)]


def _cum_at(samples: deque[_Sample], t: float) -> int:
    """Cumulative arrivals of one replica as of its last sample at or before t."""
    last = 0
    for s in samples:
        if s.time > t:
            break
        last = s.arrivals_total
    return last


def _arrivals(data: _StageData, start: float, end: float) -> int:
    return sum(_cum_at(s, end) - _cum_at(s, start) for s in data.samples.values())


def _at_end(data: _StageData, end: float, stale_s: float) -> tuple[int, int, int]:
    """(waiting, ongoing, replicas) from each replica's latest sample within stale_s of end."""
    waiting = ongoing = live = 0
    for samples in data.samples.values():
        latest = None
        for s in samples:
            if s.time > end:
                break
            latest = s
        if latest is not None and end - latest.time <= stale_s:
            waiting += latest.waiting
            ongoing += latest.ongoing
            live += 1
    return waiting, ongoing, live


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else NAN
