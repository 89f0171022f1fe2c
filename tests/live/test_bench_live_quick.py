"""benchmarks/bench_live.py --quick on its own partitioned Ray (one logical node shaped like
the profile's cluster per method): SAIR (sair-retrieval), Ray Serve's autoscaler (its
defaults and with SAIR's cooldowns as its delays) and the threshold rule run at the same
time on the emulated image_classification app; every request is answered, every run is
summarised, every app's replicas ran on its own node, the controllers' rounds succeed, and
the report carries the "emulated compute" label. A smoke test of the harness, not a
result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ray_harness import free_port
from tests.scripts import load_benchmark

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_live.py"


def _bench():
    return load_benchmark("bench_live")


def test_mean_ci() -> None:
    bench = _bench()
    mu, h = bench.mean_ci([1.0, 2.0, 3.0])
    assert mu == 2.0 and h == pytest.approx(2.4841, rel=1e-3)   # t(0.975, 2) * 1 / sqrt(3)
    mu, h = bench.mean_ci([5.0])
    assert mu == 5.0 and h != h                                 # NaN: one seed, no interval


def test_resume_keeps_only_complete_seeds(tmp_path: Path) -> None:
    bench = _bench()
    arms = bench.arms(bench.parse_args(["--patterns", "burst",
                                        "--methods", "sair-retrieval,serve"]))
    runs = [{"seed": 0, "pattern": "burst", "method": "sair-retrieval", "ok": 1},
            {"seed": 0, "pattern": "burst", "method": "serve", "ok": 1},
            {"seed": 1, "pattern": "burst", "method": "sair-retrieval", "ok": 1},
            {"seed": 1, "pattern": "burst", "method": "serve", "error": "boom"},
            {"seed": 2, "pattern": "burst", "method": "serve", "ok": 1}]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    kept = bench.kept_runs(tmp_path / "runs.json", arms, [0, 1, 2])
    assert kept == runs[:2]      # seed 1 failed an arm, seed 2 lacks one: both run again
    assert bench.kept_runs(tmp_path / "none.json", arms, [0]) == []


def test_summary_of_the_committed_cells_is_the_published_table(tmp_path: Path) -> None:
    """--summary reads earlier --out directories: over the committed live cells it gives
    the table docs/benchmarks.md publishes, row for row (a re-run cell must be
    republished)."""
    bench = _bench()
    root = BENCH.parents[1]
    text = bench.summary(sorted((root / "docs" / "results").glob("live-*")))
    published = (root / "docs" / "benchmarks.md").read_text()
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| profile")]
    assert len(rows) == 8, rows     # 4 profiles x burst and ramp
    assert [r for r in rows if r not in published] == []
    verdict = next(line for line in text.splitlines() if line.startswith("Target"))
    assert verdict in published
    with pytest.raises(SystemExit, match="not an --out directory"):
        bench.summary([tmp_path])


@pytest.mark.timeout(240)
def test_bench_live_quick(tmp_path: Path) -> None:
    bench = _bench()
    rc = bench.main(["--quick", "--dashboard-port", str(free_port()), "--http-port",
                     str(free_port()), "--out", str(tmp_path)])
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert rc == 0, runs
    assert [r["method"] for r in runs] == ["sair-retrieval", "serve", "serve-cooldowns",
                                           "threshold"]
    assert {r["pattern"] for r in runs} == {"burst"}
    # each app's replicas ran on one logical node, a different one for every app
    assert all(len(r["nodes"]) == 1 for r in runs), [r["nodes"] for r in runs]
    assert len({r["nodes"][0] for r in runs}) == len(runs)
    for r in runs:
        assert r["counts"] == {"ok": r["ok"]} and r["ok"] > 0, r   # every request answered
        assert r["p99_ms"] > 0 and 0 <= r["attainment"] <= 1
        assert r["replica_s_total"] > 0 and r["usd_per_1000_ok"] > 0
    for r in runs:
        if r["method"] not in ("serve", "serve-cooldowns"):
            assert r["sair_status"]["rounds_ok"] >= 1, r["sair_status"]
    # the threshold rule reads the slowed app with its thresholds slowed alike
    (thr,) = [r for r in runs if r["method"] == "threshold"]
    assert set(thr["policy_params"]) == {"cpu_p99_ms", "gpu_p99_ms"}
    assert thr["policy_params"]["cpu_p99_ms"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "emulated compute" in text and "QUICK smoke run" in text
    assert "| sair-retrieval | 1 |" in text and "| serve | 1 |" in text
    assert "| serve-cooldowns | 1 | " in text        # its paired ratios to serve
    assert "The threshold rule's processing-p99 thresholds" in text
    assert "Target (SAIR at equal or higher attainment" in text
