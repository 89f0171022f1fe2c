"""The bottleneck-detection evaluation: metrics on a hand-checked example, ground truth
that comes from the construction (and agrees with the simulator), the hard set (near the
boundary, noisy, migrated; its own seeds) and the CLI mode."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sair_ray.backends.sim import SimBackend
from sair_ray.bench.bottleneck_eval import (
    CLASSES,
    HARD_CATEGORIES,
    HARD_SEED_OFFSET,
    NOISE_SIGMA,
    RHO_HARD_OK_MAX,
    RHO_HARD_OK_MIN,
    RHO_HARD_OVER_MAX,
    RHO_HARD_OVER_MIN,
    RHO_OK_MAX,
    RHO_OVER_MIN,
    WINDOW_S,
    _noisy,
    classification_metrics,
    evaluate,
    fluid_rho,
    hard_apps,
    make_hard_scenario,
    make_scenario,
    migration_steps,
    run_scenario,
    stage_capacity,
    stage_class,
)
from sair_ray.cli import app
from sair_ray.config import ValidatorConfig
from sair_ray.profiles import load_profile
from sair_ray.validator import is_feasible
from sair_ray.workloads import Poisson


def test_metrics_on_a_hand_checked_confusion_matrix():
    truth = ["pre", "pre", "pre", "inference", "inference", "post", "multiple", "multiple"]
    pred = ["pre", "pre", "inference", "inference", "none", "post", "multiple", "inference"]
    m = classification_metrics(truth, pred)
    pc = m["per_class"]
    # pre: 2 of 2 "pre" answers right, 2 of 3 pre scenarios found
    assert pc["pre"]["precision"] == 1.0 and pc["pre"]["recall"] == pytest.approx(2 / 3)
    assert pc["pre"]["f1"] == pytest.approx(0.8)
    # inference: 1 of 3 "inference" answers right, 1 of 2 found
    assert pc["inference"]["precision"] == pytest.approx(1 / 3)
    assert pc["inference"]["recall"] == 0.5 and pc["inference"]["f1"] == pytest.approx(0.4)
    assert pc["post"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert pc["multiple"]["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.4 + 1 + 2 / 3) / 4)
    assert m["confusion"]["inference"] == {"pre": 0, "inference": 1, "post": 0,
                                           "multiple": 0, "none": 1}
    assert m["labels"] == [*CLASSES, "none"]
    with pytest.raises(ValueError, match="truth 'gpu'"):
        classification_metrics(["gpu"], ["pre"])


@pytest.mark.parametrize("index", range(8))
def test_scenarios_are_built_to_their_class(index):
    sc = make_scenario(index, seed=5)
    assert sc.truth == CLASSES[index % 4]
    pipe = load_profile(sc.app).pipeline
    classes = {stage_class(pipe, s) for s in sc.stages}
    assert classes == ({"pre", "inference", "post"} & classes if sc.truth == "multiple"
                       else {sc.truth})
    assert len(sc.stages) == (2 if sc.truth == "multiple" else 1)
    for st in pipe.stages:
        assert is_feasible(sc.allocation[st.name], st.limits(ValidatorConfig()))
        if st.name in sc.stages:
            assert sc.rho[st.name] >= RHO_OVER_MIN - 1e-6
        else:
            assert sc.rho[st.name] <= RHO_OK_MAX + 1e-6
    assert make_scenario(index, seed=5) == sc                 # deterministic


def test_constructed_capacity_matches_the_simulator():
    """The truth rests on `stage_capacity`; an overloaded stage must pass on about that
    many requests per second in the simulator."""
    for index in (0, 1, 4, 5):          # pre and inference scenarios of two apps
        sc = make_scenario(index, seed=2)
        prof = load_profile(sc.app)
        (stage,) = sc.stages
        i = prof.pipeline.stage_names.index(stage)
        cap = stage_capacity(prof.pipeline.stages[i], prof.models[i], sc.allocation[stage])
        backend = SimBackend(prof, Poisson(rate=sc.rate), seed=1, allocation=sc.allocation)
        backend.advance_to(240.0)
        measured = backend.window(120.0, 240.0).stages[i].throughput_rps
        assert measured == pytest.approx(cap, rel=0.1), (sc.app, stage)


def _capacities(sc):
    prof = load_profile(sc.app)
    return {s.name: stage_capacity(s, m, sc.allocation[s.name])
            for s, m in zip(prof.pipeline.stages, prof.models, strict=True)}


def test_hard_set_uses_its_own_seeds_and_apps():
    assert hard_apps() == ("image_classification", "nlp_analysis", "video_analysis")
    sc = make_hard_scenario(0, seed=0)
    assert sc.seed == HARD_SEED_OFFSET and sc.eval_set == "hard"
    assert make_scenario(0, seed=0).seed == 0
    with pytest.raises(ValueError, match="easy seeds"):
        evaluate(1, HARD_SEED_OFFSET, eval_set="easy")
    with pytest.raises(ValueError, match="eval_set"):
        evaluate(1, 0, eval_set="medium")


@pytest.mark.parametrize("index", range(24))
def test_hard_scenarios_sit_near_the_boundary_with_fluid_truth(index):
    sc = make_hard_scenario(index, seed=3)
    assert sc.truth == CLASSES[index % 4]
    assert sc.category == HARD_CATEGORIES[index % 3]
    pipe = load_profile(sc.app).pipeline
    rho = fluid_rho(pipe, _capacities(sc), sc.rate)
    assert rho == pytest.approx(sc.rho)
    # the truth: exactly the stages whose offered load exceeds their capacity
    assert {s for s, r in rho.items() if r > 1} == set(sc.stages)
    for s, r in rho.items():
        if s in sc.stages:
            assert RHO_HARD_OVER_MIN - 1e-9 <= r <= RHO_HARD_OVER_MAX + 1e-9
        else:
            assert RHO_HARD_OK_MIN - 1e-9 <= r <= RHO_HARD_OK_MAX + 1e-9
    assert len(sc.stages) == (2 if sc.truth == "multiple" else 1)
    for st in pipe.stages:
        assert is_feasible(sc.allocation[st.name], st.limits(ValidatorConfig()))
    assert (sc.noise == NOISE_SIGMA) == (sc.category == "noisy")
    if sc.category == "migrated":
        assert sc.prev_allocation is not None and sc.prev_stages
        assert not set(sc.prev_stages) & set(sc.stages)       # the bottleneck moved
        prev = {s.name: stage_capacity(s, m, sc.prev_allocation[s.name])
                for s, m in zip(pipe.stages, load_profile(sc.app).models, strict=True)}
        prev_rho = fluid_rho(pipe, prev, sc.rate)
        assert {s for s, r in prev_rho.items() if r > 1} == set(sc.prev_stages)
        for st in pipe.stages:
            assert is_feasible(sc.prev_allocation[st.name], st.limits(ValidatorConfig()))
    else:
        assert sc.prev_allocation is None and not sc.prev_stages
    assert make_hard_scenario(index, seed=3) == sc            # deterministic


def test_hard_capacity_is_exact_enough_for_the_guard_band():
    """The 2 % guard band around rho = 1 rests on `stage_capacity` being right within
    it: a hard bottleneck (rho 1.02-1.2) passes on its computed capacity within 1 %."""
    for index in (0, 1, 12, 13):      # pre and inference of image classification and NLP
        sc = make_hard_scenario(index, seed=0)
        assert sc.app in ("image_classification", "nlp_analysis")
        prof = load_profile(sc.app)
        (stage,) = sc.stages
        i = prof.pipeline.stage_names.index(stage)
        cap = _capacities(sc)[stage]
        backend = SimBackend(prof, Poisson(rate=sc.rate), seed=1, allocation=sc.allocation)
        backend.advance_to(300.0)
        measured = backend.window(100.0, 300.0).stages[i].throughput_rps
        assert measured == pytest.approx(cap, rel=0.01), (sc.app, stage)


def test_migration_switches_allocations_at_the_window_boundary():
    sc = next(s for s in (make_hard_scenario(i, seed=1) for i in range(2, 40, 3))
              if any(s.allocation[k].replicas > s.prev_allocation[k].replicas
                     for k in s.allocation)
              and any(s.allocation[k].replicas < s.prev_allocation[k].replicas
                      for k in s.allocation))
    prof = load_profile(sc.app)
    backend = SimBackend(prof, Poisson(rate=sc.rate), seed=1, allocation=sc.prev_allocation)
    steps = migration_steps(sc, prof)
    assert steps and steps == sorted(steps)
    t0 = sc.observe_at - WINDOW_S
    for at, st in (s for s in steps if s[0] < t0):   # replicas added: one cold start early
        backend.apply({st: sc.allocation[st]}, at)
    backend.advance_to(t0 - 0.01)
    for st in prof.pipeline.stage_names:
        assert backend.sim.serving_replicas(st) == sc.prev_allocation[st].replicas
    for at, st in (s for s in steps if s[0] >= t0):  # replicas removed: at the boundary
        assert at == t0
        backend.apply({st: sc.allocation[st]}, at)
    backend.advance_to(t0 + 0.01)
    for st in prof.pipeline.stage_names:
        assert backend.sim.serving_replicas(st) == sc.allocation[st].replicas


def test_noise_perturbs_every_observed_metric():
    sc = make_hard_scenario(0, seed=0)
    backend = SimBackend(load_profile(sc.app), Poisson(rate=sc.rate), seed=1,
                         allocation=sc.allocation)
    backend.advance_to(120.0)
    ctx = backend.observe(90.0, 120.0)
    noisy = _noisy(ctx, np.random.default_rng(0), NOISE_SIGMA)
    assert noisy == _noisy(ctx, np.random.default_rng(0), NOISE_SIGMA)   # seeded
    for o, n in zip(ctx.stages, noisy.stages, strict=True):
        for f in ("util", "p99_ms", "throughput_rps"):
            ratio = getattr(n, f) / getattr(o, f)
            assert ratio != 1.0 and abs(np.log(ratio)) < 5 * NOISE_SIGMA
        assert n.queue == round(n.queue) and (n.replicas, n.cpu_m) == (o.replicas, o.cpu_m)
    assert noisy.arrival_rate != ctx.arrival_rate and noisy.sla_ms == ctx.sla_ms


def test_hard_rows_name_their_category_and_previous_bottleneck():
    rows = [run_scenario(make_hard_scenario(i, seed=0)) for i in (1, 2)]
    assert [r["category"] for r in rows] == ["noisy", "migrated"]
    assert rows[0]["prev_truth_stages"] == [] and not rows[0]["named_previous"]
    assert rows[1]["prev_truth_stages"] and rows[1]["eval_set"] == "hard"
    assert rows == [run_scenario(make_hard_scenario(i, seed=0)) for i in (1, 2)]


def test_cli_bottleneck_eval_writes_tables(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--bottleneck-eval", "--n", "4", "--workers",
                                   "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in ("easy", "hard"):           # default: both sets, reported apart
        rows = pq.read_table(tmp_path / name / "scenarios.parquet").to_pylist()
        assert len(rows) == 4 and {r["truth"] for r in rows} == set(CLASSES)
        assert {r["predicted"] for r in rows} <= {*CLASSES, "none"}
        md = (tmp_path / name / "results.md").read_text()
        assert "| **overall accuracy** |" in md and "Confusion matrix" in md
    metrics = pq.read_table(tmp_path / "easy" / "metrics.parquet").to_pylist()
    assert [r["class"] for r in metrics] == [*CLASSES, "overall"]
    hard = pq.read_table(tmp_path / "hard" / "metrics.parquet").to_pylist()
    assert {r["category"] for r in hard} == {"all", *HARD_CATEGORIES}
    assert [r["class"] for r in hard if r["category"] == "all"] == [*CLASSES, "overall"]
    md = (tmp_path / "results.md").read_text()
    assert md.index("## Easy set") < md.index("## Hard set") < md.index("Per category")
    assert "Per category" not in (tmp_path / "easy" / "results.md").read_text()


def test_cli_eval_set_runs_one_set(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--bottleneck-eval", "--eval-set", "hard", "--n",
                                   "3", "--workers", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "easy").exists()
    rows = pq.read_table(tmp_path / "hard" / "scenarios.parquet").to_pylist()
    assert [r["category"] for r in rows] == list(HARD_CATEGORIES)
    assert all(r["seed"] == HARD_SEED_OFFSET for r in rows)
    res = CliRunner().invoke(app, ["bench", "--bottleneck-eval", "--eval-set", "medium",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--eval-set" in res.output


def test_cli_rejects_combined_modes(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--sweep", "--bottleneck-eval", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 2 and "cannot be combined" in res.output
