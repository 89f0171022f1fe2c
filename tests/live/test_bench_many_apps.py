"""benchmarks/bench_many_apps.py --quick: two tiny Serve apps on one private local Ray, a
SAIR controller (`sair-retrieval`) attached to each, light load on both for 30 s. Every
app gets its rounds, none fails or is late, every request is answered, and the script
measures what it says (per-round controller CPU, controller and head RSS by process role,
PSS of the whole cluster). A smoke test of the harness (about 75 s); the 20-app figures
are in docs/reliability.md and docs/benchmarks.md."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_benchmark

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bench() -> ModuleType:
    return load_benchmark("bench_many_apps")


def test_round_delays_and_roles() -> None:
    bench = _bench()
    # due = previous start + interval; the first is due at the loop's start + interval
    assert bench.round_delays([110.0, 120.5, 136.0, 140.0], 100.0, 10.0) == \
        pytest.approx([0.0, 0.5, 5.5, -6.0])
    assert bench.role("ray::ControllerActor") == "sair_controllers"
    assert bench.role("ray::ServeReplica:app00:pre") == "replicas"
    assert bench.role("ray::ServeController.listen_for_change") == "serve_controller"
    assert bench.role("/x/ray/core/src/ray/gcs/gcs_server --x") == "gcs"
    assert bench.role("/x/ray/core/src/ray/raylet/raylet --x") == "raylet"
    assert bench.role("ray-dashboard-ServeHead-0 (python ...)") == "dashboard"


@pytest.mark.timeout(240)
def test_quick_run_gives_every_app_its_rounds(tmp_path: Path) -> None:
    bench = _bench()
    rc = bench.main(["--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("# Many apps on one cluster")
    assert rc == 0, res["failures"]
    s, apps = res["summary"], res["per_app"]
    assert [a["app"] for a in apps] == ["app00", "app01"]
    for a in apps:
        # a round every 5 s for 30 s: 6 due; allow the load of a shared 2-core machine
        assert a["rounds_ok"] >= 4 and a["rounds_failed"] == 0, a
        assert a["rounds_late"] == 0 and not a["restarted"], a
        assert a["sent"] > 0 and a["ok"] == a["sent"] and a["errors"] == {}, a
        assert 0 < a["thread_cpu_ms_per_round"] <= a["process_cpu_ms_per_round"], a
        assert a["rss_mb"] > 50 and a["memory"] >= a["rounds_ok"] - 2, a
    assert s["rounds_failed"] == 0 and s["rounds_late"] == 0
    roles = s["rss_by_role_last_mb"]
    for r in ("gcs", "raylet", "dashboard", "serve_controller", "proxy", "sair_controllers",
              "metrics_actors", "replicas"):
        assert roles[r] > 10, (r, roles)
    assert s["system_rss_mb"]["last"] > 0 and math.isfinite(s["all_pss_mb"]["last"])
    assert len(res["samples"]) == 4 and all(x["load1"] >= 0 for x in res["samples"])
