"""The `fit` candidate's queueing model (policy/sizing.py): how hot a stage may run follows
from its SLA, and a backlog draining is not load."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sair_ray.config import SAIRConfig
from sair_ray.policy import sizing
from sair_ray.types import PipelineSpec, StageAllocation, StageKind, StageSpec
from tests import factories

V = SAIRConfig().validator


def test_one_replica_waits_like_an_m_m_1_queue():
    # M/M/1 (Sakasegawa's formula is exact at c = 1): P(wait) = u, tail rate mu (1 - u);
    # at u = 0.5, mu = 10/s the p99 wait is ln(50) / 5 s
    assert sizing.p99_wait_s(0.5, 1, 10.0) == pytest.approx(math.log(50) / 5)
    assert sizing.p99_wait_s(1.0, 1, 10.0) == math.inf
    assert sizing.p99_wait_s(0.0, 1, 10.0) == 0.0


def test_more_replicas_wait_less_at_the_same_utilisation():
    waits = [sizing.p99_wait_s(0.8 * c, c, 10.0) for c in (1, 2, 4, 8)]
    assert waits == sorted(waits, reverse=True)


def test_a_loose_budget_runs_hot_and_a_tight_one_at_the_coolest_target():
    # 30 req/s on replicas of 10 req/s: 3 replicas' worth of work
    loose = sizing.replicas_for(30.0, 10.0, 60.0, sizing.U_TARGET, sizing.U_MAX)
    tight = sizing.replicas_for(30.0, 10.0, 0.001, sizing.U_TARGET, sizing.U_MAX)
    mid = sizing.replicas_for(30.0, 10.0, 0.2, sizing.U_TARGET, sizing.U_MAX)
    assert loose == pytest.approx(3 / sizing.U_MAX)
    assert tight == pytest.approx(3 / sizing.U_TARGET)
    assert loose < mid < tight
    # the answer meets its budget
    assert sizing.p99_wait_s(3.0, mid, 10.0) == pytest.approx(0.2, rel=1e-3)


def test_a_loose_sla_needs_fewer_replicas_for_the_same_load():
    # preprocess: 1 replica busy all the time passing 20 req/s, 60 req/s arriving
    def replicas(sla_ms: float) -> int:
        p = factories.pipeline(sla_ms=sla_ms)
        ctx = factories.context(p, p99=0.5 * sla_ms, arrival=60.0, throughput=20.0,
                                util={"preprocess": 1.0})
        need = sizing.needs(ctx, p, V)["preprocess"]
        return math.ceil(need.demand)
    assert replicas(50.0) == 5        # 3 replicas' worth at 60 %
    assert replicas(5000.0) == 4      # sized for up to 90 %: its queue may wait longer


def test_a_backlog_draining_is_not_load():
    # 3 replicas passing 30 req/s while 15 req/s arrive: they drain what queued before;
    # the stage needs what arrives (plus what is still queued), not what it drains
    p = factories.pipeline()
    alloc = {k: StageAllocation(3 if k == "preprocess" else a.replicas, a.cpu_m, a.mem_mb,
                                a.rate) for k, a in p.initial_allocation().items()}
    ctx = factories.context(p, arrival=15.0, throughput=30.0, alloc=alloc,
                            util={"preprocess": 0.9})
    need = sizing.needs(ctx, p, V)["preprocess"]
    assert need.capacity_rps == pytest.approx(30.0 / (0.9 * 3))
    assert need.demand < 3


def test_replicas_still_starting_are_not_counted_busy():
    # preprocess was just taken to 5 replicas; 3 served the window, 74 % busy each,
    # passing 15 req/s while 15 arrive: 3 replicas' worth at most, so no more are asked
    # for (counting the 2 starting ones as busy reads each replica at 3/5 of its speed)
    p = factories.pipeline(sla_ms=5000.0)
    alloc = {k: StageAllocation(5 if k == "preprocess" else a.replicas, a.cpu_m, a.mem_mb,
                                a.rate) for k, a in p.initial_allocation().items()}
    ctx = factories.context(p, arrival=15.0, throughput=15.0, alloc=alloc,
                            util={"preprocess": 0.74})
    ctx = dataclasses.replace(ctx, stages=tuple(
        dataclasses.replace(s, serving=3.0) if s.name == "preprocess" else s
        for s in ctx.stages))
    need = sizing.needs(ctx, p, V)["preprocess"]
    assert need.capacity_rps == pytest.approx(15.0 / (0.74 * 3))
    assert need.demand <= 5
    assert sizing.size(ctx, p, V).proposal["preprocess"] == {"action": "none"}
    # a backend that does not say how many served: every replica counts, as before
    unknown = dataclasses.replace(ctx, stages=tuple(
        dataclasses.replace(s, serving=0.0) for s in ctx.stages))
    assert sizing.needs(unknown, p, V)["preprocess"].capacity_rps == \
        pytest.approx(15.0 / (0.74 * 5))


def test_a_busy_gpu_stage_whose_requests_do_not_wait_gets_no_more_gpus():
    # inference at full rate reads 90 % busy (a batching stage does long before it is
    # short); while nothing queues and requests wait ~0, no second GPU ...
    import dataclasses

    p = factories.pipeline(sla_ms=5000.0)
    ctx = factories.context(p, p99=500.0, util={"inference": 0.9})

    def with_wait(c, wait_ms: float, queue: float):
        stages = tuple(dataclasses.replace(s, queue_delay_ms=wait_ms, queue=queue)
                       if s.name == "inference" else s for s in c.stages)
        return dataclasses.replace(c, stages=stages)

    quiet = sizing.size(with_wait(ctx, 1.0, 0.0), p, V).proposal
    assert quiet["inference"] == {"action": "none"}
    # ... but once they queue, it scales out
    waiting = sizing.size(with_wait(ctx, 800.0, 12.0), p, V).proposal
    assert waiting["inference"]["action"] == "scale_replicas"


def _two_gpus(p: PipelineSpec) -> dict[str, StageAllocation]:
    """`p`'s initial allocation with inference on both of the cluster's 2 GPUs."""
    return p.initial_allocation() | {"inference": StageAllocation(2, 2000, 4096, 1.0)}


def _sized_for(n: sizing.StageNeed, load_rps: float) -> float:
    """The CPU stage demand `needs` computes for `load_rps` at `n`'s capacity and budget."""
    return sizing.replicas_for(load_rps, n.capacity_rps, n.wait_budget_s, sizing.U_TARGET,
                               sizing.U_MAX)


def test_no_stage_is_sized_for_more_than_a_gpu_stage_at_every_gpu_passes():
    # inference on both of the cluster's 2 GPUs, flat out with requests waiting: 2 x 10
    # req/s pass, 30 arrive; the stages before and after it are sized for the 20
    p = factories.pipeline()
    alloc = _two_gpus(p)
    ctx = factories.context(p, arrival=30.0, throughput=20.0, alloc=alloc,
                            util={"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9},
                            queue={"inference": 40.0})
    need = sizing.needs(ctx, p, V)
    for stage in ("preprocess", "postprocess"):
        n = need[stage]
        assert n.demand == pytest.approx(_sized_for(n, 20.0))
    # with a GPU to spare, or no request waiting, nothing is capped
    spare = factories.context(p, arrival=30.0, throughput=20.0, queue={"inference": 40.0},
                              util={"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9})
    quiet = factories.context(p, arrival=30.0, throughput=20.0, alloc=alloc,
                              util={"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9})
    for other in (spare, quiet):
        assert sizing.needs(other, p, V)["preprocess"].demand > need["preprocess"].demand


def test_a_past_window_at_every_gpu_caps_the_recent_peak():
    # the burst's first window came before the GPU stage had both GPUs: its 30 req/s are
    # kept for scale-down only up to what the stage passes flat out once it has them
    p = factories.pipeline()
    two = _two_gpus(p)
    util = {"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9}
    early = factories.context(p, time=0.0, arrival=30.0, throughput=10.0, util=util,
                              queue={"inference": 40.0})
    full = factories.context(p, time=60.0, arrival=30.0, throughput=20.0, alloc=two,
                             util=util, queue={"inference": 40.0})
    now = factories.context(p, time=120.0, arrival=5.0, throughput=5.0, alloc=two,
                            util={"inference": 0.25, "postprocess": 0.1, "preprocess": 0.2})
    n = sizing.needs(now, p, V, [early, full])["preprocess"]
    assert n.keep == pytest.approx(20.0 / (n.capacity_rps * sizing.U_DOWN))


def test_what_a_full_gpu_stage_passes_is_pooled_over_its_busy_windows():
    # two windows at both GPUs, flat out, passing 20 and 30 req/s: the stage passes 25 in
    # the pooled reading (not the 30 of the luckier window); 40 arrive
    p = factories.pipeline()
    two = _two_gpus(p)
    util = {"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9}
    slow = factories.context(p, time=0.0, arrival=40.0, throughput=20.0, alloc=two,
                             util=util, queue={"inference": 40.0})
    fast = factories.context(p, time=15.0, arrival=40.0, throughput=30.0, alloc=two,
                             util=util, queue={"inference": 40.0})
    n = sizing.needs(fast, p, V, [slow])["postprocess"]
    assert n.demand == pytest.approx(_sized_for(n, 25.0))


def test_a_quiet_window_of_a_gpu_stage_at_every_gpu_caps_nothing():
    # a batching stage reads a request waiting long before it is flat out: a window at 70 %
    # busy (20 req/s read as 28.6 flat out) says little about what it passes at full
    # batches, so it caps no other stage
    p = factories.pipeline()
    alloc = _two_gpus(p)
    ctx = factories.context(p, arrival=30.0, throughput=20.0, alloc=alloc,
                            util={"inference": 0.7, "postprocess": 0.5, "preprocess": 0.9},
                            queue={"inference": 1.0})
    n = sizing.needs(ctx, p, V)["preprocess"]
    assert n.demand == pytest.approx(_sized_for(n, 30.0))


def test_a_stage_after_the_ceiling_still_drains_its_own_backlog():
    # 20 req/s reach postprocess through the full GPU stage; the 600 queued in front of
    # postprocess itself are its own, to be drained on top
    p = factories.pipeline()
    alloc = _two_gpus(p)
    ctx = factories.context(p, arrival=30.0, throughput=20.0, alloc=alloc,
                            util={"inference": 1.0, "postprocess": 0.5, "preprocess": 0.9},
                            queue={"inference": 40.0, "postprocess": 600.0})
    n = sizing.needs(ctx, p, V)["postprocess"]
    assert n.demand == pytest.approx(_sized_for(n, 20.0 + 600.0 / sizing.DRAIN_S))


def test_a_stage_whose_replicas_never_move_caps_nothing():
    # an ingress pinned at one replica, busy and queued (an async ingress reads busy while
    # it awaits the stages behind it): the stages are still sized for every arrival
    base = factories.pipeline()
    ingress = StageSpec("ingress", StageKind.CPU, replicas_min=1, replicas_max=1,
                        cpu_m_min=1, cpu_m_max=1, initial=StageAllocation(1, 1, 1024))
    p = dataclasses.replace(base, stages=(ingress, *base.stages))
    ctx = factories.context(p, arrival=30.0, throughput=20.0,
                            util={"ingress": 1.0, "preprocess": 0.9},
                            queue={"ingress": 40.0})
    n = sizing.needs(ctx, p, V)["preprocess"]
    assert n.demand == pytest.approx(_sized_for(n, 30.0))
