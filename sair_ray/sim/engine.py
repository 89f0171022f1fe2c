"""Discrete-event simulator of a chain of multi-server FIFO stages, in virtual time.

Each stage is a FIFO queue (bounded by `StageSpec.queue_max`; an arrival to a full queue is
dropped and counts as a failed request) served by replicas. Replicas have a life cycle:

    PENDING (no room in the cluster) -> STARTING (cold start) -> IDLE <-> BUSY
    BUSY/IDLE -> RESTARTING (resource change, one replica at a time; OOM crash) -> IDLE
    scale-down removes pending, starting, restarting, idle replicas first; a busy one
    finishes its request, then leaves.

Service times come from `StageModel` (see sim/model.py). Arrivals are generated in fixed
blocks of virtual time from the workload with their own random stream, and each request
draws its reference service time at every stage on arrival, so two simulations with the
same seed see exactly the same requests whatever the policy does (common random numbers).

The simulation is driven from outside: `run_until(t)` processes every event up to t,
`apply(targets, t)` changes the allocation at t, `window(start, end)` summarises metrics.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from sair_ray.config import CostConfig
from sair_ray.cost import CostModel
from sair_ray.sim.metrics import (
    Columns,
    LatencyHistogram,
    SimTotals,
    StageMetrics,
    StepSeries,
    WindowMetrics,
    percentiles_ms,
)
from sair_ray.sim.model import StageModel
from sair_ray.types import (
    Allocation,
    ClusterResources,
    StageAllocation,
    StageKind,
    StageSpec,
)

if TYPE_CHECKING:  # a profile holds the simulator's stage models: no import at run time
    from sair_ray.profiles import Profile
    from sair_ray.workloads import Workload

log = logging.getLogger(__name__)

PENDING, STARTING, RESTARTING, IDLE, BUSY = range(5)
_SERVING = (IDLE, BUSY)
_COMPLETE, _READY = 0, 1
# Scale-down victims, cheapest to lose first (Ray Serve and Kubernetes both prefer pods
# that are not running yet).
_RETIRE_RANK = {PENDING: 0, STARTING: 1, RESTARTING: 2, IDLE: 3, BUSY: 4}
_heappush, _heappop = heapq.heappush, heapq.heappop  # module-level: hot-path lookups
CRASH_BACKOFF_S = (10.0, 300.0)  # Kubernetes CrashLoopBackOff: 10 s doubling, capped at 5 min

Request = tuple[int, float, list[float]]  # (id, arrival time, reference time per stage)


class _Replica:
    __slots__ = ("id", "cpu_m", "mem_mb", "state", "version", "job", "leaving",
                 "restart_next", "factor", "share", "oom", "crashes")

    def __init__(self, rid: int, cpu_m: int, mem_mb: int) -> None:
        self.id = rid
        self.cpu_m, self.mem_mb = cpu_m, mem_mb
        self.state = PENDING
        self.version = 0          # bumped to invalidate scheduled events
        self.job: tuple[list[tuple[Request, float]], float, float] | None = None
        self.leaving = False      # retiring: finish the current job, then go
        self.restart_next = False  # rolling restart: restart after the current job
        self.factor = 1.0
        self.share = 1.0          # utilisation of this replica while busy (docs/algorithm.md §2)
        self.oom = False
        self.crashes = 0


class _Stage:
    __slots__ = ("alloc_hist", "alloc_t", "batch_max", "batch_overhead_s", "config",
                 "declared", "drop_log", "error_log", "idle", "idx", "job_log", "kind",
                 "log_job", "log_req", "model", "next", "queue", "queue_max", "rate",
                 "replicas", "req_log", "rolling", "serving", "serving_series", "spec")

    def __init__(self, idx: int, spec: StageSpec, model: StageModel, alloc: StageAllocation,
                 t0: float) -> None:
        self.idx, self.spec, self.model = idx, spec, model
        self.kind = spec.kind
        self.declared = alloc
        self.alloc_t: list[float] = [t0]
        self.alloc_hist: list[StageAllocation] = [alloc]
        self.rate = alloc.rate if spec.is_gpu else 1.0
        self.config = (alloc.cpu_m, alloc.mem_mb)   # the spec replicas should run with
        self.replicas: list[_Replica] = []
        self.idle: list[_Replica] = []
        self.queue: deque[tuple[Request, float]] = deque()
        self.queue_max = spec.queue_max
        self.rolling: _Replica | None = None
        self.serving = 0
        self.serving_series = StepSeries(t0, 0.0)
        self.req_log = Columns(("enq", "start", "end"), key="end")
        self.job_log = Columns(("start", "end", "share"), key="end")
        self.drop_log = array("d")
        self.error_log = array("d")
        self.next: _Stage | None = None
        # model constants read on every request, cached as plain attributes (hot path)
        self.batch_max = model.batch_max
        self.batch_overhead_s = model.batch_overhead_s
        # bound appends for the hot path (compaction deletes in place, so they stay valid)
        self.log_req = self.req_log.appenders
        self.log_job = self.job_log.appenders

    def allocation_at(self, t: float) -> StageAllocation:
        i = bisect.bisect_right(self.alloc_t, t) - 1
        return self.alloc_hist[max(i, 0)]


class Simulation:
    def __init__(self, profile: Profile, workload: Workload, rng: np.random.Generator, *,
                 cost: CostConfig | None = None, allocation: Mapping[str, StageAllocation]
                 | None = None, start: float = 0.0, block_s: float = 10.0,
                 retain_s: float | None = 3600.0, failure_latency_factor: float = 2.0) -> None:
        if not block_s > 0:
            raise ValueError(f"block_s must be > 0 (got {block_s})")
        self.profile = profile
        self.pipeline = profile.pipeline
        self.workload = workload
        self.costs = CostModel(self.pipeline, cost or CostConfig())
        self.block_s = block_s
        self.retain_s = retain_s
        self.failure_latency_factor = failure_latency_factor
        self.now = start
        self.start = start
        streams = rng.spawn(1 + len(self.pipeline.stages))
        self._arr_rng, self._svc_rngs = streams[0], streams[1:]

        init = dict(self.pipeline.initial_allocation())
        init.update(allocation or {})
        self._stages: list[_Stage] = []
        for i, (spec, model) in enumerate(zip(self.pipeline.stages, profile.models,
                                              strict=True)):
            a = self._checked(spec, init[spec.name])
            self._stages.append(_Stage(i, spec, model, a, start))
        for st, nxt in itertools.pairwise(self._stages):
            st.next = nxt
        self._by_name = {st.spec.name: st for st in self._stages}

        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._next_seq = self._seq.__next__
        self._rep_ids = itertools.count()
        self._rid = 0
        self._inflight: dict[int, float] = {}
        self._block_t = start
        self._a_times: list[float] = []
        self._a_refs: list[list[float]] = []
        self._a_pos = 0
        self._arrival_log = Columns(("t",), key="t")
        self._done = Columns(("t", "latency"), key="t")
        self._done_append = self._done.appenders
        self._fail_log = array("d")
        self.n_arrivals = self.n_completed = self.n_drops = self.n_errors = 0
        self.n_within_sla = 0
        self._sla_s = self.pipeline.sla_ms / 1000.0
        self._cost_eff = StepSeries(start, 0.0)
        self._cost_bill = StepSeries(start, 0.0)
        self._last_compact = start
        self._horizon = -math.inf  # records before this time were dropped
        self._lat_hist = LatencyHistogram()  # latencies of dropped records, for totals()

        for st in self._stages:  # initial replicas are warm: no cold start at t = start
            for _ in range(st.declared.replicas):
                self._add_replica(st, start, warm=True)
        self._record_cost(start)

    # -- public driving API -------------------------------------------------------------
    @property
    def allocation(self) -> Allocation:
        """The declared allocation (what was last applied), not what is running yet."""
        return {st.spec.name: st.declared for st in self._stages}

    def run_until(self, t_end: float) -> None:
        """Process every event with time <= t_end; afterwards `now == t_end`."""
        if t_end < self.now - 1e-9:
            raise ValueError(f"cannot run backwards: now={self.now}, asked for {t_end}")
        heap = self._heap
        first = self._stages[0]
        f_idle, f_queue, f_qmax = first.idle, first.queue, first.queue_max
        inf = math.inf
        heappop = _heappop
        complete, ready, arrive = self._complete, self._ready, self._arrive
        log_arrival, inflight = self._arrival_log.appenders[0], self._inflight
        times, refs, pos = self._a_times, self._a_refs, self._a_pos
        n_times = len(times)
        rid = self._rid  # request ids count arrivals
        while True:
            if pos >= n_times:
                if self._block_t <= t_end:
                    self._next_block()
                    times, refs, pos = self._a_times, self._a_refs, 0
                    n_times = len(times)
                    continue
                na = inf
            else:
                na = times[pos]
            ne = heap[0][0] if heap else inf
            if ne <= na:
                if ne > t_end:
                    break
                t, _, kind, st, rep, version = heappop(heap)
                if version != rep.version:
                    continue
                if kind == _COMPLETE:
                    complete(st, rep, t)
                else:
                    ready(st, rep, t)
            else:
                if na > t_end:
                    break
                req = (rid, na, refs[pos])
                pos += 1
                log_arrival(na)
                inflight[rid] = na
                rid += 1
                if f_idle:  # _arrive(first, req, na), its common case inlined
                    rep = f_idle.pop()
                    end = na + (req[2][0] + first.batch_overhead_s) * rep.factor
                    rep.state = BUSY
                    rep.job = ([(req, na)], na, end)
                    _heappush(heap, (end, self._next_seq(), _COMPLETE, first, rep,
                                     rep.version))
                elif len(f_queue) < f_qmax:
                    f_queue.append((req, na))
                else:
                    arrive(first, req, na)  # the drop path
        self.n_arrivals += rid - self._rid
        self._rid = rid
        self._a_pos = pos
        self.now = max(self.now, t_end)
        if self.retain_s is not None and self.now - self._last_compact > self.retain_s / 2:
            self._compact(self.now - self.retain_s)

    def apply(self, target: Mapping[str, StageAllocation], now: float | None = None) -> None:
        """Move stages to their targets at `now` (default: the current virtual time)."""
        t = self.now if now is None else now
        if t > self.now:
            self.run_until(t)
        elif t < self.now - 1e-9:
            raise ValueError(f"cannot apply in the past: now={self.now}, asked for {t}")
        t = self.now
        checked = []
        for name, a in target.items():  # check everything before changing anything
            st = self._by_name.get(name)
            if st is None:
                raise ValueError(f"unknown stage {name!r}; stages: "
                                 f"{', '.join(self.pipeline.stage_names)}")
            checked.append((st, self._checked(st.spec, a)))
        for st, a in checked:
            if a == st.declared:
                continue
            if st.kind is StageKind.GPU and a.rate != st.rate:
                self._set_rate(st, a.rate, t)
            if (a.cpu_m, a.mem_mb) != st.config:
                st.config = (a.cpu_m, a.mem_mb)
            st.declared = a
            st.alloc_t.append(t)
            st.alloc_hist.append(a)
            self._scale(st, a.replicas, t)
            self._roll(st, t)
        self._record_cost(t)

    def free_resources(self) -> ClusterResources:
        """Cluster capacity not held by any stage: the larger of what each stage declares
        and what its replicas (draining ones included) still hold."""
        c = self.pipeline.cluster
        cpus = mem = gpus = 0.0
        for st in self._stages:
            d = st.declared
            g = st.spec.gpus_per_replica if st.spec.is_gpu else 0.0
            held = [r for r in st.replicas if r.state != PENDING]
            cpus += max(d.replicas * d.cpu_m, sum(r.cpu_m for r in held)) / 1000
            mem += max(d.replicas * d.mem_mb, sum(r.mem_mb for r in held))
            gpus += max(d.replicas, len(held)) * g
        return ClusterResources(cpus=max(0.0, c.cpus - cpus), memory_mb=max(0.0, c.memory_mb - mem),
                                gpus=max(0.0, c.gpus - gpus))

    def serving_replicas(self, stage: str) -> int:
        return self._by_name[stage].serving

    def queue_length(self, stage: str) -> int:
        return len(self._by_name[stage].queue)

    def replica_states(self, stage: str) -> dict[str, int]:
        names = ("pending", "starting", "restarting", "idle", "busy")
        out = dict.fromkeys(names, 0)
        for r in self._by_name[stage].replicas:
            out[names[r.state]] += 1
        return out

    def totals(self) -> SimTotals:
        """Since the start. Percentiles are over completed requests plus failures counted
        at `failure_latency_factor` x SLA (requests still in flight are not counted)."""
        failures = np.full(len(self._fail_log), self.failure_latency_factor * self._sla_s)
        p50, p99 = self._lat_hist.quantiles_ms(
            np.concatenate([self._done.view("latency"), failures]), (0.5, 0.99))
        return SimTotals(
            time=self.now - self.start, arrivals=self.n_arrivals, completed=self.n_completed,
            drops=self.n_drops, errors=self.n_errors, within_sla=self.n_within_sla,
            cost_effective_usd=self._cost_eff.integral(self.start, self.now) / 3600,
            cost_billable_usd=self._cost_bill.integral(self.start, self.now) / 3600,
            p50_ms=p50, p99_ms=p99)

    # -- arrivals ---------------------------------------------------------------------------
    def _next_block(self) -> None:
        t0 = self._block_t
        t1 = t0 + self.block_s
        self._block_t = t1
        arr = self.workload.sample(t0, t1, self._arr_rng)
        n = len(arr.times)
        cols = [m.draw_refs(rng, n, arr.attrs)
                for m, rng in zip(self.profile.models, self._svc_rngs, strict=True)]
        self._a_times = arr.times.tolist()
        self._a_refs = np.column_stack(cols).tolist() if n else []
        self._a_pos = 0

    # -- request flow -----------------------------------------------------------------------
    # The functions below run once per request per stage; they are written for speed
    # (locals bound once, the common single-request case inlined) and must keep the exact
    # order of heap pushes, so that results stay identical for a seed.
    def _arrive(self, st: _Stage, req: Request, t: float) -> None:
        # Invariant: a replica is idle only while its stage's queue is empty.
        if st.idle:
            rep = st.idle.pop()
            end = t + (req[2][st.idx] + st.batch_overhead_s) * rep.factor
            rep.state = BUSY
            rep.job = ([(req, t)], t, end)
            _heappush(self._heap, (end, self._next_seq(), _COMPLETE, st, rep, rep.version))
        elif len(st.queue) >= st.queue_max:
            st.drop_log.append(t)
            self.n_drops += 1
            self._fail(req, t)
        else:
            st.queue.append((req, t))

    def _start(self, st: _Stage, rep: _Replica, items: list[tuple[Request, float]],
               t: float) -> None:
        k = st.idx
        if len(items) == 1:
            ref = items[0][0][2][k]
        else:
            ref = sum(it[0][2][k] for it in items)
        end = t + (ref + st.batch_overhead_s) * rep.factor
        rep.state = BUSY
        rep.job = (items, t, end)
        _heappush(self._heap, (end, self._next_seq(), _COMPLETE, st, rep, rep.version))

    def _complete(self, st: _Stage, rep: _Replica, t: float) -> None:
        items, t0, _ = rep.job  # type: ignore[misc]  # a completion event implies a job
        rep.job = None
        j_start, j_end, j_share = st.log_job
        j_start(t0)
        j_end(t)
        j_share(rep.share)
        if rep.oom:
            for req, _enq in items:
                st.error_log.append(t)
                self.n_errors += 1
                self._fail(req, t)
            if rep.leaving:
                self._remove(st, rep, t)
            else:
                rep.crashes += 1
                self._restart(st, rep, t, crash=True)
            return
        r_enq, r_start, r_end = st.log_req
        nxt = st.next
        if nxt is not None:
            # _arrive(nxt, req, t), inlined
            n_idle, n_queue, n_k = nxt.idle, nxt.queue, nxt.idx
            for req, enq in items:
                r_enq(enq)
                r_start(t0)
                r_end(t)
                if n_idle:
                    nrep = n_idle.pop()
                    end = t + (req[2][n_k] + nxt.batch_overhead_s) * nrep.factor
                    nrep.state = BUSY
                    nrep.job = ([(req, t)], t, end)
                    _heappush(self._heap, (end, self._next_seq(), _COMPLETE, nxt, nrep,
                                                nrep.version))
                elif len(n_queue) >= nxt.queue_max:
                    nxt.drop_log.append(t)
                    self.n_drops += 1
                    self._fail(req, t)
                else:
                    n_queue.append((req, t))
        else:
            done_t, done_lat = self._done_append
            inflight = self._inflight
            sla = self._sla_s
            within = 0
            for req, enq in items:
                r_enq(enq)
                r_start(t0)
                r_end(t)
                lat = t - req[1]
                done_t(t)
                done_lat(lat)
                if lat <= sla:
                    within += 1
                del inflight[req[0]]
            self.n_completed += len(items)
            self.n_within_sla += within
        # _dispatch, with its common cases inlined
        if rep.leaving or rep.restart_next:
            self._dispatch(st, rep, t)
            return
        q = st.queue
        if not q:
            rep.state = IDLE
            st.idle.append(rep)
        elif st.batch_max == 1:
            item = q.popleft()
            end = t + (item[0][2][st.idx] + st.batch_overhead_s) * rep.factor
            rep.state = BUSY
            rep.job = ([item], t, end)
            _heappush(self._heap, (end, self._next_seq(), _COMPLETE, st, rep, rep.version))
        else:
            self._start(st, rep, [q.popleft() for _ in range(min(st.batch_max, len(q)))], t)

    def _dispatch(self, st: _Stage, rep: _Replica, t: float) -> None:
        """A replica is free: leave, restart, take the next batch, or idle."""
        if rep.leaving:
            self._remove(st, rep, t)
        elif rep.restart_next:
            self._restart(st, rep, t)
        elif st.queue:
            q = st.queue
            b = st.batch_max
            items = [q.popleft()] if b == 1 else [q.popleft() for _ in range(min(b, len(q)))]
            self._start(st, rep, items, t)
        else:
            rep.state = IDLE
            st.idle.append(rep)

    def _fail(self, req: Request, t: float) -> None:
        self._fail_log.append(t)
        del self._inflight[req[0]]

    # -- replica life cycle -------------------------------------------------------------------
    def _set_serving(self, st: _Stage, rep: _Replica, new_state: int, t: float) -> None:
        was = rep.state in _SERVING
        now = new_state in _SERVING
        rep.state = new_state
        if was != now:
            st.serving += 1 if now else -1
            st.serving_series.set(t, st.serving)

    def _configure(self, st: _Stage, rep: _Replica) -> None:
        rep.cpu_m, rep.mem_mb = st.config
        m = st.model
        rep.oom = m.memory_effect(rep.mem_mb)[1]
        self._refactor(st, rep)

    def _refactor(self, st: _Stage, rep: _Replica) -> None:
        rep.factor = st.model.factor(st.kind, rep.cpu_m, rep.mem_mb, st.rate)
        rep.share = st.model.active_share(st.kind, rep.cpu_m, st.rate)

    def _add_replica(self, st: _Stage, t: float, warm: bool = False) -> None:
        rep = _Replica(next(self._rep_ids), *st.config)
        self._configure(st, rep)
        st.replicas.append(rep)
        if warm:
            self._set_serving(st, rep, IDLE, t)
            st.idle.append(rep)
        elif self._fits(st, rep):
            self._boot(st, rep, t, STARTING, st.model.cold_start_s)
        else:
            log.warning("stage %s: no room in the cluster for another replica; pending",
                        st.spec.name)

    def _boot(self, st: _Stage, rep: _Replica, t: float, state: int, delay: float) -> None:
        self._set_serving(st, rep, state, t)
        rep.version += 1
        _heappush(self._heap, (t + delay, self._next_seq(), _READY, st, rep, rep.version))

    def _ready(self, st: _Stage, rep: _Replica, t: float) -> None:
        self._set_serving(st, rep, IDLE, t)
        if st.rolling is rep:
            st.rolling = None
        self._dispatch(st, rep, t)
        self._roll(st, t)

    def _restart(self, st: _Stage, rep: _Replica, t: float, crash: bool = False) -> None:
        if (rep.cpu_m, rep.mem_mb) != st.config:
            rep.crashes = 0  # a new pod spec resets the crash-loop back-off
        rep.restart_next = False
        self._configure(st, rep)
        delay = st.model.cold_start_s
        if crash:
            lo, hi = CRASH_BACKOFF_S
            delay += min(hi, lo * 2 ** (rep.crashes - 1))
        self._boot(st, rep, t, RESTARTING, delay)

    def _roll(self, st: _Stage, t: float) -> None:
        """Rolling restart: replace replicas with a stale spec one at a time."""
        if st.rolling is not None:
            return
        candidates = []
        for rep in st.replicas:
            if rep.leaving or (rep.cpu_m, rep.mem_mb) == st.config:
                continue
            if rep.state in (PENDING, STARTING, RESTARTING):
                self._configure(st, rep)  # not running yet: it comes up with the new spec
            else:
                candidates.append(rep)
        if not candidates:
            return
        idle = [r for r in candidates if r.state == IDLE]
        rep = idle[0] if idle else candidates[0]
        st.rolling = rep
        if rep.state == IDLE:
            st.idle.remove(rep)
            self._restart(st, rep, t)
        else:
            rep.restart_next = True

    def _scale(self, st: _Stage, n: int, t: float) -> None:
        active = [r for r in st.replicas if not r.leaving]
        if n > len(active):
            for _ in range(n - len(active)):
                self._add_replica(st, t)
        elif n < len(active):
            order = sorted(active, key=lambda r: (
                _RETIRE_RANK[r.state], (r.cpu_m, r.mem_mb) == st.config, -r.id))
            for rep in order[:len(active) - n]:
                self._retire(st, rep, t)
            self._place_pending(t)

    def _retire(self, st: _Stage, rep: _Replica, t: float) -> None:
        if st.rolling is rep:
            st.rolling = None
        if rep.state == BUSY:
            rep.leaving = True
            return
        if rep.state == IDLE:
            st.idle.remove(rep)
        self._remove(st, rep, t)

    def _remove(self, st: _Stage, rep: _Replica, t: float) -> None:
        self._set_serving(st, rep, PENDING, t)
        rep.version += 1
        st.replicas.remove(rep)
        if rep.leaving:
            self._place_pending(t)

    def _fits(self, st: _Stage, rep: _Replica) -> bool:
        c = self.pipeline.cluster
        cpus = mem = gpus = 0.0
        for s in self._stages:
            g = s.spec.gpus_per_replica if s.spec.is_gpu else 0.0
            for r in s.replicas:
                if r.state != PENDING and r is not rep:
                    cpus += r.cpu_m / 1000
                    mem += r.mem_mb
                    gpus += g
        g = st.spec.gpus_per_replica if st.spec.is_gpu else 0.0
        eps = 1e-9
        return (cpus + rep.cpu_m / 1000 <= c.cpus + eps and mem + rep.mem_mb <= c.memory_mb + eps
                and gpus + g <= c.gpus + eps)

    def _place_pending(self, t: float) -> None:
        for st in self._stages:
            for rep in st.replicas:
                if rep.state == PENDING and not rep.leaving and self._fits(st, rep):
                    self._boot(st, rep, t, STARTING, st.model.cold_start_s)

    def _set_rate(self, st: _Stage, rate: float, t: float) -> None:
        """The token bucket picks a new rate at its next 10 ms window: in-flight work's
        remaining time stretches or shrinks with it."""
        st.rate = rate
        for rep in st.replicas:
            old = rep.factor
            self._refactor(st, rep)
            if rep.state == BUSY and rep.job is not None and rep.factor != old:
                items, t0, end = rep.job
                new_end = t + (end - t) * rep.factor / old
                rep.version += 1
                rep.job = (items, t0, new_end)
                _heappush(self._heap, (new_end, self._next_seq(), _COMPLETE, st, rep,
                                            rep.version))

    # -- cost -----------------------------------------------------------------------------------
    def _record_cost(self, t: float) -> None:
        alloc = self.allocation
        self._cost_eff.set(t, self.costs.rate(alloc, effective=True))
        self._cost_bill.set(t, self.costs.rate(alloc, effective=False))

    def cost_rate(self, *, effective: bool = True, at: float | None = None) -> float:
        series = self._cost_eff if effective else self._cost_bill
        return series.at(self.now if at is None else at)

    # -- observation ----------------------------------------------------------------------------
    def window(self, start: float, end: float) -> WindowMetrics:
        """Metrics over [start, end); runs the simulation up to `end` first if needed.

        Windows must lie within the last `retain_s` seconds (older records are dropped).
        End-to-end percentiles are over the requests that finished in the window, with
        failures (drops, OOM errors) counted at `failure_latency_factor` x SLA (or the worst
        latency seen, if larger), and, when `end` is the present, requests still in flight
        that are already older than the SLA counted at their age (a stalled stage must not
        look fast because nothing completes).
        """
        if end > self.now:
            self.run_until(end)
        width = end - start
        if not width > 0:
            raise ValueError(f"empty window [{start}, {end})")
        if start < self._horizon - 1e-9:
            raise ValueError(f"window [{start}, {end}) starts before {self._horizon}, the "
                             f"oldest retained record (retain_s={self.retain_s})")
        n_arr = self._arrival_log.count(start, end)
        sl = self._done.range(start, end)
        lat = self._done.view("latency")[sl]
        n_fail = _count(self._fail_log, start, end)
        present = end >= self.now - 1e-9
        ages = np.empty(0)
        if present and self._inflight:
            a = end - np.fromiter(self._inflight.values(), dtype=float, count=len(self._inflight))
            ages = a[a > self._sla_s]
        parts = [lat, ages]
        if n_fail:
            worst = max([self.failure_latency_factor * self._sla_s,
                         *(float(x.max()) for x in (lat, ages) if len(x))])
            parts.append(np.full(n_fail, worst))
        all_lat = np.concatenate(parts)
        p50, p99 = percentiles_ms(all_lat)
        stages = tuple(self._stage_window(st, start, end, present) for st in self._stages)
        return WindowMetrics(
            start=start, end=end, arrivals=n_arr, arrival_rate=n_arr / width,
            completed=len(lat), throughput_rps=len(lat) / width, p50_ms=p50, p99_ms=p99,
            mean_ms=float(all_lat.mean() * 1e3) if len(all_lat) else 0.0,
            drops=sum(_count(st.drop_log, start, end) for st in self._stages),
            errors=sum(_count(st.error_log, start, end) for st in self._stages),
            in_flight=len(self._inflight) if present else -1,
            sla_violations=int(np.sum(all_lat > self._sla_s)),
            cost_rate_effective=self._cost_eff.at(end),
            cost_rate_billable=self._cost_bill.at(end),
            cost_effective_usd=self._cost_eff.integral(start, end) / 3600,
            cost_billable_usd=self._cost_bill.integral(start, end) / 3600,
            stages=stages)

    def _stage_window(self, st: _Stage, start: float, end: float,
                      present: bool) -> StageMetrics:
        width = end - start
        rl = st.req_log
        sl = rl.range(start, end)
        r_enq, r_start, r_end = rl.view("enq"), rl.view("start"), rl.view("end")
        proc = r_end[sl] - r_start[sl]
        wait = r_start[sl] - r_enq[sl]
        p50, p99 = percentiles_ms(proc)
        w50, w99 = percentiles_ms(wait)

        # utilisation: busy time (weighted by the replica's active share) / serving time
        jl = st.job_log
        j_start, j_end, j_share = jl.view("start"), jl.view("end"), jl.view("share")
        i0 = jl.range(start, math.inf).start
        busy = float(np.sum(np.clip(np.minimum(j_end[i0:], end) - np.maximum(j_start[i0:], start),
                                    0.0, None) * j_share[i0:]))
        for rep in st.replicas:
            if rep.job is not None and rep.job[1] < end:
                busy += (min(rep.job[2], end) - max(rep.job[1], start)) * rep.share
        serving_s = st.serving_series.integral(start, end)
        util = busy / serving_s if serving_s > 0 else 0.0

        if present:
            queue = len(st.queue)
        else:  # requests that had arrived at the stage by `end` but not started yet
            later = rl.range(end, math.inf)
            queue = int(np.sum((r_enq[later] <= end) & (r_start[later] > end)))
            queue += sum(1 for _, enq in st.queue if enq <= end)
            for rep in st.replicas:
                if rep.job is not None and rep.job[1] > end:
                    queue += sum(1 for _, enq in rep.job[0] if enq <= end)

        return StageMetrics(
            name=st.spec.name, kind=st.kind, allocation=st.allocation_at(end),
            serving_replicas=serving_s / width, queue=queue, util=util, p50_ms=p50,
            p99_ms=p99, queue_delay_ms=float(wait.mean() * 1e3) if len(wait) else 0.0,
            queue_delay_p50_ms=w50, queue_delay_p99_ms=w99,
            throughput_rps=len(proc) / width, completed=len(proc),
            drops=_count(st.drop_log, start, end), errors=_count(st.error_log, start, end))

    # -- housekeeping -----------------------------------------------------------------------------
    def _checked(self, spec: StageSpec, a: StageAllocation) -> StageAllocation:
        where = f"stage {spec.name!r}"
        if not isinstance(a, StageAllocation):
            raise TypeError(f"{where}: expected a StageAllocation, got {type(a).__name__}")
        if not (isinstance(a.replicas, int | np.integer) and a.replicas >= 0):
            raise ValueError(f"{where}: replicas must be an integer >= 0 (got {a.replicas})")
        if not a.cpu_m > 0 or not a.mem_mb > 0:
            raise ValueError(f"{where}: cpu_m and mem_mb must be > 0 (got {a.cpu_m}, "
                             f"{a.mem_mb})")
        if spec.is_gpu:
            if not (0 < a.rate <= 1):
                raise ValueError(f"{where}: GPU rate must be in (0, 1] (got {a.rate})")
            return a
        return a if a.rate == 1.0 else replace(a, rate=1.0)

    def _compact(self, before: float) -> None:
        self._last_compact = self.now
        self._horizon = max(self._horizon, before)  # a fork may start past `before`
        self._arrival_log.compact(before)
        n_fail = bisect.bisect_left(self._fail_log, before)
        self._lat_hist.add(np.full(n_fail, self.failure_latency_factor * self._sla_s))
        _drop_before(self._fail_log, before)
        gone = self._done.range(-math.inf, before)
        self._lat_hist.add(self._done.view("latency")[gone].copy())
        self._done.compact(before)
        for st in self._stages:
            st.req_log.compact(before)
            st.job_log.compact(before)
            st.serving_series.compact(before)
            _drop_before(st.drop_log, before)
            _drop_before(st.error_log, before)


def _count(a: array, lo: float, hi: float) -> int:
    return bisect.bisect_left(a, hi) - bisect.bisect_left(a, lo)


def _drop_before(a: array, before: float) -> None:
    cut = bisect.bisect_left(a, before)
    if cut:
        del a[:cut]
