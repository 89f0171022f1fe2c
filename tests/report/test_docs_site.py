"""The docs site: the CLI reference is generated from the CLI, the site builds without a
warning, and the Grafana dashboard and the operations page name only metrics SAIR exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sair_ray.cli import app
from sair_ray.metrics_export import METRICS
from sair_ray.report.cli_reference import generate

ROOT = Path(__file__).resolve().parents[2]
KIND_SUFFIX = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum",
                                                                     "_count")}


def test_cli_reference_is_generated_from_the_cli():
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == generate(app), (
        "docs/cli.md is out of date: python -m sair_ray.report.cli_reference > docs/cli.md")
    for name in ("decisions", "report", "attach", "bench", "memory stats"):
        assert f"## `sair {name}`" in committed


def test_every_docs_page_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages and all(p in nav for p in pages), pages - set(re.findall(r"[\w-]+\.md", nav))


@pytest.mark.skipif(shutil.which("mkdocs") is None and
                    not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (the dev extra installs it)")
def test_site_builds_strict(tmp_path):
    exe = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    r = subprocess.run([exe, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for page in ("index.html", "cli/index.html", "operations/index.html"):
        assert (tmp_path / "site" / page).is_file()


def _scraped() -> set[str]:
    return {f"ray_{m.name}{suf}" for m in METRICS for suf in KIND_SUFFIX[m.kind]}


def test_grafana_dashboard_queries_only_exported_metrics():
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"ray_sair_\w+", e)}
    assert used and used <= _scraped(), used - _scraped()
    # every exported metric is on some panel, except the round timing histogram
    shown = {re.sub(r"^ray_|_(total|bucket|sum|count)$", "", m) for m in used}
    assert {m.name for m in METRICS} - shown <= {"sair_round_ms", "sair_probes",
                                                 "sair_policy_calls",
                                                 "sair_experiences_stored",
                                                 "sair_memory_failures"}
    assert all('app="$app"' in e for e in exprs)


def test_operations_page_lists_every_exported_metric():
    text = (ROOT / "docs" / "operations.md").read_text()
    for m in METRICS:
        suffix = "_total" if m.kind == "counter" else ""
        assert f"ray_{m.name}{suffix}" in text, m.name
