"""The published comparison, guarded on a short grid: SAIR as configured by default
(`sair-retrieval`, learning on) run through the bench against its own `no_icl` ablation and
the tuned deployable baselines, on two cells where the published results
(docs/results/grid-1h, docs/results/learning) show what the memory buys. A regression that
makes the memory change nothing again, or lets a baseline dominate SAIR, fails here.

Seed 0 of the published 3; 1 simulated hour, as published (the steady window starts after
12 minutes). The simulator is deterministic per seed, so these are exact checks."""

from __future__ import annotations

import pytest

from sair_ray.bench import build_ablation_grid, build_grid, run_one
from sair_ray.bench.report import ATTAIN, label_of, versus

CELLS = [("image_classification", "burst"), ("nlp_analysis", "poisson")]
BASELINES = ["static", "hpa", "threshold", "ray_serve"]


def better(a: dict, b: dict) -> bool:
    """docs/benchmarks.md 'Learning': higher steady attainment by more than 0.001, or
    within 0.001 at >= 1 % lower effective cost."""
    da = a["sla_attainment_steady"] - b["sla_attainment_steady"]
    return da > 0.001 or (abs(da) <= 0.001
                          and a["usd_per_1k_effective"] <= 0.99 * b["usd_per_1k_effective"])


@pytest.mark.parametrize("app,pattern", CELLS)
def test_sair_learns_and_is_not_dominated(app: str, pattern: str) -> None:
    scenarios = build_grid([app], [pattern], BASELINES, 1, hours=1.0)
    scenarios += build_ablation_grid(["no_icl"], ["sair-retrieval"], [pattern], 1,
                                     hours=1.0, apps=[app])
    rows = [run_one(sc) for sc in scenarios]
    by = {label_of(r): r for r in rows}
    sair, no_icl = by["sair-retrieval"], by["sair-retrieval[no_icl]"]
    assert sair["sla_attainment_steady"] >= ATTAIN, sair
    assert better(sair, no_icl), (sair, no_icl)
    vs = next(v for v in versus(rows) if v["method"] == "sair-retrieval")
    assert not vs["dominated_by"], vs
