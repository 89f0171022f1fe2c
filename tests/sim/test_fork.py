"""The counterfactual engine (sair_ray.sim.fork): a fork is the whole state, independent,
exact, sees the same requests whatever it does, and is cheap."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace

import numpy as np
import pytest

from sair_ray.backends.sim import SimBackend
from sair_ray.sim.engine import Simulation, _Replica, _Stage
from sair_ray.sim.fork import (
    REPLICA_FIELDS,
    SIM_FIELDS,
    STAGE_FIELDS,
    Fork,
    fork,
    fork_backend,
    state_signature,
)
from sair_ray.types import StageAllocation as A
from tests.scripts import load_benchmark

APP = "nlp_analysis"   # batching GPU stage, 45 s cold starts, three stages


def _busy_sim(t_fork: float = 110.0) -> Simulation:
    """A simulation caught mid-transition at `t_fork`: a GPU replica cold-starting and one
    pending (the cluster has 2 GPUs), a rolling restart, a stage crash-looping on OOM
    (memory below its working set), queues and batches in flight."""
    sim = SimBackend(APP, seed=3, retain_s=None).sim
    sim.run_until(60)
    sim.apply({"embed": A(3, 2000, 4096, 0.6), "score": A(2, 1500, 1024),
               "tokenize": A(2, 1000, 256)}, 60)        # 256 MB < 0.75 x 400 MB: OOM
    sim.run_until(100)
    sim.apply({"score": A(2, 2000, 1024)}, 100)          # a second rolling restart
    sim.run_until(t_fork)
    return sim


LATER = [(130.0, {"embed": A(2, 2000, 4096, 1.0), "tokenize": A(2, 1000, 1024)}),
         (170.0, {"score": A(1, 2000, 1024)})]


def _drive(sim: Simulation, actions, until: float) -> None:
    for t, target in actions:
        sim.apply(target, t)
    sim.run_until(until)


def test_the_fork_copies_every_field_the_engine_has():
    """A field added to the engine must be copied by fork() too (else forks share it)."""
    sim = _busy_sim()
    assert set(vars(sim)) == SIM_FIELDS
    assert set(_Stage.__slots__) == STAGE_FIELDS == {
        "alloc_hist", "alloc_t", "batch_max", "batch_overhead_s", "config", "declared",
        "drop_log", "error_log", "idle", "idx", "job_log", "kind", "log_job", "log_req",
        "model", "next", "queue", "queue_max", "rate", "replicas", "req_log", "rolling",
        "serving", "serving_series", "spec"}
    assert set(_Replica.__slots__) == REPLICA_FIELDS == {
        "id", "cpu_m", "mem_mb", "state", "version", "job", "leaving", "restart_next",
        "factor", "share", "oom", "crashes"}


@pytest.mark.parametrize("history", [True, False])
def test_a_fork_given_the_same_actions_reproduces_the_run_exactly(history):
    sim = _busy_sim()
    states = {k: sum(v for k2, v in sim.replica_states(s).items() if k2 == k)
              for s in ("embed", "score", "tokenize")
              for k in ("pending", "starting", "restarting")}
    assert sum(states.values()) > 0   # the fork point really is mid-transition
    f = fork(sim, history=history)
    _drive(sim, LATER, 400)
    _drive(f, LATER, 400)
    assert state_signature(f) == state_signature(sim)
    assert sim.n_errors > 0           # the OOM crash loop went through the fork
    for a, b in [(110, 140), (140, 200), (110, 400), (300, 400)]:
        assert f.window(a, b) == sim.window(a, b)
    if history:
        assert f.totals() == sim.totals()
        assert f.window(0, 400) == sim.window(0, 400)
    else:
        with pytest.raises(ValueError, match="starts before"):
            f.window(100, 120)


def test_running_a_fork_leaves_the_original_untouched():
    sim = _busy_sim()
    before = state_signature(sim)
    n_done = len(sim._done)
    f = fork(sim)
    f.apply({"score": A(4, 4000, 2048)}, f.now)
    f.run_until(300)
    assert state_signature(sim) == before and len(sim._done) == n_done
    b = SimBackend(APP, seed=1)
    b.advance_to(50)
    fb = fork_backend(b)
    fb.advance_to(80)
    assert b.now == 50 and fb.now == 80 and fb.sim is not b.sim


def test_different_actions_see_the_same_requests_and_diverge_only_after_the_action():
    sim = _busy_sim()
    point = Fork(sim, history=True)
    fixed = A(2, 1000, 1024)   # both end the OOM crash loop; they differ in scoring
    up = point.play({"tokenize": fixed, "score": A(4, 2000, 1024)}, 300)
    down = point.play({"tokenize": fixed, "score": A(1, 250, 1024)}, 300)
    held = point.play(None, 300)
    # common random numbers: the same arrivals, at the same times, in every branch
    assert up.n_arrivals == down.n_arrivals == held.n_arrivals
    for s in (up, down):
        assert np.array_equal(s._arrival_log.view("t"), held._arrival_log.view("t"))
        # before the fork time nothing differs (a window ending at the fork time would
        # show the allocation applied then)
        assert _past(s, point.time - 1) == _past(held, point.time - 1)
    assert up.window(point.time, 300) != down.window(point.time, 300)
    assert down.window(150, 300).p99_ms > up.window(150, 300).p99_ms


def _past(sim: Simulation, end: float):
    """Window [0, end) for end in the past, without the stage queues at `end` and with
    utilisation to 9 digits: the engine derives both from records of jobs that finished
    later (a request that waited then and failed later is not counted; busy time is summed
    in a different order), so they depend on what happened after."""
    w = sim.window(0, end)
    return replace(w, stages=tuple(replace(st, queue=0, util=round(st.util, 9))
                                   for st in w.stages))


def test_deepcopy_is_not_a_fork():
    """Why fork() exists: deepcopy keeps the engine's bound `list.append`s, so the copy
    writes its records into the original's logs."""
    sim = SimBackend(APP, seed=1).sim
    sim.run_until(30)
    n = len(sim._done)
    c = copy.deepcopy(sim)
    c.run_until(60)
    assert len(sim._done) > n          # the original was written to
    f = fork(sim)
    n = len(sim._done)
    f.run_until(90)
    assert len(sim._done) == n


def test_fork_cost_is_small_and_does_not_grow_with_the_run():
    sim = SimBackend(APP, seed=1, retain_s=None).sim

    def cost(at: float) -> float:
        sim.run_until(at)
        fork(sim)   # the first read flushes the original's buffers
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            fork(sim)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    early, late = cost(120), cost(900)
    assert early < 0.005 and late < 0.005   # ~0.1-0.3 ms measured (docs/regret.md)
    point = Fork(sim)
    plays = []
    # Best of three: each play is its own branch, so a scheduler or GC pause on a busy
    # machine (one CI run measured 0.6 s once) cannot fail a check about the code's cost.
    for _ in range(3):
        t0 = time.perf_counter()
        point.play({"score": A(2, 1000, 1024)}, sim.now + 30)
        plays.append(time.perf_counter() - t0)
    assert min(plays) < 0.5   # 30 s of 150 req/s: ~15 ms measured


def test_counterfactual_benchmark_quick_mode(capsys):
    """benchmarks/bench_counterfactual.py --quick runs and reports every figure."""
    bench = load_benchmark("bench_counterfactual")
    (r,) = bench.main(["--quick"])
    assert r["profile"] == APP and 0 < r["fork_ms"] < r["deepcopy_ms"]
    assert r["alternatives_per_s"] > 1
    assert "| nlp_analysis |" in capsys.readouterr().out
