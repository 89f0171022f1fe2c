"""`sair attach/detach/status` argument errors: named, exit code 2, before touching Ray
(the live path is exercised in test_live_integration.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from sair_ray.cli import app

runner = CliRunner()


def test_unknown_policy_is_named() -> None:
    r = runner.invoke(app, ["attach", "x", "--policy", "magic"])
    assert r.exit_code == 2 and "unknown policy 'magic'" in r.output


def test_bad_config_names_the_key(tmp_path) -> None:
    cfg = tmp_path / "sair.yaml"
    cfg.write_text("loop: {decision_interval_s: 0}\n")
    r = runner.invoke(app, ["attach", "x", "--config", str(cfg), "--policy", "threshold"])
    assert r.exit_code == 2 and "loop.decision_interval_s" in r.output


def test_unreachable_cluster_fails_fast() -> None:
    for cmd in (["attach", "x", "--policy", "threshold"], ["status", "x"], ["detach", "x"]):
        r = runner.invoke(app, [*cmd, "--address", "127.0.0.1:1"])
        assert r.exit_code == 2 and "no Ray cluster at 127.0.0.1:1" in r.output
