"""Instrumentation that runs inside every Serve replica of an instrumented pipeline.

A stage replica accepts up to Serve's `max_ongoing_requests` requests at once but lets
only `concurrency` of them compute at a time (an asyncio semaphore); the rest wait inside
the replica, where their queueing delay can be measured. (If Serve's limit were the
concurrency, excess requests would wait in the caller's router, invisible to the stage.)

    meter = StageMeter("image_classification", "preprocess", concurrency=1)
    async with meter.slot():
        result = await asyncio.to_thread(work, payload)

Every `flush_interval_s` a background task samples the process CPU time (psutil) and
pushes a `ReplicaReport` to the app's aggregator actor. The push never blocks a request;
if the actor is unreachable the reports are kept (at most `max_pending` request records,
oldest dropped and counted in `dropped_records`) and retried at the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sair_ray.observe.store import INGRESS, ReplicaReport

log = logging.getLogger(__name__)

__all__ = ["INGRESS", "Outcome", "StageMeter"]


@dataclass
class Outcome:
    """Handed to the body of `StageMeter.slot()`; set `ok = False` for a handled failure."""

    ok: bool = True


class StageMeter:
    """Per-replica request timing, queue and CPU accounting.

    `concurrency=None` means no slot limit (the ingress: it only awaits other stages).
    `sink` receives each batch of reports; by default it is the app's aggregator actor.
    `clock` is wall-clock seconds (`time.time`), the time base of every query.
    """

    def __init__(self, app: str, stage: str, *, concurrency: int | None = 1,
                 flush_interval_s: float = 1.0, max_pending: int = 50_000,
                 clock: Callable[[], float] = time.time,
                 sink: Callable[[list[ReplicaReport]], Any] | None = None,
                 replica: str | None = None, cores: float | None = None) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency of stage {stage!r} must be >= 1, got {concurrency}")
        self.app = app
        self.stage = stage
        self.concurrency = concurrency
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.clock = clock
        self.replica = replica or _replica_id()
        self.cores = cores if cores is not None else _allocated_cores()
        self._sink = sink
        self._sem = asyncio.Semaphore(concurrency) if concurrency else None
        self._records: list[tuple[float, float, float, bool]] = []
        self._unsent: list[ReplicaReport] = []
        self.waiting = 0
        self.ongoing = 0
        self.arrivals_total = 0
        self.dropped_records = 0
        self._proc: Any = None
        self._last_cpu: float | None = None
        self._last_time: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.gpu_probe: Callable[[], float | None] | None = None  # cumulative GPU active s
        self._last_gpu: float | None = None

    # ---- per request --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Outcome]:
        """Wait for a processing slot, then time the body. An exception (or cancellation)
        in the body, or while waiting, is recorded as an error and re-raised; the body may
        also mark a handled failure with `outcome.ok = False` (e.g. an HTTP 500 answer)."""
        self._ensure_flusher()
        arrival = self.clock()
        self.arrivals_total += 1
        self.waiting += 1
        try:
            if self._sem is not None:
                await self._sem.acquire()
        except BaseException:
            self.waiting -= 1
            now = self.clock()
            self._record(arrival, now, now, False)
            raise
        self.waiting -= 1
        self.ongoing += 1
        start = self.clock()
        outcome = Outcome(ok=False)
        try:
            outcome.ok = True
            yield outcome
        except BaseException:
            outcome.ok = False
            raise
        finally:
            self.ongoing -= 1
            if self._sem is not None:
                self._sem.release()
            self._record(arrival, start, self.clock(), outcome.ok)

    def _record(self, arrival: float, start: float, end: float, ok: bool) -> None:
        self._records.append((arrival, start, end, ok))
        if len(self._records) > self.max_pending:
            drop = len(self._records) - self.max_pending
            del self._records[:drop]
            self.dropped_records += drop

    # ---- reporting ----------------------------------------------------------------------

    def report(self) -> ReplicaReport:
        """Take the records since the last report and a CPU sample (also used by tests)."""
        now = self.clock()
        cpu = self._cpu_seconds()
        interval = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
        used = 0.0 if self._last_cpu is None else max(0.0, cpu - self._last_cpu)
        gpu_active = None
        if self.gpu_probe is not None:
            total = self.gpu_probe()
            if total is not None:
                gpu_active = 0.0 if self._last_gpu is None else max(0.0, total - self._last_gpu)
                self._last_gpu = total
        self._last_time, self._last_cpu = now, cpu
        records, self._records = tuple(self._records), []
        return ReplicaReport(self.stage, self.replica, now, interval, used, self.cores,
                             self.waiting, self.ongoing, self.arrivals_total, records,
                             gpu_active)

    async def flush(self) -> None:
        """Push pending reports; on failure keep them for the next flush (bounded)."""
        self._unsent.append(self.report())
        # Bound what a long outage can hold: keep the newest reports' records.
        while sum(len(r.records) for r in self._unsent) > self.max_pending \
                and len(self._unsent) > 1:
            self.dropped_records += len(self._unsent.pop(0).records)
        batch, self._unsent = self._unsent, []
        try:
            res = (self._sink or self._actor_sink())(batch)
            if asyncio.isfuture(res) or asyncio.iscoroutine(res) or hasattr(res, "__await__"):
                await res
        except Exception as e:  # the actor may be restarting; retry next time
            log.warning("metrics push from %s/%s failed (%s); will retry", self.stage,
                        self.replica, e)
            self._sink = None
            self._unsent = batch + self._unsent

    def _actor_sink(self) -> Callable[[list[ReplicaReport]], Any]:
        from sair_ray.observe.client import ensure_aggregator

        actor = ensure_aggregator(self.app)
        self._sink = actor.push.remote
        return self._sink

    def _ensure_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        # Real-time runner: the one place this package sleeps.
        if self._last_time is None:  # baseline sample, so the first interval is a true delta
            self._last_time, self._last_cpu = self.clock(), self._cpu_seconds()
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    def start(self) -> None:
        """Start reporting now (from an async context) instead of at the first request, so
        an idle replica is still counted and sampled."""
        self._ensure_flusher()

    def _cpu_seconds(self) -> float:
        if self._proc is None:
            import psutil

            self._proc = psutil.Process(os.getpid())
        t = self._proc.cpu_times()
        return float(t.user + t.system)


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (tests, scripts)
        return f"pid{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _allocated_cores() -> float:
    """The replica's Ray CPU allocation; 1 outside Ray or with a zero allocation, since a
    Python replica then still gets (at least) one core's worth of time slices."""
    try:
        import ray

        if ray.is_initialized():
            cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
            if cpus > 0:
                return cpus
    except Exception:
        pass
    return 1.0
