"""The controller loop on the real simulator: the comparison path every benchmark uses."""

from __future__ import annotations

from sair_ray.backends.sim import SimBackend
from sair_ray.baselines import HPA, Static, Threshold
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.memory import ExperienceMemory
from sair_ray.workloads import Poisson

HOUR_HALF = 1800.0
BASELINES = {"static": Static, "hpa": HPA, "threshold": Threshold}


def run(policy_name: str, seed: int, tmp_path=None, **params):
    backend = SimBackend("image_classification", Poisson(rate=60.0), seed=seed)
    cfg = SAIRConfig().replace(seed=seed)
    mem = None
    if tmp_path is not None:
        mem = ExperienceMemory(tmp_path / f"mem-{policy_name}-{seed}",
                               7 * len(backend.pipeline.stages) + 3)
    ctl = Controller(backend, BASELINES[policy_name](**params), cfg, memory=mem,
                     explore=mem is not None)
    decisions = run_virtual(ctl, backend, until=HOUR_HALF)
    if mem is not None:
        mem.close()
    return backend.totals(), decisions, ctl


def test_a_scaling_policy_beats_static_under_load():
    static, _, _ = run("static", seed=1)
    hpa, decisions, ctl = run("hpa", seed=1)
    assert len(decisions) == int(HOUR_HALF / 30)
    assert any(d.acted for d in decisions)
    assert hpa.p99_ms < static.p99_ms


def test_runs_are_reproducible_from_the_seed():
    a = run("threshold", seed=3)
    b = run("threshold", seed=3)
    assert [d.action for d in a[1]] == [d.action for d in b[1]]
    assert a[0].p99_ms == b[0].p99_ms and a[0].completed == b[0].completed


def test_learning_loop_fills_memory_and_retrieves(tmp_path):
    _, decisions, ctl = run("threshold", seed=5, tmp_path=tmp_path)
    assert ctl.counters.stored > 0
    assert ctl.counters.probes > 0
    assert any(d.retrieved for d in decisions[10:])
    assert all(d.timings_ms["retrieve"] >= 0 for d in decisions)
