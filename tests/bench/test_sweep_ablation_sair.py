"""Target sweep selection, ablation plumbing, the SAIR path of the grid and the escape
counter."""

from __future__ import annotations

import json

import pytest

import sair_ray.bench.grid as grid
from sair_ray.baselines import HPA
from sair_ray.bench import BenchError, Scenario, build_ablation_grid, build_grid, run_one
from sair_ray.bench.checks import allocation_problems, count_escapes
from sair_ray.bench.grid import make_workload, run_scenario, sair_config
from sair_ray.bench.sweep import ATTAINMENT_GOAL, build_sweep, candidates, select
from sair_ray.bench.tuned import load_tuned
from sair_ray.config import ValidatorConfig
from sair_ray.decision import Decision
from sair_ray.profiles import load_profile
from sair_ray.types import Action, StageAllocation, StageDelta
from tests.factories import context, pipeline

APP = "image_classification"


# -- sweep ------------------------------------------------------------------------------
def _row(app, method, settings, pattern, att, cost):
    return {"app": app, "method": method, "settings": json.dumps(settings, sort_keys=True),
            "pattern": pattern, "seed": 1000, "sla_attainment_steady": att,
            "usd_per_1k_effective": cost, "p99_steady_ms": 100.0}


def test_sweep_picks_cheapest_setting_meeting_the_goal_on_every_pattern():
    rows = []
    # 0.5: meets the goal everywhere but dear; 0.7: cheapest qualifier; 0.9: cheaper still
    # but misses the goal on one pattern, so it must not win.
    for target, atts, cost in ((0.5, (1.0, 0.999), 0.30), (0.7, (0.995, 0.99), 0.20),
                               (0.9, (1.0, 0.98), 0.10)):
        for pat, att in zip(("poisson", "burst"), atts, strict=True):
            rows.append(_row(APP, "hpa", {"target": target}, pat, att, cost))
    tuned, summary = select(rows)
    assert tuned == {APP: {"hpa": {"target": 0.7}}}
    chosen = [s for s in summary if s["chosen"]]
    assert len(chosen) == 1 and chosen[0]["attainment_min"] >= ATTAINMENT_GOAL
    assert [s["qualifies"] for s in summary] == [True, True, False]


def test_sweep_without_a_qualifier_takes_the_best_attainment_then_cost():
    rows = [_row(APP, "threshold", {"cpu_p99_ms": 50.0}, "poisson", 0.95, 0.3),
            _row(APP, "threshold", {"cpu_p99_ms": 100.0}, "poisson", 0.97, 0.5),
            _row(APP, "threshold", {"cpu_p99_ms": 200.0}, "poisson", 0.97, 0.4)]
    tuned, _ = select(rows)
    assert tuned[APP]["threshold"] == {"cpu_p99_ms": 200.0}


def test_sweep_grid_uses_the_tuning_seed_and_every_candidate():
    sc = build_sweep([APP], ["poisson", "burst"], hours=0.1, seed=1000)
    cands = candidates(APP)
    assert len(sc) == 2 * (len(cands["hpa"]) + len(cands["threshold"]))
    assert {s.seed for s in sc} == {1000}
    assert {dict(s.settings)["target"] for s in sc if s.method == "hpa"} == {
        0.5, 0.6, 0.7, 0.8, 0.9}
    # SLA-relative thresholds: 10 % of image classification's 1 s SLA is among them
    assert {"cpu_p99_ms": 100.0, "gpu_p99_ms": 100.0} in cands["threshold"]
    with pytest.raises(BenchError, match="'static'"):
        build_sweep([APP], methods=["static"])


def test_tuned_settings_reach_the_baseline(tmp_path):
    f = tmp_path / "tuned.yaml"
    f.write_text("image_classification:\n  hpa: {target: 0.55}\n")
    tuned = load_tuned(f)
    sc = build_grid([APP], ["poisson"], ["hpa", "static"], 1, hours=0.05, tuned=tuned)
    assert dict(sc[0].settings) == {"target": 0.55} and sc[1].settings == ()
    row = run_one(sc[0])
    assert json.loads(row["settings"]) == {"target": 0.55}
    untuned = run_one(build_grid([APP], ["poisson"], ["hpa"], 1, hours=0.05, tuned=None)[0])
    assert json.loads(untuned["settings"]) == {}
    f.write_text("image_classification:\n  hpa: {target: high}\n")
    with pytest.raises(ValueError, match="image_classification.hpa"):
        load_tuned(f)


# -- ablations -----------------------------------------------------------------------------
def test_ablation_grid_adds_full_sair_and_labels_variants():
    sc = build_ablation_grid(["no_icl", "cost_focus"], ["sair-retrieval"], ["poisson"], 2,
                             hours=0.1)
    assert {s.app for s in sc} == {APP}
    assert sorted({s.label for s in sc}) == ["sair-retrieval", "sair-retrieval[cost_focus]",
                                            "sair-retrieval[no_icl]"]
    assert len(sc) == 3 * 2
    with pytest.raises(BenchError, match="'no_such'"):
        build_ablation_grid(["no_such"])
    with pytest.raises(BenchError, match="SAIR methods only"):
        build_grid([APP], methods=["hpa"], variants=["no_icl"])


def test_ablation_config_reaches_the_run(monkeypatch):
    seen = {}

    def fake_policy(sc, cfg, profile, workload):
        seen["method"], seen["cfg"] = sc.method, cfg
        return HPA(validator=cfg.validator)

    monkeypatch.setattr(grid, "make_run_policy", fake_policy)
    row = run_one(Scenario(APP, "poisson", 3, "sair-retrieval", 0.05, "no_bonus"))
    cfg = seen["cfg"]
    assert seen["method"] == "sair-retrieval" and cfg.reward.beta == 0.0 and cfg.seed == 3
    assert cfg.validator == ValidatorConfig()   # §7 limits, not the permissive ones
    assert row["label"] == "sair-retrieval[no_bonus]" and row["variant"] == "no_bonus"
    assert sair_config(0, "no_icl").retrieval.K == 0


# -- the SAIR path -------------------------------------------------------------------------
def _sair_run(seed: int = 0):
    sc = Scenario(APP, "burst", seed, "sair-retrieval", 0.25)
    prof = load_profile(APP)
    cfg = sair_config(seed)
    return run_scenario(sc, prof, make_workload(prof, "burst", 900.0), cfg,
                        HPA(validator=cfg.validator), learn=True)


def test_sair_path_explores_learns_and_never_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))   # the run's memory directory goes here
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    a = _sair_run()
    assert a["rounds"] == 30 and a["probes"] > 0 and a["stored"] > 0
    assert a["validator_escapes"] == 0
    assert 0 <= a["decide_p50_ms"] <= a["decide_p99_ms"] < 1000
    assert list(tmp_path.iterdir()) == []        # the temporary memory is removed
    b = _sair_run()
    keys = ("p99_ms", "completed", "usd_per_1k_effective", "probes", "stored", "actions")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


# -- the escape counter --------------------------------------------------------------------
def _decision(t: float, ctx, action: Action) -> Decision:
    return Decision(round=int(t // 30), time=t, app="imgcls", source="policy:x",
                    context=ctx, action=action, targets=action.apply(ctx.allocation))


def test_escape_counter_flags_limits_steps_cooldowns_and_mismatches():
    p = pipeline()
    v = ValidatorConfig()
    base = context(p)
    up = Action({"preprocess": StageDelta(replicas=1)})
    after_up = context(p, alloc=up.apply(base.allocation))
    ok = [_decision(0, base, up), _decision(60, after_up, Action())]
    assert count_escapes(ok, p, v) == 0
    # same scale-up 30 s later: inside the 60 s cooldown
    twice = Action({"preprocess": StageDelta(replicas=1)})
    after_twice = context(p, alloc=twice.apply(after_up.allocation))
    assert count_escapes([_decision(0, base, up), _decision(30, after_up, twice),
                          _decision(60, after_twice, Action())], p, v) == 1
    # a step of 3 replicas
    big = Action({"preprocess": StageDelta(replicas=3)})
    assert allocation_problems(base.allocation, big, p, v)
    # 9 replicas: outside [1, 8]
    many = context(p, alloc={**base.allocation, "preprocess": StageAllocation(8, 1000, 1024)})
    assert any("limits" in x for x in allocation_problems(many.allocation, up, p, v))
    # the backend executed something else than the validated action
    assert count_escapes([_decision(0, base, up), _decision(60, base, Action())], p, v) == 1
    # GPUs: 3 inference replicas on a 2-GPU cluster
    gpu = Action({"inference": StageDelta(replicas=2)})
    assert any("cluster" in x for x in allocation_problems(base.allocation, gpu, p, v))
