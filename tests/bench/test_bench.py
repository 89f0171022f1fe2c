"""`sair bench`: the grid runs end to end, names bad values, and is reproducible."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sair_ray.bench import (
    BenchError,
    build_grid,
    make_workload,
    run_grid,
    run_one,
)
from sair_ray.bench.report import summarise, to_markdown
from sair_ray.cli import app
from sair_ray.profiles import load_profile

runner = CliRunner()
APP = "image_classification"


def test_tiny_grid_end_to_end_via_cli(tmp_path):
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--apps", APP, "--patterns", "poisson,burst",
                              "--methods", "static", "--methods", "hpa", "--seeds", "1",
                              "--hours", "0.1", "--out", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 4
    assert {(r["pattern"], r["method"]) for r in table} == {
        (p, m) for p in ("poisson", "burst") for m in ("static", "hpa")}
    for r in table:
        assert r["app"] == APP and r["seed"] == 0 and r["rounds"] == 12
        assert r["completed"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert 0 <= r["sla_attainment"] <= 1
        assert r["usd_per_1k_effective"] <= r["usd_per_1k_billable"] + 1e-12
    static = next(r for r in table if r["method"] == "static")
    assert static["replicas_mean"] == len(load_profile(APP).pipeline.stages)
    md = (out / "results.md").read_text()
    rows = [ln for ln in md.splitlines()
            if ln.startswith(f"| {APP} | poisson |") or ln.startswith(f"| {APP} | burst |")]
    assert len(rows) == 4
    # the tuned HPA target is recorded, static has no settings
    assert f'| {APP} | hpa | `{{"target": ' in md and f"| {APP} | static | `" not in md
    assert {r["settings"] for r in table if r["method"] == "static"} == {"{}"}
    assert "| poisson | hpa | 1 |" in md


@pytest.mark.parametrize("flag,bad,allowed", [("--methods", "hpx", "ray_serve"),
                                              ("--apps", "nope", "nlp_analysis"),
                                              ("--patterns", "sine", "burst")])
def test_unknown_value_exits_2_naming_it(flag, bad, allowed, tmp_path):
    res = runner.invoke(app, ["bench", flag, bad, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert repr(bad) in res.output and allowed in res.output
    assert not (tmp_path / "x").exists()


def test_results_are_reproducible_for_a_seed():
    sc = build_grid([APP], ["ramp"], ["threshold", "oracle"], [3], hours=0.1)
    a = run_grid(sc, workers=1).rows
    b = run_grid(sc, workers=2).rows
    keys = ("p99_ms", "p50_ms", "sla_attainment", "completed", "drops",
            "usd_per_1k_effective", "replicas_by_stage")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]
    other = run_one(build_grid([APP], ["ramp"], ["threshold"], [4], hours=0.1)[0])
    assert other["completed"] != a[0]["completed"]


def test_patterns_follow_the_default_mean_rate():
    prof = load_profile(APP)
    r = prof.default_workload().mean_rate(0, 3600)
    assert make_workload(prof, "poisson", 3600).mean_rate(0, 3600) == pytest.approx(r)
    assert make_workload(prof, "ramp", 3600).mean_rate(0, 3600) == pytest.approx(0.9 * r)
    assert make_workload(prof, "burst", 3600).mean_rate(0, 3600) == pytest.approx(0.98 * r)
    with pytest.raises(BenchError, match="'sine'.*poisson"):
        make_workload(prof, "sine", 3600)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_keeps_finished_runs(workers):
    sc = build_grid([APP], ["poisson", "ramp", "burst"], ["static", "hpa", "threshold", "vpa"],
                    1, hours=0.05)
    seen = []

    def stop_after_first(s, row):
        seen.append(s)
        if len(seen) == 1:
            raise KeyboardInterrupt

    res = run_grid(sc, workers=workers, on_result=stop_after_first)
    assert res.interrupted and 1 <= len(res.rows) < len(sc)
    if workers == 1:
        assert len(res.rows) == 1 and res.rows[0]["method"] == "static"
    assert summarise(res.rows)[0]["seeds"] == 1
    assert res.rows[0]["method"] in to_markdown(res.rows)


def test_bad_grid_arguments():
    with pytest.raises(BenchError, match="hours"):
        build_grid([APP], hours=0)
    with pytest.raises(BenchError, match="seed"):
        build_grid([APP], seeds=0)
    assert len(build_grid()) == 4 * 3 * 7   # 6 baselines + sair-retrieval


def test_steady_state_attainment_counts_failures_as_misses():
    from sair_ray.bench.grid import _steady_attainment

    assert _steady_attainment(90, 10, 0, 10) == 0.9  # the 10 drops are the 10 violations
    assert _steady_attainment(100, 0, 0, 0) == 1.0
    assert _steady_attainment(0, 5, 0, 5) == 0.0
    assert _steady_attainment(0, 0, 0, 0) != _steady_attainment(0, 0, 0, 0)  # nan


def test_figures_are_written_as_png(tmp_path):
    from sair_ray.bench import figures

    rows = []
    for app_name in ("image_classification", "video_analysis"):
        for pattern in ("poisson", "burst"):
            for method, p99, usd in (("static", 5000.0, 0.05), ("hpa", 150.0, 0.02)):
                rows.append({"app": app_name, "pattern": pattern, "method": method, "seed": 0,
                             "p99_ms": p99, "p50_ms": 1.0, "sla_attainment": 1.0,
                             "drops": 0, "p99_steady_ms": p99, "sla_attainment_steady": 1.0,
                             "drops_steady": 0, "usd_per_1k_billable": usd,
                             "usd_per_1k_effective": usd, "replicas_mean": 3.0,
                             "wall_s": 0.1})
    paths = figures.write_figures(rows, tmp_path, {"image_classification": 1000.0})
    assert [p.name for p in paths] == ["p99_steady.png", "cost_effective.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
