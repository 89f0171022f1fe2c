from __future__ import annotations

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.config import SAIRConfig

runner = CliRunner()


def test_config_show_prints_the_effective_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("retrieval: {K: 5}\n")
    res = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 0
    assert SAIRConfig.from_dict(yaml.safe_load(res.stdout)).retrieval.K == 5


def test_invalid_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("validator: {replicas_max: 0}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg)])
    assert res.exit_code == 2
    assert "validator.replicas_max" in res.output


def test_options_markdown_lists_every_key():
    res = runner.invoke(app, ["config", "options", "--markdown"])
    assert res.exit_code == 0 and "`reward.w_L`" in res.stdout and "`validator.cooldown_up_s`" \
        in res.stdout


def test_memory_commands(tmp_path):
    from sair_ray.memory import ExperienceMemory
    from sair_ray.types import Experience

    with ExperienceMemory(tmp_path / "m", 4) as m:
        m.add(Experience(id="a", time=0, app="x", phi=[0.1] * 4, context={}, action={},
                         reward=0.4, latency_ms=1, cost_rate=1))
    res = runner.invoke(app, ["memory", "stats", str(tmp_path / "m"), "--dim", "4"])
    assert res.exit_code == 0 and '"experiences": 1' in res.stdout
    res = runner.invoke(app, ["memory", "stats", str(tmp_path / "m")])
    assert res.exit_code == 0 and '"experiences": 1' in res.stdout
    res = runner.invoke(app, ["memory", "stats", str(tmp_path / "nope")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["memory", "stats", str(tmp_path / "m"), "--dim", "5"])
    assert res.exit_code == 2 and "phi" in res.output
    res = runner.invoke(app, ["memory", "quarantine", str(tmp_path / "m")])
    assert res.exit_code == 0 and not (tmp_path / "m").exists()


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "sair_ray.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "config" in out.stdout and "memory" in out.stdout


def _commands(group, path=()):
    """(path, click command) of every command under `group`, groups included."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


def test_help_texts_are_paragraphs_not_source_lines():
    # Typer's rich help keeps a help text's line breaks: a docstring's source wrapping
    # would show as sentences broken mid-line in `sair --help` and `sair X --help`.
    import typer

    root = typer.main.get_command(app)
    listed = 0
    for path, cmd in _commands(root):
        for para in (cmd.help or "").split("\n\n"):
            assert "\n" not in para, (path, para)
        listed += 1
    assert listed >= 14
    # the command list shows each command's first paragraph, whole
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "Start local Ray, deploy image_classification with SAIR attached, drive a burst " \
        "workload with a live table" in res.stdout
