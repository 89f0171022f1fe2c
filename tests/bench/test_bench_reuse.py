"""`sair bench --reuse`: a re-run of SAIR keeps the baseline runs of earlier results
(the rows a re-run would write: the simulator is deterministic), re-runs SAIR, and says
clearly when there is nothing to reuse."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from sair_ray.bench import Scenario
from sair_ray.bench.grid import reusable_rows
from sair_ray.cli import app

runner = CliRunner()
GRID = ["bench", "--apps", "nlp_analysis", "--patterns", "poisson", "--methods",
        "static,sair-retrieval", "--seeds", "1", "--hours", "0.05", "--workers", "1"]


def _rows(d):
    return pq.read_table(d / "results.parquet").to_pylist()


def test_reuse_keeps_the_baseline_rows_and_reruns_sair(tmp_path):
    first = runner.invoke(app, [*GRID, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*GRID, "--out", str(tmp_path / "b"), "--reuse",
                                str(tmp_path / "a")])
    assert again.exit_code == 0, again.output
    assert "reusing 1 baseline runs of 2" in again.output
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["method"] for r in b] == ["static", "sair-retrieval"]
    assert b[0] == a[0]                                   # taken as it was, wall time too
    assert b[1]["p99_ms"] == a[1]["p99_ms"]               # SAIR re-run: deterministic


def test_only_the_same_scenario_is_reused():
    # written before the config field existed: a missing field has its default
    row = {"app": "nlp_analysis", "pattern": "poisson", "seed": 0, "method": "static",
           "hours": 0.05, "variant": "", "settings": "{}", "profile": "", "workload": ""}
    grid = [Scenario("nlp_analysis", "poisson", 0, "static", 0.05),
            Scenario("nlp_analysis", "poisson", 1, "static", 0.05),
            Scenario("nlp_analysis", "poisson", 0, "static", 0.1),
            Scenario("nlp_analysis", "poisson", 0, "sair-retrieval", 0.05)]
    sair_row = {**row, "method": "sair-retrieval"}
    assert list(reusable_rows(grid, [row, sair_row])) == [0]


def test_nothing_to_reuse_is_one_clear_error(tmp_path):
    res = runner.invoke(app, [*GRID, "--out", str(tmp_path / "o"), "--reuse",
                              str(tmp_path / "none")])
    assert res.exit_code == 2 and "no results.parquet" in " ".join(res.output.split())
    sweep = runner.invoke(app, ["bench", "--sweep", "--reuse", str(tmp_path),
                                "--out", str(tmp_path / "o")])
    assert sweep.exit_code == 2 and "--reuse cannot be combined" in " ".join(sweep.output.split())
