"""Per-app target sweeps of the tunable baselines, as the paper did (`sair bench --sweep`).

Candidates:
- HPA: CPU/GPU utilisation target in HPA_TARGETS (Kubernetes' tolerance and windows kept).
- Threshold: the paper's (100 ms CPU, 200 ms GPU) scaled by THRESHOLD_SCALES, and
  SLA-relative thresholds (CPU = GPU = f x the app's SLA, f in THRESHOLD_SLA_FRACTIONS),
  because a fixed 100 ms means nothing to a 20 s video pipeline.

Every candidate runs on every workload pattern with the tuning seed (TUNING_SEED, which
the evaluation grid's seeds 0, 1, 2, ... never reach), through the same `run_one` as the
grid. Selection rule, per app and method (`select`):
1. a candidate qualifies when its steady-state SLA attainment is >= ATTAINMENT_GOAL on
   every pattern;
2. among qualifiers, the lowest mean effective $ per 1 000 requests over the patterns wins;
3. with no qualifier, the highest mean steady attainment wins (ties: lower cost).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from sair_ray.bench.grid import (
    APPS,
    PATTERNS,
    BenchError,
    BenchWorkload,
    Scenario,
    _check,
    _grid_workloads,
    resolve_apps,
)
from sair_ray.bench.report import to_table
from sair_ray.bench.tuned import TunedSettings
from sair_ray.profiles import load_profile

HPA_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9)
THRESHOLD_BASE_MS = (100.0, 200.0)       # paper: CPU, GPU stages
THRESHOLD_SCALES = (0.5, 1.0, 2.0, 4.0)
THRESHOLD_SLA_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
TUNING_SEED = 1000
ATTAINMENT_GOAL = 0.99
SWEPT_METHODS = ("hpa", "threshold")


def candidates(app: str, profile: str = "") -> dict[str, list[dict[str, float]]]:
    """Every setting tried for `app` (its profile file, when given), per method
    (constructor keyword -> value)."""
    sla = load_profile(profile or app).pipeline.sla_ms
    cpu0, gpu0 = THRESHOLD_BASE_MS
    thresholds = [(cpu0 * s, gpu0 * s) for s in THRESHOLD_SCALES]
    thresholds += [(f * sla, f * sla) for f in THRESHOLD_SLA_FRACTIONS]
    unique = list(dict.fromkeys((round(c, 3), round(g, 3)) for c, g in thresholds))
    return {
        "hpa": [{"target": t} for t in HPA_TARGETS],
        "threshold": [{"cpu_p99_ms": c, "gpu_p99_ms": g} for c, g in unique],
    }


def build_sweep(apps: Iterable[str] = APPS, patterns: Iterable[str] = PATTERNS,
                hours: float = 1.0, seed: int = TUNING_SEED,
                methods: Iterable[str] = SWEPT_METHODS, *,
                workloads: Iterable[str | BenchWorkload] | None = None) -> list[Scenario]:
    """Every candidate x pattern (or workload, when given) per app; apps may be profile
    files, like the grid's."""
    a = resolve_apps(apps)
    p = _grid_workloads(patterns, workloads, a)
    m = _check("swept method", methods, SWEPT_METHODS)
    if not (math.isfinite(hours) and hours > 0):
        raise BenchError(f"hours must be > 0 (got {hours})")
    out = []
    for app in a:
        cands = candidates(app.name, app.profile)
        for method in m:
            for settings in cands[method]:
                out += [Scenario(app.name, wl.name, seed, method, hours,
                                 settings=tuple(sorted(settings.items())),
                                 profile=app.profile, workload=wl.spec) for wl in p]
    return out


def select(rows: Sequence[dict[str, Any]]) -> tuple[TunedSettings, list[dict[str, Any]]]:
    """The winner per (app, method) by the module's rule, and one summary row per
    candidate (mean cost, min/mean attainment, qualifies, chosen)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["app"], r["method"], r["settings"]), []).append(r)
    summary: list[dict[str, Any]] = []
    for (app, method, settings), rs in groups.items():
        att = [float(r["sla_attainment_steady"]) for r in rs]
        att = [0.0 if math.isnan(x) else x for x in att]
        cost = [float(r["usd_per_1k_effective"]) for r in rs]
        summary.append({
            "app": app, "method": method, "settings": settings,
            "patterns": len(rs), "attainment_min": min(att),
            "attainment_mean": sum(att) / len(att),
            "usd_per_1k_effective_mean": sum(cost) / len(cost),
            "p99_steady_ms_mean": sum(float(r["p99_steady_ms"]) for r in rs) / len(rs),
            "qualifies": min(att) >= ATTAINMENT_GOAL, "chosen": False})
    tuned: TunedSettings = {}
    for app, method in dict.fromkeys((s["app"], s["method"]) for s in summary):
        cands = [s for s in summary if s["app"] == app and s["method"] == method]
        ok = [s for s in cands if s["qualifies"]]
        if ok:
            best = min(ok, key=lambda s: (s["usd_per_1k_effective_mean"],
                                          -s["attainment_mean"]))
        else:
            best = max(cands, key=lambda s: (s["attainment_mean"],
                                             -s["usd_per_1k_effective_mean"]))
        best["chosen"] = True
        tuned.setdefault(app, {})[method] = json.loads(best["settings"])
    return tuned, summary


def sweep_markdown(summary: Sequence[dict[str, Any]]) -> str:
    lines = ["| app | method | settings | min steady SLA att. | mean steady SLA att. | "
             "mean steady p99 ms | mean $/1k eff. | qualifies | chosen |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['app']} | {s['method']} | `{s['settings']}` | {s['attainment_min']:.4f} "
            f"| {s['attainment_mean']:.4f} | {s['p99_steady_ms_mean']:.0f} "
            f"| {s['usd_per_1k_effective_mean']:.4f} | {'yes' if s['qualifies'] else 'no'} "
            f"| {'**chosen**' if s['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def write_sweep_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                        command: str = "") -> dict[str, Path]:
    """results.parquet (every run), results.md (every candidate, winners marked) and
    tuned.yaml (the winners, the format `--tuned` reads) under `out_dir`."""
    import pyarrow.parquet as pq

    tuned, summary = select(rows)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": d / "results.parquet", "markdown": d / "results.md",
             "tuned": d / "tuned.yaml"}
    pq.write_table(to_table(rows), paths["parquet"])
    head = f"Command: `{command}`\n\n" if command else ""
    seeds = sorted({int(r["seed"]) for r in rows})
    paths["markdown"].write_text(
        head + f"Target sweep on tuning seed(s) {', '.join(map(str, seeds))} over the "
        f"patterns {', '.join(dict.fromkeys(r['pattern'] for r in rows))}. Rule: a setting "
        f"qualifies when its steady-state SLA attainment is >= {ATTAINMENT_GOAL:.0%} on "
        "every pattern; the qualifier with the lowest mean effective $ per 1 000 requests "
        "is chosen; with no qualifier, the highest mean steady attainment.\n\n"
        + sweep_markdown(summary))
    paths["tuned"].write_text(yaml.safe_dump(tuned, sort_keys=True))
    return paths
