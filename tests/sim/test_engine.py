"""The simulator against queueing theory and against the behaviours it claims to model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sair_ray.config import CostConfig
from sair_ray.cost import CostModel
from sair_ray.sim.model import amdahl
from sair_ray.sim.queueing import mm1k_blocking, mmc_mean_wait
from sair_ray.types import StageAllocation
from sair_ray.workloads import TraceReplay
from tests.sim.builders import profile, sim, stage

DET = {"dist": "deterministic", "mean_ms": 100}


# -- queueing theory ------------------------------------------------------------------------
def test_mm1_waiting_time_and_utilisation_match_theory():
    s = sim(profile(stage("s")), 6.0, seed=0)
    s.run_until(12_000)
    w = s.window(200, 12_000).stages[0]
    theory = mmc_mean_wait(6.0, 10.0, 1)  # rho / (mu - lambda) = 0.15 s; estimate sd 2.6 %
    assert w.queue_delay_ms / 1000 == pytest.approx(theory, rel=0.08)
    assert w.util == pytest.approx(0.6, abs=0.02)
    assert w.throughput_rps == pytest.approx(6.0, rel=0.03)


def test_mmc_waiting_time_matches_erlang_c():
    s = sim(profile(stage("s", replicas=3)), 18.0, seed=0)
    s.run_until(12_000)
    w = s.window(200, 12_000).stages[0]
    theory = mmc_mean_wait(18.0, 10.0, 3)  # Erlang C: 0.0296 s
    # over seeds the estimate is unbiased with a 2.2 % standard deviation at this length
    assert w.queue_delay_ms / 1000 == pytest.approx(theory, rel=0.07)
    assert w.util == pytest.approx(0.6, abs=0.02)


def test_tandem_throughput_is_the_bottleneck_capacity_and_drops_balance():
    p = profile(stage("a", service={"dist": "deterministic", "mean_ms": 10}),
                stage("b", service={"dist": "deterministic", "mean_ms": 25}, queue_max=50),
                stage("c", service={"dist": "deterministic", "mean_ms": 5}))
    s = sim(p, 60.0, seed=1)  # offered 60/s, b serves 40/s
    s.run_until(600)
    w = s.window(100, 600)
    assert w.throughput_rps == pytest.approx(40.0, rel=0.01)
    assert w.stages[1].util == pytest.approx(1.0, abs=1e-6)
    assert w.stages[0].util == pytest.approx(0.6, abs=0.03)
    assert w.drops / (600 - 100) == pytest.approx(20.0, rel=0.05)
    tot = s.totals()
    in_flight = s.window(599, 600).in_flight
    assert tot.arrivals == tot.completed + tot.drops + tot.errors + in_flight


def test_bounded_queue_blocking_matches_mm1k():
    s = sim(profile(stage("s", queue_max=4)), 9.0, seed=0)  # K = 1 in service + 4 waiting
    s.run_until(10_000)
    w = s.window(0, 10_000)
    assert w.drops / w.arrivals == pytest.approx(mm1k_blocking(9.0, 10.0, 5), rel=0.05)
    assert w.stages[0].drops == w.drops


# -- reproducibility -------------------------------------------------------------------------
def _fingerprint(seed: int) -> tuple:
    s = sim(profile(stage("a", replicas=2), stage("b")), 8.0, seed=seed)
    s.run_until(300)
    s.apply({"a": StageAllocation(3, 1500, 1024)})
    s.run_until(600)
    w = s.window(0, 600)
    return (s.totals(), w.p50_ms, w.p99_ms, tuple(x.util for x in w.stages))


def test_same_seed_same_run_and_different_seed_different_run():
    assert _fingerprint(7) == _fingerprint(7)
    assert _fingerprint(7) != _fingerprint(8)


def test_requests_are_the_same_whatever_the_allocation():
    """Common random numbers: policies are compared on identical requests."""
    runs = []
    for replicas in (1, 4):
        s = sim(profile(stage("s", replicas=replicas, service={"dist": "lognormal",
                                                                 "mean_ms": 50, "cv": 0.5})),
                5.0, seed=3)
        s.run_until(500)
        rl = s._stages[0].req_log
        order = np.argsort(rl.view("enq"))
        runs.append((rl.view("enq")[order], (rl.view("end") - rl.view("start"))[order]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_allclose(runs[0][1], runs[1][1])


# -- replica life cycle ------------------------------------------------------------------------
def test_cold_start_delays_new_capacity():
    s = sim(profile(stage("s", service=DET, cold_start_s=20)), 15.0, seed=0)
    s.run_until(100)
    s.apply({"s": StageAllocation(2, 1000, 1024)})
    assert s.replica_states("s") == {"pending": 0, "starting": 1, "restarting": 0, "idle": 0,
                                     "busy": 1}
    before = s.window(100.5, 119.5)
    after = s.window(121, 160)  # a backlog is waiting, so both replicas run flat out
    assert before.stages[0].serving_replicas == pytest.approx(1.0)
    assert before.throughput_rps == pytest.approx(10.0, abs=0.2)
    assert after.stages[0].serving_replicas == pytest.approx(2.0)
    assert after.throughput_rps == pytest.approx(20.0, abs=0.2)


def test_resource_change_is_a_rolling_restart_one_replica_at_a_time():
    st = stage("s", replicas=2, service=DET, cold_start_s=10, parallel_fraction=1.0)
    s = sim(profile(st), 50.0, seed=0)  # overloaded: both replicas always busy
    s.run_until(100)
    s.apply({"s": StageAllocation(2, 2000, 1024)})  # twice the cores, twice the speed
    first = s.window(100.5, 109.5)    # one old replica serves, the other restarts
    second = s.window(110.5, 119.5)   # the new one serves (2x), the second restarts
    done = s.window(121, 150)         # both new
    assert first.stages[0].serving_replicas == pytest.approx(1.0)
    assert first.throughput_rps == pytest.approx(10.0, abs=0.3)
    assert second.stages[0].serving_replicas == pytest.approx(1.0)
    assert second.throughput_rps == pytest.approx(20.0, abs=0.3)
    assert done.throughput_rps == pytest.approx(40.0, abs=0.3)
    assert done.stages[0].p50_ms == pytest.approx(50.0)


def test_scale_down_lets_a_busy_replica_finish():
    s = sim(profile(stage("s", replicas=2, service={"dist": "deterministic",
                                                      "mean_ms": 5000})),
            TraceReplay([0.0, 0.1]), seed=0)
    s.run_until(1.0)
    s.apply({"s": StageAllocation(1, 1000, 1024)})
    assert s.serving_replicas("s") == 2  # both still working
    s.run_until(10.0)
    assert s.totals().completed == 2 and s.totals().errors == 0
    assert s.serving_replicas("s") == 1


def test_replicas_beyond_the_cluster_stay_pending():
    p = profile(stage("g", kind="gpu", rate=1.0, service={"dist": "deterministic",
                                                           "mean_ms": 10}),
                cluster={"cpus": 64, "memory_mb": 65536, "gpus": 1})
    s = sim(p, 1.0)
    s.apply({"g": StageAllocation(2, 1000, 1024, 1.0)})
    assert s.replica_states("g")["pending"] == 1
    assert s.free_resources().gpus == 0
    s.apply({"g": StageAllocation(1, 1000, 1024, 1.0)})
    assert s.replica_states("g") == {"pending": 0, "starting": 0, "restarting": 0, "idle": 1,
                                     "busy": 0}


# -- speed models ------------------------------------------------------------------------------
def test_gpu_rate_stretches_service_time_and_utilisation_is_normalised():
    g = stage("g", kind="gpu", rate=0.5, service={"dist": "deterministic", "mean_ms": 10})
    s = sim(profile(g), 20.0, seed=0)
    s.run_until(300)
    w = s.window(10, 300).stages[0]
    assert w.p50_ms == pytest.approx(20.0)
    # busy 20/s x 20 ms = 40 % of the time; GPU-active 20 %; normalised to the quota: 0.4
    assert w.util == pytest.approx(0.4, abs=0.03)


def test_rate_change_rescales_work_in_flight():
    g = stage("g", kind="gpu", rate=1.0, service={"dist": "deterministic", "mean_ms": 1000})
    s = sim(profile(g), TraceReplay([0.0]), seed=0)
    s.run_until(0.5)
    s.apply({"g": StageAllocation(1, 1000, 1024, 0.5)})
    s.run_until(1.4)
    assert s.totals().completed == 0
    s.run_until(1.6)  # half done at r = 1, the other half takes 1 s at r = 0.5
    assert s.totals().completed == 1
    assert s.window(0, 1.6).p50_ms == pytest.approx(1500.0)


@pytest.mark.parametrize("cpu_m", [500, 1000, 2000, 4000])
def test_cpu_speedup_follows_amdahl(cpu_m):
    st = stage("s", cpu_m=cpu_m, service=DET, parallel_fraction=0.5)
    s = sim(profile(st), 1.0, seed=0)
    s.run_until(200)
    w = s.window(0, 200).stages[0]
    assert w.p50_ms == pytest.approx(100.0 * amdahl(1.0, 0.5) / amdahl(cpu_m / 1000, 0.5))
    # while busy, a replica uses S(n) of its n cores
    busy = w.throughput_rps * w.p50_ms / 1000
    assert w.util == pytest.approx(busy * amdahl(cpu_m / 1000, 0.5) / (cpu_m / 1000), rel=0.02)


def test_memory_below_need_slows_then_oom_kills():
    mem = {"need_mb": 1000, "oom_ratio": 0.75, "max_slowdown": 2.0}
    slow = sim(profile(stage("s", mem_mb=875, service=DET, memory=mem)), 1.0, seed=0)
    slow.run_until(100)
    assert slow.window(0, 100).stages[0].p50_ms == pytest.approx(150.0)  # halfway: 1.5x

    oom = sim(profile(stage("s", mem_mb=500, service=DET, memory=mem, cold_start_s=5)),
              1.0, seed=0)
    oom.run_until(300)
    tot = oom.totals()
    assert tot.completed == 0 and tot.errors > 0
    # crash-loop back-off: restarts take 5 s + 10, 20, 40, ... s, so few requests are tried
    assert tot.errors < 15
    w = oom.window(200, 300)
    assert w.p99_ms >= 2 * 1000  # failures count as SLA misses


def test_batching_serves_beyond_unbatched_capacity():
    b = stage("e", kind="gpu", rate=1.0, service={"dist": "deterministic", "mean_ms": 1},
              batch={"max_size": 16, "overhead_ms": 10})
    s = sim(profile(b), 300.0, seed=0)  # one request per batch would cap at 91/s
    s.run_until(120)
    w = s.window(20, 120)
    assert w.throughput_rps == pytest.approx(300.0, rel=0.03)
    assert w.stages[0].queue < 50
    assert w.stages[0].p50_ms > 11.0  # batches of several requests


# -- metrics and cost ----------------------------------------------------------------------------
def test_cost_rate_and_dollars_follow_the_cost_model():
    p = profile(stage("a"), stage("g", kind="gpu", rate=0.5, cpu_m=2000, mem_mb=4096))
    s = sim(p, 1.0)
    model = CostModel(p.pipeline, CostConfig())
    a0 = s.allocation
    s.run_until(100)
    a1 = {"a": StageAllocation(3, 2000, 2048), "g": StageAllocation(1, 2000, 4096, 0.8)}
    s.apply(a1)
    s.run_until(300)
    w = s.window(200, 300)
    assert w.cost_rate_effective == pytest.approx(model.rate(a1, effective=True))
    assert w.cost_rate_billable == pytest.approx(model.rate(a1, effective=False))
    tot = s.totals()
    expected = (model.rate(a0) * 100 + model.rate(a1) * 200) / 3600
    assert tot.cost_effective_usd == pytest.approx(expected)
    assert tot.usd_per_1000_effective == pytest.approx(expected / tot.completed * 1000)


def test_queue_depth_of_a_past_window_is_what_it_was():
    s = sim(profile(stage("s", service=DET)), 14.0, seed=2)  # overloaded, queue grows
    s.run_until(50)
    q_then = s.queue_length("s")
    s.run_until(80)
    assert q_then > 100
    assert s.window(40, 50).stages[0].queue == q_then
    assert s.window(70, 80).stages[0].queue == s.queue_length("s")


def test_stalled_stage_shows_in_p99_before_anything_completes():
    s = sim(profile(stage("s", service=DET, cold_start_s=30)), 5.0, seed=0)
    s.run_until(10)
    s.apply({"s": StageAllocation(0, 1000, 1024)})
    s.apply({"s": StageAllocation(1, 1000, 1024)})  # back, but after a 30 s cold start
    w = s.window(20, 35)
    assert w.completed == 0
    assert w.p99_ms > 1000  # requests older than the SLA are still in flight


def test_apply_rejects_bad_targets():
    s = sim(profile(stage("s")), 1.0)
    with pytest.raises(ValueError, match="unknown stage"):
        s.apply({"nope": StageAllocation(1, 1000, 1024)})
    with pytest.raises(ValueError, match="replicas"):
        s.apply({"s": StageAllocation(-1, 1000, 1024)})
    s.run_until(10)
    with pytest.raises(ValueError, match="past"):
        s.apply({"s": StageAllocation(2, 1000, 1024)}, now=5)
    with pytest.raises(ValueError, match="backwards"):
        s.run_until(5)


def test_long_runs_keep_bounded_logs_and_whole_run_percentiles():
    s = sim(profile(stage("s")), 5.0)
    s.retain_s = 100.0
    full = sim(profile(stage("s")), 5.0)  # same seed, keeps everything
    s.run_until(1000)
    full.run_until(1000)
    assert len(s._stages[0].req_log) < 5.0 * 200
    whole = full.window(0, 1000)
    tot = s.totals()
    assert tot.p50_ms == pytest.approx(whole.p50_ms, rel=0.015)
    assert tot.p99_ms == pytest.approx(whole.p99_ms, rel=0.015)
    w = s.window(950, 1000)
    assert w.throughput_rps == pytest.approx(5.0, rel=0.3)
    with pytest.raises(ValueError, match="oldest retained record"):
        s.window(500, 1000)
    assert not math.isnan(s.totals().usd_per_1000_effective)
