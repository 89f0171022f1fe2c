"""SAIR's Prometheus metrics: what a real controller run on the simulator exports, round
by round, and that Ray's own metric classes accept every name, tag and value."""

from __future__ import annotations

from collections import defaultdict

import pytest

from sair_ray.backends.sim import SimBackend
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.decision_log import DecisionLog
from sair_ray.embedding import phi_dim
from sair_ray.memory import ExperienceMemory
from sair_ray.metrics_export import METRICS, MetricsExporter, ray_factory, safe_record
from sair_ray.registry import make_policy
from sair_ray.reward import TERMS
from sair_ray.workloads import Poisson

ROUNDS = 40


class Recorded:
    """A metric that keeps what it was given (the exporter's only contract with Ray)."""

    def __init__(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                 boundaries: object) -> None:
        self.kind, self.name, self.tag_keys = kind, name, tag_keys
        self.total: dict[tuple, float] = defaultdict(float)
        self.value: dict[tuple, float] = {}
        self.observed: list[float] = []

    def _key(self, tags: dict[str, str]) -> tuple:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        assert all(isinstance(v, str) for v in tags.values())
        return tuple(tags[k] for k in self.tag_keys)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "counter" and value > 0
        self.total[self._key(tags or {})] += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "gauge"
        self.value[self._key(tags or {})] = value

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "histogram"
        self._key(tags or {})
        self.observed.append(value)


def _controller(tmp_path, seed: int = 5):
    backend = SimBackend("image_classification", Poisson(rate=60.0), seed=seed)
    # §1-§9 alone: its random probes give the clamped rounds the counters are checked on
    cfg = SAIRConfig().replace(seed=seed, **{"learning.enabled": False})
    mem = ExperienceMemory(tmp_path / "memory", phi_dim(len(backend.pipeline.stages)))
    ctl = Controller(backend, make_policy("threshold", cfg, pipeline=backend.pipeline), cfg,
                     memory=mem, log_path=str(tmp_path / "decisions.jsonl"))
    return backend, ctl, mem


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    where = tmp_path_factory.mktemp("metrics")
    backend, ctl, mem = _controller(where)
    exp = MetricsExporter("imgcls", factory=Recorded)
    decisions, targets, rewards = [], [], []
    step = ctl.cfg.loop.decision_interval_s
    for i in range(1, ROUNDS + 1):
        backend.advance_to(i * step)
        rewarded, reward_sum = ctl.counters.rewarded, ctl.counters.reward_sum
        d = ctl.tick(i * step)
        exp.record(d, ctl)
        decisions.append(d)
        targets.append({k: v for (app, k), v in exp.m["sair_stage_replicas_target"].value.items()})
        if ctl.counters.rewarded > rewarded:
            rewards.append(ctl.counters.reward_sum - reward_sum)
    ctl.close()
    logged = [r["reward"] for r in DecisionLog.read(where / "decisions.jsonl")
              if r["kind"] == "reward"]
    yield exp, ctl, decisions, targets, rewards, len(mem), logged[-1]
    mem.close()


def test_counters_match_the_controller(exported):
    exp, ctl, decisions, _, _, mem_size, _ = exported
    by_source = exp.m["sair_decisions"].total
    assert by_source[("imgcls", "probe")] == ctl.counters.probes > 0
    assert by_source[("imgcls", "policy")] == ROUNDS - ctl.counters.probes
    assert exp.m["sair_probes"].total[("imgcls",)] == ctl.counters.probes
    assert exp.m["sair_policy_calls"].total[("imgcls",)] == ctl.counters.policy_calls
    assert exp.m["sair_experiences_stored"].total[("imgcls",)] == ctl.counters.stored > 0
    assert sum(exp.m["sair_actions"].total.values()) == sum(d.acted for d in decisions)
    clamps = exp.m["sair_validator_clamps"].total
    assert sum(clamps.values()) == sum(len(d.clamps) for d in decisions) > 0
    first = next(c for d in decisions for c in d.clamps)
    assert clamps[("imgcls", first.stage, first.field)] >= 1
    assert len(exp.m["sair_policy_latency_ms"].observed) == ctl.counters.policy_calls
    assert len(exp.m["sair_round_ms"].observed) == ROUNDS
    assert exp.m["sair_memory_experiences"].value[("imgcls",)] == mem_size


def test_gauges_follow_the_run(exported):
    exp, ctl, decisions, targets, rewards, _, _ = exported
    # the replica targets exported after round i are what round i+1 observed in force
    for i in range(ROUNDS - 1):
        seen = {s.name: s.replicas for s in decisions[i + 1].context.stages}
        assert targets[i] == seen, i
    assert exp.m["sair_reward"].value[("imgcls",)] == pytest.approx(rewards[-1])
    assert exp.m["sair_reward_mean"].value[("imgcls",)] == pytest.approx(
        ctl.counters.mean_reward)
    assert exp.m["sair_epsilon"].value[("imgcls",)] == decisions[-1].epsilon
    assert exp.m["sair_p99_ms"].value[("imgcls",)] == decisions[-1].context.p99_ms
    # only the GPU stage has a rate target
    assert set(exp.m["sair_stage_gpu_rate_target"].value) == {("imgcls", "inference")}


def test_reward_term_gauges_match_the_logged_reward(exported):
    exp, *_, logged = exported
    assert exp.m["sair_reward"].value[("imgcls",)] == pytest.approx(logged["total"])
    for t in TERMS:
        assert exp.m[f"sair_reward_{t}"].value[("imgcls",)] == pytest.approx(logged[t]), t


def test_ray_metric_classes_accept_every_record(tmp_path):
    """The real ray.util.metrics objects (no cluster needed: they validate names, tag keys
    and tag values on every record, then drop it outside a Ray process)."""
    pytest.importorskip("ray")
    built = {}

    def factory(*args):
        built[args[1]] = m = ray_factory(*args)
        return m

    backend, ctl, mem = _controller(tmp_path, seed=6)
    exp = MetricsExporter("imgcls", factory=factory)
    step = ctl.cfg.loop.decision_interval_s
    for i in range(1, 16):
        backend.advance_to(i * step)
        exp.record(ctl.tick(i * step), ctl)  # raises on a bad tag or value
    ctl.close()
    mem.close()
    assert set(built) == {d.name for d in METRICS}
    assert not any(m._discard_metric for m in built.values())  # Ray drops invalid names


def test_a_failing_exporter_never_stops_the_loop(caplog):
    class Broken(MetricsExporter):
        def record(self, decision, controller):
            raise RuntimeError("metrics agent gone")

    safe_record(Broken("x", factory=Recorded), object(), object())
    assert "exporting SAIR metrics failed" in caplog.text
