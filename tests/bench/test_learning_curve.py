"""benchmarks/bench_learning_curve.py --quick: both arms run, every period is reported and
the files are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sair_ray.bench.grid import BURST_PERIOD_S
from tests.scripts import load_benchmark


def _load():
    return load_benchmark("bench_learning_curve")


def test_learning_curve_quick_mode(tmp_path: Path) -> None:
    bench = _load()
    res = bench.main(["--quick", "--out", str(tmp_path)])
    runs = res["runs"]
    assert {r["arm"] for r in runs} == {"learning", "no learning"}
    assert {r["overrides"]["learning.enabled"] for r in runs} == {True, False}
    for r in runs:
        # 0.5 h of burst: 3 whole periods of the workload's own length
        assert r["period_s"] == BURST_PERIOD_S
        assert [p["period"] for p in r["periods"]] == [1, 2, 3]
        for p in r["periods"]:
            assert 0.0 <= p["attainment"] <= 1.0 and p["requests"] > 0
            assert p["cost_usd"] > 0 and p["windows"] == 20
            assert 0 <= p["missed_windows"] <= p["windows"]
    md = (tmp_path / "results.md").read_text()
    assert "Command: `python benchmarks/bench_learning_curve.py --quick" in md
    assert "| learning |" in md and "| no learning |" in md
    assert "| 1 | 0:00–0:10 |" in md and "**image_classification**" in md
    assert len(res["verdicts"]) == 1
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 2 and "T" in data["generated"]
    if res["figure"]:
        assert (tmp_path / "learning_curve.png").stat().st_size > 0
    # --render rewrites the same results.md from results.json, running nothing
    (tmp_path / "results.md").unlink()
    again = bench.main(["--render", str(tmp_path / "results.json")])
    assert again["verdicts"] == res["verdicts"]
    assert (tmp_path / "results.md").read_text() == md


def test_periods_follow_the_workload() -> None:
    bench = _load()
    from sair_ray.workloads import Burst, Poisson

    w = Burst(base=1, spike=2, period_s=300, spike_s=60, phase_s=100)
    assert bench.periods_of(w, 1000) == [(100, 400), (400, 700), (700, 1000)]
    with pytest.raises(ValueError, match="no period"):
        bench.periods_of(Poisson(rate=1), 1000)
    assert bench.hmm(0) == "0:00" and bench.hmm(4 * 3600 - 600) == "3:50"
