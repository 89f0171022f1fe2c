"""`sair bench --config`: SAIR runs read a config file (the way to bench a policy endpoint),
a bad file is one clear error, and baselines ignore it."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from sair_ray.bench import Scenario, run_one
from sair_ray.cli import app

runner = CliRunner()
APP = "nlp_analysis"


def test_config_file_reaches_sair_runs_as_the_same_override_would(tmp_path):
    cfg = tmp_path / "sair.yaml"
    cfg.write_text("learning: {enabled: false}\n")
    res = runner.invoke(app, ["bench", "--apps", APP, "--patterns", "poisson", "--methods",
                              "sair-retrieval,threshold", "--seeds", "1", "--hours", "0.05",
                              "--workers", "1", "--config", str(cfg), "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet")
            .to_pylist()}
    same = run_one(Scenario(APP, "poisson", 0, "sair-retrieval", 0.05, "no_learning"))
    for k in ("p99_steady_ms", "usd_per_1k_effective", "sla_attainment_steady"):
        assert rows["sair-retrieval"][k] == same[k], k
    base = run_one(Scenario(APP, "poisson", 0, "threshold", 0.05,
                            settings=(("cpu_p99_ms", 25.0), ("gpu_p99_ms", 25.0))))
    assert rows["threshold"]["p99_steady_ms"] == base["p99_steady_ms"]


def test_bad_config_file_is_one_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("learning: {enabled: maybe}\n")
    res = runner.invoke(app, ["bench", "--apps", APP, "--methods", "sair-retrieval",
                              "--config", str(cfg), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "--config" in res.output and "learning.enabled" in res.output
    missing = runner.invoke(app, ["bench", "--apps", APP, "--config",
                                  str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "none.yaml" in missing.output
