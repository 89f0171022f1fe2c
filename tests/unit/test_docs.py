"""The docs must match the code: the README example runs, the config reference is current."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from typer.testing import CliRunner

from sair_ray.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_example_runs_and_prints_what_it_claims():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), {})
    printed = buf.getvalue()
    assert "replicas=4" in printed and "rate=0.7" in printed
    assert "exceeds max step" in printed


def test_configuration_reference_is_generated_from_the_code():
    table = CliRunner().invoke(app, ["config", "options", "--markdown"]).stdout
    assert table.strip() in (ROOT / "docs" / "configuration.md").read_text()
