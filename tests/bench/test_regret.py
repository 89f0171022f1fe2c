"""Regret decomposition (sair_ray.bench.regret): the terms are finite, ordered by
construction, and the chosen action's counterfactual reward is the one the run recorded."""

from __future__ import annotations

import math

from sair_ray.bench.grid import build_grid, make_workload
from sair_ray.bench.regret import (
    RegretResult,
    format_summary,
    regret_run,
    run_regret,
    summarise,
)
from sair_ray.profiles import load_profile

APP = "nlp_analysis"


def _run(method: str, rounds: int = 4):
    profile = load_profile(APP)
    workload = make_workload(profile, "poisson", 600.0)
    return regret_run(profile, workload, 1, method, 600 / 3600, pattern="poisson",
                      horizon_s=60.0, max_rounds=rounds)


def test_rule_regret_terms_are_finite_and_ordered(tmp_path):
    run = _run("sair-retrieval")
    assert len(run.records) == 4
    for r in run.records:
        for k in ("chosen_reward", "best_offered_reward", "best_searched_reward",
                  "coverage_gap", "selection_error", "regret", "chosen_horizon_p99_ms",
                  "chosen_horizon_usd"):
            assert math.isfinite(r[k]), (k, r)
        assert r["coverage_gap"] >= 0          # the searched pool holds the offered one
        if r["chosen_offered"]:
            assert r["selection_error"] >= 0   # the choice is one of the offered
        assert r["regret"] == r["coverage_gap"] + r["selection_error"] or math.isclose(
            r["regret"], r["coverage_gap"] + r["selection_error"], abs_tol=1e-12)
        assert r["searched"] >= r["offered"] + 10 and r["alternatives"] >= 10
        if not math.isnan(r["cost_coverage_gap"]):
            assert r["cost_coverage_gap"] >= 0
    # the chosen action replayed on a fork earns exactly what the run recorded next round
    checked = [r for r in run.records if not math.isnan(r["reward_check"])]
    assert len(checked) == 3
    assert all(r["reward_check"] == r["chosen_reward"] for r in checked)
    rows = summarise(run.records)
    assert len(rows) == 1 and rows[0]["rounds"] == 4 and rows[0]["coverage_gap"] >= 0
    assert rows[0]["reward_check_max_err"] == 0.0
    assert "| nlp_analysis | poisson | sair-retrieval | 4 |" in format_summary(rows)
    res = RegretResult([run])
    paths = res.write(tmp_path)
    assert all(p.exists() for p in paths) and "actions played" in res.format()


def test_a_baseline_is_measured_too_through_the_grid():
    seen = []
    res = run_regret(build_grid([APP], ["burst"], ["hpa"], [2], hours=0.1), horizon_s=60.0,
                     max_rounds=2, on_run=seen.append)
    (run,) = res.runs
    assert seen == [run] and run.method == "hpa" and run.pattern == "burst"
    assert [r["source"] for r in run.records] == ["policy:hpa"] * 2
    assert all(r["coverage_gap"] >= 0 and math.isfinite(r["selection_error"])
               for r in run.records)
