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


def test_policy_params_are_parsed_and_checked_before_ray() -> None:
    # checked on the driver before connecting: a bad one never reaches an actor
    cases = {
        ("--policy", "threshold", "--policy-param", "cpu_p99"): "expected NAME=VALUE",
        ("--policy", "threshold", "--policy-param", "cpu_p99_ms=[1]"): "must be a number",
        ("--policy", "threshold", "--policy-param", "cpu_p99_ms=1",
         "--policy-param", "cpu_p99_ms=2"): "given twice",
        ("--policy", "threshold", "--policy-param", "cpu_p99_msx=50"): "bad parameters",
        ("--policy", "sair-retrieval", "--policy-param", "x=1"): "from the SAIR config",
    }
    for args, msg in cases.items():
        r = runner.invoke(app, ["attach", "x", *args, "--address", "127.0.0.1:1"])
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
    # good ones pass the check and the command goes on to the cluster
    r = runner.invoke(app, ["attach", "x", "--policy", "threshold", "--policy-param",
                            "cpu_p99_ms=50", "--policy-param", "gpu_p99_ms=1e2",
                            "--address", "127.0.0.1:1"])
    assert r.exit_code == 2 and "no Ray cluster at 127.0.0.1:1" in r.output


def test_policy_param_values_are_yaml_scalars() -> None:
    from sair_ray.commands.attach import _policy_params

    assert _policy_params(["a=50", "b=0.5", "c=true", "d=word", " e =2"]) == {
        "a": 50, "b": 0.5, "c": True, "d": "word", "e": 2}
    assert _policy_params(["x=1e2"]) == {"x": 100.0}
