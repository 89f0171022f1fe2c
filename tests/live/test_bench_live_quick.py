"""benchmarks/bench_live.py --quick on a private Ray shaped like the profile's cluster:
SAIR (sair-retrieval), Ray Serve's autoscaler and the threshold rule each run once on the
emulated image_classification app; every request is answered, every run is summarised,
the controller's rounds succeed, and the report carries the "emulated compute" label.
A smoke test of the harness (about 80 s), not a result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.ray_harness import free_port, private_ray

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_live.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_live", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_ci() -> None:
    bench = _bench()
    mu, h = bench.mean_ci([1.0, 2.0, 3.0])
    assert mu == 2.0 and h == pytest.approx(2.4841, rel=1e-3)   # t(0.975, 2) * 1 / sqrt(3)
    mu, h = bench.mean_ci([5.0])
    assert mu == 5.0 and h != h                                 # NaN: one seed, no interval


@pytest.mark.timeout(240)
def test_bench_live_quick(tmp_path: Path) -> None:
    from sair_ray.emulate import cluster_resources, emulation_env
    from sair_ray.profiles import load_profile

    bench = _bench()
    res = cluster_resources(load_profile("image_classification"))
    with emulation_env(), private_ray(res["num_cpus"], dashboard=True,
                                      num_gpus=res["num_gpus"], memory=res["memory"],
                                      _system_config={"metrics_report_interval_ms": 1000}) as c:
        rc = bench.main(["--quick", "--dashboard", str(c.dashboard), "--http-port",
                         str(free_port()), "--out", str(tmp_path)])
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert rc == 0, runs
    assert [r["method"] for r in runs] == ["sair-retrieval", "serve", "threshold"]
    for r in runs:
        assert r["counts"] == {"ok": r["ok"]} and r["ok"] > 0, r   # every request answered
        assert r["p99_ms"] > 0 and 0 <= r["attainment"] <= 1
        assert r["replica_s_total"] > 0 and r["usd_per_1000_ok"] > 0
    for r in runs:
        if r["method"] != "serve":
            assert r["sair_status"]["rounds_ok"] >= 1, r["sair_status"]
    text = (tmp_path / "results.md").read_text()
    assert "emulated compute" in text and "QUICK smoke run" in text
    assert "| sair-retrieval | 1 |" in text and "| serve | 1 |" in text
