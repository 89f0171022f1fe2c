"""Counterfactual engine: fork a running `Simulation` and play alternative actions.

`fork(sim)` returns an independent copy of the complete state at `sim.now`: every stage's
queue, the requests in flight and in service (with their remaining service time, which is
their scheduled completion event), every replica in every life-cycle state (pending,
starting, restarting, idle, busy, leaving, rolling), pending cold starts and restarts
(the event heap, stale entries included), the arrivals block being consumed, the random
streams of arrivals and service times, the cost series and the counters. Running the copy
never touches the original, and a copy given the same actions as the original reproduces
it exactly, event for event (tests/sim/test_fork.py). Because arrivals and every stage's
reference service time are drawn from their own streams, per 10 s block, whatever the
allocation does (docs/simulator.md), two forks given different actions see exactly the
same requests: their difference is the action's, not sampling noise (common random
numbers).

Why not `copy.deepcopy`: it runs, but the copy is wrong and slow. The engine binds
`list.append` of its metric buffers once for its hot path; deepcopy treats those bound
builtins as atomic, so the copy keeps appending into the original's logs. And it copies
the whole metric history (an hour of per-request records in the bench), so its cost grows
with the run: 12 ms at t = 600 s on nlp_analysis (0.5 s while the records are still in
their list buffers), against 0.2 ms here at any time (benchmarks/bench_counterfactual.py).
This module copies the state field by field instead, shares what is immutable (the profile,
the workload, request tuples and their reference times, scheduled jobs, frozen
allocations), and by default keeps only the records from the fork time on (`history=False`):
windows of a fork must then start at or after the fork time, and its `totals()` latency
percentiles cover only those records (counts and costs stay whole-run).

`Fork.alternatives(...)` is the usual use: from one fork point, evaluate each alternative
allocation over the same future window(s).

The copy is written against the engine's fields (`Simulation`, `_Stage`, `_Replica`,
`Columns`, `StepSeries`, `LatencyHistogram`); tests/sim/test_fork.py pins those field
sets, so a field added to the engine fails that test until it is copied here too.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import re
from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any

from sair_ray.backends.sim import SimBackend
from sair_ray.sim.engine import Simulation, _Replica, _Stage
from sair_ray.sim.metrics import Columns, LatencyHistogram, StepSeries
from sair_ray.types import StageAllocation

# Fields of the engine's objects this module knows how to copy (tests/sim/test_fork.py
# checks them against the engine's, so a new field is not silently shared between forks).
SIM_FIELDS = frozenset({
    "profile", "pipeline", "workload", "costs", "block_s", "retain_s",
    "failure_latency_factor", "now", "start", "_arr_rng", "_svc_rngs", "_stages", "_by_name",
    "_heap", "_seq", "_next_seq", "_rep_ids", "_rid", "_inflight", "_block_t", "_a_times",
    "_a_refs", "_a_pos", "_arrival_log", "_done", "_done_append", "_fail_log", "n_arrivals",
    "n_completed", "n_drops", "n_errors", "n_within_sla", "_sla_s", "_cost_eff", "_cost_bill",
    "_last_compact", "_horizon", "_lat_hist"})
STAGE_FIELDS = frozenset(_Stage.__slots__)
REPLICA_FIELDS = frozenset(_Replica.__slots__)

_COUNT = re.compile(r"count\((-?\d+)\)")


def _count_at(c: itertools.count[int]) -> itertools.count[int]:
    """A counter that continues from where `c` is, without consuming `c` (an
    `itertools.count` shows its next value only in its repr)."""
    m = _COUNT.fullmatch(repr(c))
    if m is None:  # pragma: no cover - a count started from an int always matches
        raise TypeError(f"cannot read the position of {c!r}")
    return itertools.count(int(m.group(1)))


def _columns(c: Columns, keep_from: float | None) -> Columns:
    c._flush()  # moves buffered rows into the arrays: the original reads the same after
    new = Columns.__new__(Columns)
    new.names, new.key = c.names, c.key
    cut = 0 if keep_from is None else bisect.bisect_left(c.cols[c.key], keep_from)
    new.cols = {n: c.cols[n][cut:] for n in c.names}  # array slices are copies
    new._buf = {n: [] for n in c.names}
    new.appenders = tuple(new._buf[n].append for n in c.names)
    return new


def _times(a: array, keep_from: float | None) -> array:
    cut = 0 if keep_from is None else bisect.bisect_left(a, keep_from)
    return a[cut:]


def _series(s: StepSeries) -> StepSeries:
    new = StepSeries.__new__(StepSeries)
    new.t, new.v = s.t[:], s.v[:]
    return new


def _histogram(h: LatencyHistogram) -> LatencyHistogram:
    new = LatencyHistogram.__new__(LatencyHistogram)
    new.edges = h.edges          # never written after construction
    new.counts = h.counts.copy()
    return new


def _replica(r: _Replica) -> _Replica:
    new = _Replica.__new__(_Replica)
    for f in _Replica.__slots__:
        # every field is a number, a flag or the current job, a tuple (items, start, end)
        # that the engine replaces and never mutates: a shallow copy is a full one
        setattr(new, f, getattr(r, f))
    return new


def fork(sim: Simulation, *, history: bool = False) -> Simulation:
    """An independent copy of `sim` at `sim.now` (see the module doc).

    history=False (the default, and the fast one) keeps only metric records from
    `sim.now` on: windows of the copy must start at or after the fork time. history=True
    copies every retained record, so the copy's windows and totals equal the original's
    over any range."""
    keep_from = None if history else sim.now
    new = Simulation.__new__(Simulation)
    new.__dict__.update(sim.__dict__)  # scalars and shared immutables; the rest below

    reps: dict[int, _Replica] = {}

    def rep(r: _Replica) -> _Replica:
        c = reps.get(id(r))
        if c is None:
            c = reps[id(r)] = _replica(r)
        return c

    stages: list[_Stage] = []
    smap: dict[int, _Stage] = {}
    for st in sim._stages:
        ns = _Stage.__new__(_Stage)
        for f in _Stage.__slots__:
            setattr(ns, f, getattr(st, f))
        ns.alloc_t = list(st.alloc_t)
        ns.alloc_hist = list(st.alloc_hist)
        ns.replicas = [rep(r) for r in st.replicas]
        ns.idle = [rep(r) for r in st.idle]
        ns.queue = deque(st.queue)     # items are (request, enqueue time) tuples: shared
        ns.rolling = None if st.rolling is None else rep(st.rolling)
        ns.serving_series = _series(st.serving_series)
        ns.req_log = _columns(st.req_log, keep_from)
        ns.job_log = _columns(st.job_log, keep_from)
        ns.log_req = ns.req_log.appenders
        ns.log_job = ns.job_log.appenders
        ns.drop_log = _times(st.drop_log, keep_from)
        ns.error_log = _times(st.error_log, keep_from)
        stages.append(ns)
        smap[id(st)] = ns
    for ns in stages:
        ns.next = None if ns.next is None else smap[id(ns.next)]
    new._stages = stages
    new._by_name = {ns.spec.name: ns for ns in stages}
    # the heap keeps its order (a list copy of a heap is a heap); stale events (replicas
    # since removed or rescheduled) are copied too, so that sequence numbers stay aligned
    new._heap = [(e[0], e[1], e[2], smap[id(e[3])], rep(e[4]), e[5]) for e in sim._heap]
    new._seq = _count_at(sim._seq)
    new._next_seq = new._seq.__next__
    new._rep_ids = _count_at(sim._rep_ids)
    new._arr_rng = copy.deepcopy(sim._arr_rng)
    new._svc_rngs = [copy.deepcopy(g) for g in sim._svc_rngs]
    new._inflight = dict(sim._inflight)
    # the current arrivals block: replaced, never mutated, by the engine
    new._a_times, new._a_refs = sim._a_times, sim._a_refs
    new._arrival_log = _columns(sim._arrival_log, keep_from)
    new._done = _columns(sim._done, keep_from)
    new._done_append = new._done.appenders
    new._fail_log = _times(sim._fail_log, keep_from)
    new._cost_eff = _series(sim._cost_eff)
    new._cost_bill = _series(sim._cost_bill)
    new._lat_hist = _histogram(sim._lat_hist)
    if keep_from is not None:
        new._horizon = max(sim._horizon, keep_from)
    return new


def fork_backend(backend: SimBackend, *, history: bool = False) -> SimBackend:
    """A `SimBackend` around `fork(backend.sim)`: drive it like the original."""
    new = SimBackend.__new__(SimBackend)
    new.__dict__.update(backend.__dict__)
    new.sim = fork(backend.sim, history=history)
    return new


def apply_targets(sim: Simulation, targets: Mapping[str, StageAllocation]) -> bool:
    """Apply `targets` at `sim.now` if they change the declared allocation (as the
    controller does: a no-op is not applied). True if something was applied."""
    if dict(targets) == sim.allocation:
        return False
    sim.apply(targets, sim.now)
    return True


class Fork:
    """A fork point: the state of a simulation at one time, from which any number of
    alternatives are played (each on its own copy; the fork point itself never runs)."""

    def __init__(self, sim: Simulation, *, history: bool = False) -> None:
        self.base = fork(sim, history=history)
        self.time = sim.now

    def branch(self) -> Simulation:
        return fork(self.base, history=True)  # the base has only what is needed already

    def play(self, targets: Mapping[str, StageAllocation] | None,
             until: float) -> Simulation:
        """A new branch with `targets` applied at the fork time (None: hold), run to
        `until`."""
        b = self.branch()
        if targets is not None:
            apply_targets(b, targets)
        b.run_until(until)
        return b


def state_signature(sim: Simulation) -> tuple[Any, ...]:
    """A summary of the dynamic state for equality checks in tests: time, counters,
    queues, replica states and the pending events."""
    return (sim.now, sim.n_arrivals, sim.n_completed, sim.n_drops, sim.n_errors,
            sim.n_within_sla, sim._rid, len(sim._inflight),
            tuple((len(st.queue), tuple((r.state, r.version, r.cpu_m, r.mem_mb, r.leaving)
                                        for r in st.replicas)) for st in sim._stages),
            tuple(sorted((e[0], e[2], e[3].idx, e[5]) for e in sim._heap)))
