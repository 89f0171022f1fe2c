"""The loop's bookkeeping (docs/algorithm.md §1), driven by a scripted backend.

The backend here is a test double for the world: it replays latencies chosen by the test
and records what the controller applied. The loop against the real simulator is tested
in tests/sim/test_controller_on_sim.py.
"""

from __future__ import annotations

import numpy as np

from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.decision_log import DecisionLog
from sair_ray.memory import ExperienceMemory
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.types import ClusterResources
from tests.factories import context, pipeline


class ScriptedBackend:
    def __init__(self, latencies):
        self._pipeline = pipeline()
        self.alloc = self._pipeline.initial_allocation()
        self.latencies = list(latencies)
        self.windows, self.applied, self.now = [], [], 0.0

    @property
    def pipeline(self):
        return self._pipeline

    def advance_to(self, t):
        self.now = t

    def observe(self, start, end):
        self.windows.append((start, end))
        p99 = self.latencies.pop(0) if self.latencies else 300.0
        return context(self._pipeline, time=end, p99=p99, alloc=self.alloc)

    def apply(self, target, now):
        self.applied.append((now, dict(target)))
        self.alloc.update(target)

    def free_resources(self):
        return ClusterResources(32, 131072, 1)


class AddPreprocessReplica:
    name = "scripted"

    def __init__(self):
        self.requests: list[PolicyRequest] = []

    def decide(self, request):
        self.requests.append(request)
        cur = request.context.stage("preprocess").replicas
        return PolicyReply({"preprocess": {"action": "scale_replicas", "replicas": cur + 1}},
                           rationale="more preprocessing")


class Exploding:
    name = "exploding"

    def decide(self, request):
        raise RuntimeError("LLM endpoint down")


def no_explore(cfg=None):
    cfg = cfg or SAIRConfig()
    return cfg.replace(**{"exploration.epsilon_0": 0.0, "exploration.epsilon_min": 0.0})


def test_rounds_reward_remember_and_log(tmp_path):
    # Latency falls after the first scale-up (a violation fixed): a positive reward.
    backend = ScriptedBackend([900.0, 400.0, 380.0, 390.0])
    policy = AddPreprocessReplica()
    mem = ExperienceMemory(tmp_path / "mem", 24)
    ctl = Controller(backend, policy, no_explore(), memory=mem,
                     log_path=str(tmp_path / "decisions.jsonl"))
    decisions = run_virtual(ctl, backend, until=120)
    assert len(decisions) == 4
    assert [d.source for d in decisions] == ["policy:scripted"] * 4
    # Cooldown: a scale-up at t=30 blocks the next one until t=90.
    assert [t for t, _ in backend.applied] == [30.0, 90.0]
    assert decisions[1].action.is_noop and any("cooldown" in c.reason
                                               for c in decisions[1].clamps)
    # The first reward judges the t=30 action by the t=60 window: 900 -> 400 ms.
    stored = mem.get(0)
    assert stored.reward > 0 and ctl.counters.stored >= 1
    assert stored.context["p99_ms"] == 900.0 and stored.action == {
        "preprocess": {"replicas": 1, "cpu_m": 0, "mem_mb": 0, "rate": 0.0}}
    # Windows start settle_s after an action.
    assert backend.windows[1] == (40.0, 60.0) and backend.windows[0] == (0.0, 30.0)
    ctl.close()
    merged = DecisionLog.merged(tmp_path / "decisions.jsonl")
    assert len(merged) == 4 and merged[0]["reward"]["total"] == stored.reward
    assert merged[0]["rationale"] == "more preprocessing" and merged[-1]["reward"] is None
    table = DecisionLog.to_parquet(tmp_path / "decisions.jsonl", tmp_path / "d.parquet")
    assert table.exists()
    mem.close()


def test_policy_failure_is_a_counted_noop():
    backend = ScriptedBackend([300.0] * 3)
    ctl = Controller(backend, Exploding(), no_explore())
    decisions = run_virtual(ctl, backend, until=90)
    assert all(d.action.is_noop and "LLM endpoint down" in d.error for d in decisions)
    assert ctl.counters.policy_failures == 3 and backend.applied == []


def test_probes_follow_epsilon_and_go_through_the_validator():
    cfg = SAIRConfig().replace(**{"exploration.epsilon_0": 1.0, "exploration.epsilon_decay": 1.0,
                                  "exploration.epsilon_min": 1.0})
    backend = ScriptedBackend([])
    ctl = Controller(backend, AddPreprocessReplica(), cfg)
    decisions = run_virtual(ctl, backend, until=300)
    assert all(d.source == "probe" for d in decisions)
    for d in decisions:
        for delta in d.action.deltas.values():
            assert abs(delta.replicas) <= 2


def test_policy_sees_episodes_bottleneck_and_history(tmp_path):
    backend = ScriptedBackend([900.0, 400.0, 380.0, 390.0, 385.0])
    policy = AddPreprocessReplica()
    with ExperienceMemory(tmp_path / "m", 24) as mem:
        ctl = Controller(backend, policy, no_explore(), memory=mem)
        run_virtual(ctl, backend, until=150)
        last = policy.requests[-1]
        assert last.bottleneck is not None and len(last.history) == 4
        assert len(last.episodes) == min(len(mem), 15) and len(mem) >= 1


def test_state_round_trip():
    backend = ScriptedBackend([900.0, 400.0])
    ctl = Controller(backend, AddPreprocessReplica(), no_explore())
    run_virtual(ctl, backend, until=60)
    state = ctl.state()
    fresh = Controller(ScriptedBackend([]), AddPreprocessReplica(), no_explore())
    fresh.restore(state)
    assert fresh.state() == state
    assert np.isclose(fresh.epsilon.epsilon, ctl.epsilon.epsilon)


def test_cost_rate_comes_from_the_cost_model():
    backend = ScriptedBackend([300.0])
    ctl = Controller(backend, AddPreprocessReplica(), no_explore())
    d = ctl.tick(30.0)
    expected = ctl.costs.rate(context(backend.pipeline).allocation, effective=True)
    assert np.isclose(d.context.cost_rate, expected)


def test_a_failing_memory_write_does_not_stop_the_loop(tmp_path):
    backend = ScriptedBackend([900.0, 400.0, 380.0])
    mem = ExperienceMemory(tmp_path / "m", 24)
    mem._journal._f.close()  # the journal can no longer be written (as on a lost disk)
    ctl = Controller(backend, AddPreprocessReplica(), no_explore(), memory=mem)
    decisions = run_virtual(ctl, backend, until=90)
    assert len(decisions) == 3 and ctl.counters.memory_failures >= 1
    assert ctl.counters.stored == 0 and len(mem) == 0


def test_decision_log_reopened_after_a_torn_write_stays_readable(tmp_path):
    from sair_ray.decision_log import DecisionLog

    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path)
    log.write("decision", {"round": 0})
    log.close()
    with open(path, "a") as f:
        f.write('{"kind":"decision","round":1,"con')   # the crash
    log = DecisionLog(path)
    log.write("decision", {"round": 1})
    log.close()
    assert [r["round"] for r in DecisionLog.read(path)] == [0, 1]
