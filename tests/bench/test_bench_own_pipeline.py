"""`sair bench` on a pipeline and a trace of one's own: a profile file in --apps and a CSV
trace in --workload give the same results, tables and figures as the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from sair_ray.bench import BenchError, build_grid, resolve_workloads
from sair_ray.bench.grid import resolve_apps
from sair_ray.cli import app
from sair_ray.profiles import load_profile
from sair_ray.profiles.loader import PROFILE_PACKAGE

runner = CliRunner()
SHIPPED = "text_generation"


def write_profile(tmp_path: Path, name: str = "my_pipeline", *, drop_sim: bool = False,
                  drop_workload: bool = False) -> Path:
    """A copy of a shipped profile with its first two stages and a new name."""
    import importlib.resources

    text = (importlib.resources.files(PROFILE_PACKAGE) / f"{SHIPPED}.yaml").read_text()
    data = yaml.safe_load(text)
    data["name"] = name
    data["stages"] = data["stages"][:2]
    if drop_sim:
        del data["stages"][1]["sim"]
    if drop_workload:
        del data["workload"]
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def write_trace(tmp_path: Path, rows: int = 200, span_s: float = 120.0) -> Path:
    """A trace in the Azure LLM trace's format (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(rows):
        t = i * span_s / rows
        lines.append(f"2023-11-16 18:{17 + int(t // 60):02d}:{t % 60:010.7f},"
                     f"{500 + 37 * i % 900},{5 + 13 * i % 60}")
    p = tmp_path / "my_trace.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_own_profile_and_trace_end_to_end_via_cli(tmp_path):
    prof, trace = write_profile(tmp_path), write_trace(tmp_path)
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--apps", str(prof), "--methods", "static,hpa",
                              "--workload", f"trace:{trace},rate_scale=1.5,loop=true",
                              "--seeds", "1", "--hours", "0.05", "--out", str(out),
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert {(r["app"], r["pattern"], r["method"]) for r in table} == {
        ("my_pipeline", "trace:my_trace", m) for m in ("static", "hpa")}
    for r in table:
        assert r["profile"] == str(prof.resolve())
        spec = json.loads(r["workload"])
        assert spec == {"kind": "trace", "path": str(trace.resolve()), "rate_scale": 1.5,
                        "loop": True}
        assert set(json.loads(r["replicas_by_stage"])) == {"tokenize", "generate"}
        assert r["rounds"] == 6 and r["completed"] > 0
        # 200 requests per 120 s, x 1.5, looped over 180 s: ~450 arrivals
        assert 350 <= r["arrivals"] <= 550
        assert r["settings"] == "{}"   # the committed tuning is for the shipped profiles
    md = (out / "results.md").read_text()
    assert "| my_pipeline | trace:my_trace | static | 1 |" in md
    assert "| my_pipeline | trace:my_trace | hpa | 1 |" in md
    assert f"- app my_pipeline: profile `{prof.resolve()}`" in md
    assert "- workload trace:my_trace: `" in md and "Azure Public Dataset" not in md
    assert "| my_pipeline | trace:my_trace | static |" in res.output
    for png in ("p99_steady.png", "cost_effective.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_grid_names_and_specs(tmp_path):
    prof, trace = write_profile(tmp_path), write_trace(tmp_path)
    wfile = tmp_path / "steady.yaml"
    wfile.write_text("kind: poisson\nrate: 3\n")
    named = tmp_path / "replay.json"
    named.write_text(json.dumps({"name": "azure-like", "kind": "trace",
                                 "path": trace.name, "loop": True}))
    sc = build_grid([str(prof), "nlp_analysis"], methods=["static"], hours=0.05,
                    workloads=["poisson", f"trace:{trace}", str(wfile), str(named),
                               "burst:base=1,spike=4,period_s=60,spike_s=10"])
    assert [(s.app, s.pattern) for s in sc[:5]] == [
        ("my_pipeline", "poisson"), ("my_pipeline", "trace:my_trace"),
        ("my_pipeline", "poisson:steady"), ("my_pipeline", "azure-like"),
        ("my_pipeline", "burst:base=1,spike=4,period_s=60,spike_s=10")]
    assert sc[0].workload == "" and json.loads(sc[2].workload) == {"kind": "poisson",
                                                                   "rate": 3}
    # a relative trace path in a workload file is relative to the file, kept absolute
    assert json.loads(sc[3].workload)["path"] == str(trace.resolve())
    assert {s.profile for s in sc if s.app == "nlp_analysis"} == {""}
    # a shipped pattern given as a workload is the same scenario as with --patterns
    assert build_grid(["nlp_analysis"], ["ramp"], ["hpa"]) == build_grid(
        ["nlp_analysis"], methods=["hpa"], workloads=["ramp"])
    assert resolve_apps([str(prof), str(prof)])[0].name == "my_pipeline"


def test_azure_trace_is_credited(tmp_path):
    from sair_ray.workloads import find_trace

    if find_trace() is None:
        pytest.skip("the Azure trace is not in ../shared/data")
    (w,) = resolve_workloads(["trace:azure,rate_scale=0.5"])
    assert w.name == "trace:azure" and "Azure Public Dataset" in w.credit
    from sair_ray.bench.report import sources_markdown

    md = sources_markdown([{"app": "a", "pattern": w.name, "workload": w.spec}])
    assert "Azure Public Dataset" in md


def bench_err(*args: str) -> str:
    res = runner.invoke(app, ["bench", *args])
    assert res.exit_code == 2, res.output
    return " ".join(res.output.split())


def test_errors_name_the_problem_and_the_fix(tmp_path):
    prof, trace = write_profile(tmp_path), write_trace(tmp_path)
    out = ["--out", str(tmp_path / "x")]
    msg = bench_err("--apps", str(tmp_path / "nope.yaml"), *out)
    assert "no such profile file" in msg and "nope.yaml" in msg
    clash = write_profile(tmp_path, "nlp_analysis")
    msg = bench_err("--apps", f"{clash},nlp_analysis", *out)
    assert "both named 'nlp_analysis'" in msg and "name:" in msg
    nosim = write_profile(tmp_path, "no_sim", drop_sim=True)
    msg = bench_err("--apps", str(nosim), *out)
    assert "stages[1].sim" in msg and "docs/simulator.md" in msg
    noload = write_profile(tmp_path, "no_load", drop_workload=True)
    msg = bench_err("--apps", str(noload), *out)
    assert "no default workload" in msg and "--workload" in msg
    msg = bench_err("--apps", str(prof), "--workload", f"trace:{trace},rate_scal=2", *out)
    assert "rate_scal: unknown key" in msg and "rate_scale" in msg
    msg = bench_err("--workload", f"trace:{tmp_path / 'missing.csv'}", *out)
    assert "cannot read trace" in msg and "missing.csv" in msg
    msg = bench_err("--workload", "sine", *out)
    assert "'sine'" in msg and "trace:" in msg and "poisson" in msg
    msg = bench_err("--patterns", "poisson", "--workload", f"trace:{trace}", *out)
    assert "--patterns or --workload" in msg
    other = tmp_path / "sub"
    other.mkdir()
    msg = bench_err("--workload", f"trace:{trace}", "--workload",
                    f"trace:{write_trace(other)}", *out)
    assert "both named 'trace:my_trace'" in msg
    # a trace that ends before the run does is worth a warning (here before a bad method)
    msg = bench_err("--apps", str(prof), "--workload", f"trace:{trace}", "--methods", "hpx",
                    *out)
    assert "ends at 120 s" in msg and "loop=true" in msg and "'hpx'" in msg
    assert not (tmp_path / "x").exists()
    with pytest.raises(BenchError, match="no default workload"):
        build_grid([str(noload)], ["poisson"])
    assert load_profile(prof).name == "my_pipeline"
