"""`sair bench --log-dir`: a tiny real bench run keeps its controller's decision log, and
`sair decisions`, `sair report` and `sair top` read it like a live app's."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.report import load

runner = CliRunner()
APP, PATTERN, METHOD = "image_classification", "burst", "sair-retrieval"
ROUNDS = 6  # 0.05 h of 30 s rounds
ENV = {"COLUMNS": "200"}


def _bench(out: Path, logs: Path) -> None:
    res = runner.invoke(app, ["bench", "--apps", APP, "--patterns", PATTERN, "--methods",
                              METHOD, "--seeds", "1", "--hours", "0.05", "--workers", "1",
                              "--out", str(out), "--log-dir", str(logs)], env=ENV)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("bench")
    _bench(base / "out", base / "logs")
    _bench(base / "out", base / "logs")  # a rerun replaces the log, never appends to it
    return base / "logs" / APP / PATTERN / METHOD / "seed0"


def test_each_run_writes_one_complete_log(run_dir):
    logs = list(run_dir.parents[3].rglob("*.jsonl"))
    assert logs == [run_dir / "decisions.jsonl"]
    recs = load(logs[0])
    assert [d["round"] for d in recs.decisions] == list(range(ROUNDS))
    assert {d["app"] for d in recs.decisions} == {APP}
    assert sum(d.get("reward") is not None for d in recs.decisions) == ROUNDS - 1
    assert any(d["source"] == f"policy:{METHOD}" for d in recs.decisions)


def test_decisions_explains_the_bench_run(run_dir):
    res = runner.invoke(app, ["decisions", str(run_dir), "--last", "0"], env=ENV)
    assert res.exit_code == 0, res.output
    assert f"{APP}: {ROUNDS} rounds" in res.output
    assert res.output.count("╭─ round ") == ROUNDS
    assert "reward: total" in res.output


def test_report_renders_the_bench_run(run_dir, tmp_path):
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path)], env=ENV)
    assert res.exit_code == 0, res.output
    page = (tmp_path / "report.html").read_text()
    assert f"<th>rounds</th><td>{ROUNDS}</td>" in page
    assert page.count('src="data:image/png;base64,') == 5
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "latency.png", "allocation.png", "reward.png", "decisions.png", "pareto.png"}


def test_top_shows_the_bench_runs_last_round(run_dir):
    res = runner.invoke(app, ["top", str(run_dir), "--once"], env=ENV)
    assert res.exit_code == 0, res.output
    assert f"policy {METHOD} · {ROUNDS} rounds" in res.output
    assert f"last decision: round {ROUNDS - 1}" in res.output


def test_log_dir_is_refused_with_sweep(tmp_path):
    res = runner.invoke(app, ["bench", "--sweep", "--log-dir", str(tmp_path)], env=ENV)
    assert res.exit_code == 2 and "--log-dir cannot be combined with --sweep" in res.output
