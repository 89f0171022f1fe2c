"""benchmarks/bench_live.py --twin: the live cells on the simulator (no Ray). The quick mode
runs every method; each published twin table (docs/results/twin-*) is what its command
gives at the current code, checked on seed 0 of every cell (a policy change must come with
the tables re-run: `benchmarks/bench_live.py ... --twin`, the command in each results.md)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = sorted((ROOT / "docs" / "results").glob("twin-*"))


def _bench():
    return load_benchmark("bench_live")


def test_quick_twin_runs_every_method_and_is_labelled(tmp_path: Path, capsys) -> None:
    bench = _bench()
    assert bench.main(["--twin", "--quick", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert {r["method"] for r in runs} == set(bench.METHODS)
    assert all(r["label"] == bench.TWIN and r["ok"] > 0 and r["replica_s_total"] > 0
               for r in runs)
    # the threshold rule gets the live arm's thresholds, Serve's arms their delays
    by = {r["method"]: r for r in runs}
    assert set(by["threshold"]["policy_params"]) == {"cpu_p99_ms", "gpu_p99_ms"}
    assert by["serve-cooldowns"]["policy_params"] == {
        "upscale_delay_s": bench.COOLDOWN_UP_S, "downscale_delay_s": bench.COOLDOWN_DOWN_S}
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# simulator twin: image_classification") and "QUICK" in text
    table = bench.summary([tmp_path])
    assert "Simulator twin" in table and "real Ray Serve" not in table


@pytest.mark.parametrize("cell", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_twin_is_what_its_command_gives(cell: Path, tmp_path: Path) -> None:
    bench = _bench()
    cmd = next(line for line in (cell / "results.md").read_text().splitlines()
               if line.startswith("Command: ")).removeprefix("Command: ").strip("`")
    argv = shlex.split(cmd)[1:]
    argv[argv.index("--seeds") + 1] = "0"
    argv[argv.index("--out") + 1] = str(tmp_path)
    assert "--twin" in argv
    assert bench.main(argv) == 0
    now = json.loads((tmp_path / "runs.json").read_text())
    was = [r for r in json.loads((cell / "runs.json").read_text()) if r["seed"] == 0]
    ids, nums = ("method", "pattern"), ("p99_ms", "attainment", "replica_s_total", "ok")
    assert [[r[k] for k in ids] for r in now] == [[r[k] for k in ids] for r in was]
    assert [r[k] for r in now for k in nums] == pytest.approx(
        [r[k] for r in was for k in nums]), f"{cell.name} is out of date: re-run `{cmd}`"
