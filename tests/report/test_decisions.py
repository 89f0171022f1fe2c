"""`sair decisions` on a real controller's log: every round explained, JSON merged, and the
errors a user can make."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.report import LogError, load, resolve
from tests.report.conftest import ROUNDS

runner = CliRunner()


def test_log_merges_each_reward_into_its_decision(sim_run):
    path, decisions, ctl = sim_run
    recs = load(path)
    assert [r["round"] for r in recs.decisions] == list(range(ROUNDS))
    # every round but the last has its reward (seen one round later), equal to the
    # controller's running total
    rewarded = [r["reward"]["total"] for r in recs.decisions if r.get("reward")]
    assert len(rewarded) == ROUNDS - 1 == ctl.counters.rewarded
    assert abs(sum(rewarded) - ctl.counters.reward_sum) < 1e-9
    assert recs.decisions[-1].get("reward") is None


def test_human_output_explains_probe_policy_clamps_and_reward(sim_run):
    path, decisions, _ = sim_run
    res = runner.invoke(app, ["decisions", str(path), "--last", "0"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.count("round ") >= ROUNDS  # one panel per round
    assert "probe" in text and "policy:threshold" in text
    assert "bottleneck: preprocess" in text  # the early backlog is in preprocess
    assert "forced exploration probe" in text
    clamped = [d for d in decisions if d.clamps]
    assert clamped, "the fixture run should have a clamped round"
    c = clamped[0].clamps[0]
    assert f"{c.stage}.{c.field}: proposed" in text and c.reason in text
    assert "retrieved" in text and decisions[-1].retrieved[0].id[:12] in text
    assert "r_lat" in text and "r_pareto" in text
    assert "not known yet" in text  # the last round's reward


def test_last_n_and_json_are_the_merged_records(sim_run):
    path, decisions, _ = sim_run
    res = runner.invoke(app, ["decisions", str(path), "--last", "3", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["round"] for x in lines] == [ROUNDS - 3, ROUNDS - 2, ROUNDS - 1]
    assert lines[0]["reward"]["total"] == load(path).decisions[-3]["reward"]["total"]
    assert lines[-1]["action"] == decisions[-1].action.to_dict()


def test_app_name_resolves_through_the_data_dir(sim_run, tmp_path, monkeypatch):
    path, _, _ = sim_run
    (tmp_path / "my_app").mkdir()
    shutil.copy(path, tmp_path / "my_app" / "decisions.jsonl")
    monkeypatch.setenv("SAIR_DATA_DIR", str(tmp_path))
    assert resolve("my_app") == tmp_path / "my_app" / "decisions.jsonl"
    assert resolve(str(tmp_path / "my_app")) == tmp_path / "my_app" / "decisions.jsonl"
    res = runner.invoke(app, ["decisions", "my_app", "--last", "1"])
    assert res.exit_code == 0 and f"round {ROUNDS - 1}" in res.output


def test_unknown_app_and_bad_lines_are_clear_errors(sim_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SAIR_DATA_DIR", str(tmp_path))
    res = runner.invoke(app, ["decisions", "nope"], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "no decision log" in " ".join(res.output.split())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"decision","round":0}\nnot json\n')
    res = runner.invoke(app, ["decisions", str(bad)], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output
    # a torn final line (controller killed mid-write) is skipped, not an error
    path, _, _ = sim_run
    torn = tmp_path / "torn.jsonl"
    torn.write_text(path.read_text() + '{"kind":"decision","rou')
    assert len(load(torn).decisions) == ROUNDS
    try:
        resolve(str(tmp_path))  # bad.jsonl and torn.jsonl: ambiguous
    except LogError as e:
        assert "2 decision logs" in str(e)
    else:
        raise AssertionError("an ambiguous directory must be an error")
