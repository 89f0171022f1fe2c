"""The bottleneck-detection evaluation: metrics on a hand-checked example, ground truth
that comes from the construction (and agrees with the simulator), and the CLI mode."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sair_ray.backends.sim import SimBackend
from sair_ray.bench.bottleneck_eval import (
    CLASSES,
    RHO_OK_MAX,
    RHO_OVER_MIN,
    classification_metrics,
    make_scenario,
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


def test_cli_bottleneck_eval_writes_tables(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--bottleneck-eval", "--n", "4", "--workers",
                                   "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "scenarios.parquet").to_pylist()
    assert len(rows) == 4 and {r["truth"] for r in rows} == set(CLASSES)
    assert {r["predicted"] for r in rows} <= {*CLASSES, "none"}
    metrics = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert [r["class"] for r in metrics] == [*CLASSES, "overall"]
    md = (tmp_path / "results.md").read_text()
    assert "| **overall accuracy** |" in md and "Confusion matrix" in md


def test_cli_rejects_combined_modes(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--sweep", "--bottleneck-eval", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 2 and "cannot be combined" in res.output
