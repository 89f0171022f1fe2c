"""The SAIR-against-baselines summary of `sair bench` (the project's target, computed)."""

from __future__ import annotations

from sair_ray.bench.report import versus, versus_markdown


def row(method: str, p99: float, att: float, usd: float, seed: int = 0) -> dict:
    nan = float("nan")
    return {"app": "a", "pattern": "poisson", "method": method, "variant": "", "seed": seed,
            "label": method, "p99_steady_ms": p99, "sla_attainment_steady": att,
            "usd_per_1k_effective": usd, **{k: nan for k in (
                "p99_ms", "p50_ms", "sla_attainment", "drops", "drops_steady",
                "usd_per_1k_billable", "replicas_mean", "decide_p50_ms", "decide_p99_ms",
                "overhead_p99_ms", "wall_s", "validator_escapes")}}


def test_target_and_domination_are_judged_against_deployable_baselines_meeting_the_sla():
    rows = [row("threshold", 100, 1.0, 2.0), row("hpa", 200, 0.999, 1.0),
            row("static", 50, 0.5, 0.1),            # cheapest and fastest, but fails the SLA
            row("oracle", 10, 1.0, 0.01),           # clairvoyant: never the reference
            row("sair-retrieval", 104, 0.995, 1.04, 0), row("sair-retrieval", 104, 0.995,
                                                            1.04, 1)]
    (v,) = versus(rows)
    assert (v["best_p99"], v["best_p99_method"]) == (50, "static")
    assert (v["cheapest"], v["cheapest_method"]) == (1.0, "hpa")
    assert not v["target_met"]                      # 104 ms is not within 5 % of 50
    assert v["dominated_by"] == []
    worse = versus(rows[:2] + [row("sair", 250, 0.999, 3.0)])
    assert worse[0]["dominated_by"] == ["threshold", "hpa"] and not worse[0]["target_met"]
    met = versus(rows[:2] + [row("sair", 104, 0.995, 1.04)])
    assert met[0]["target_met"]                     # 104 <= 1.05 x 100, 1.04 <= 1.05 x 1.0
    assert "within 5 % of both in 1 of 1 cells" in versus_markdown(rows[:2] + [
        row("sair", 104, 0.995, 1.04)])


def test_no_summary_without_a_sair_method_or_a_baseline():
    assert versus([row("hpa", 1, 1, 1)]) == [] and versus_markdown([row("sair", 1, 1, 1)]) == ""
