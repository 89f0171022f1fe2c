"""`sair report` on a real controller's log: the page is self-contained, every image
decodes, and headless Chromium loads the page and all its images (screenshot kept)."""

from __future__ import annotations

import base64
import html.parser
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.report import load
from sair_ray.report.html import Series, frontier, outcomes
from tests.report.conftest import ROUNDS

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "runs" / "test-artifacts"  # gitignored; kept for a person to look at
FIGURES = ("latency", "allocation", "reward", "decisions", "pareto")
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
            "google-chrome-stable")


class _Imgs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"] or "")
        if tag == "a":
            self.links.append(a["href"] or "")


@pytest.fixture(scope="module")
def report(sim_run, tmp_path_factory) -> Path:
    path, _, _ = sim_run
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(app, ["report", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "report.html"


def test_page_is_self_contained_and_every_image_decodes(report):
    page = report.read_text()
    p = _Imgs()
    p.feed(page)
    assert len(p.srcs) == len(FIGURES)
    for src, name in zip(p.srcs, FIGURES, strict=True):
        assert src.startswith("data:image/png;base64,")  # no external fetch needed
        png = base64.b64decode(src.split(",", 1)[1])
        img = Image.open(io.BytesIO(png))
        img.verify()
        assert img.size[0] >= 600 and img.size[1] >= 250
        assert (report.parent / f"{name}.png").read_bytes() == png  # the PNG beside it
    assert {f"{n}.png" for n in FIGURES} == set(p.links)
    assert f"<th>rounds</th><td>{ROUNDS}</td>" in page


def test_figures_show_the_run_not_a_blank(report):
    for name in FIGURES:
        a = np.asarray(Image.open(report.parent / f"{name}.png").convert("L"))
        assert (a < 128).mean() > 0.005, f"{name}.png is (nearly) blank"


def test_series_and_pareto_frontier_come_from_the_log(sim_run):
    path, decisions, ctl = sim_run
    recs = load(path)
    s = Series.of(recs.decisions)
    assert int(s.probe.sum()) == ctl.counters.probes
    assert [int(x) for x in s.replicas["preprocess"]] == [
        d.context.stage("preprocess").replicas for d in decisions]
    assert set(s.rate) == {"inference"}  # only the GPU stage has a rate series
    t, lat, cost, remembered = outcomes(recs.decisions)
    assert remembered and len(t) == ctl.counters.stored
    f = frontier(lat, cost)
    for i in range(len(lat)):  # nothing beats a frontier point on both axes
        for j in f:
            assert not (lat[i] < lat[j] and cost[i] < cost[j])
    assert frontier(np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])).tolist() == [0, 1]


def test_time_axes_are_minutes_since_the_first_round_never_epoch_seconds(report):
    """Live logs carry epoch seconds, simulator logs virtual seconds: the figures plot
    minutes since the first round and say when that was."""
    from sair_ray.report.html import time_axis, time_span

    live = np.array([1_796_486_531.0, 1_796_486_546.0, 1_796_486_651.0])
    minutes, label = time_axis(live)
    assert minutes.tolist() == [0.0, 0.25, 2.0]
    assert label == "minutes since 2026-12-05 16:02:11 UTC"
    assert time_span(live) == "2026-12-05 16:02:11 - 16:04:11 UTC (2.0 min)"
    minutes, label = time_axis(np.array([30.0, 60.0, 1800.0]))
    assert minutes.tolist() == [0.0, 0.5, 29.5]
    assert label == "minutes since the first round (simulated t = 30 s)"
    # the page of a simulator run: its span in simulated seconds and minutes
    page = report.read_text()
    assert "<th>time span</th><td>simulated t = 30 - 1,800 s (29.5 min)</td>" in page


def test_report_errors_are_clear(tmp_path):
    empty = tmp_path / "decisions.jsonl"
    empty.write_text("")
    res = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "o")],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "no decisions logged" in res.output


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


@pytest.mark.integration
def test_headless_chromium_loads_the_page_and_its_images(report, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("SAIR_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found (apt-get install chromium-headless-shell)")
        pytest.skip("no Chromium on this machine (apt-get install chromium-headless-shell)")
    # A copy of the page with a probe script that writes, once everything has loaded, how
    # many images the browser decoded; --dump-dom prints the DOM after that.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.setAttribute('data-loaded',i.filter(x=>x.complete&&x.naturalWidth>0)"
        ".length+'/'+i.length);});</script></body>")))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-loaded="{len(FIGURES)}/{len(FIGURES)}"' in dom.stdout
    assert "SAIR report: image_classification" in dom.stdout
    shot = tmp_path / "report.png"
    r = subprocess.run([*flags, "--window-size=1100,2400", f"--screenshot={shot}",
                        report.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("L"))
    assert a.shape[:2] == (2400, 1100) and (a < 128).mean() > 0.01  # rendered, not blank
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-screenshot.png")
