"""Benchmark outputs: `results.parquet` (one row per run) and `results.md` (means over
seeds per app x pattern x method).

Columns: app, pattern, seed, method, hours, variant (SAIR ablation, "" = none), settings
(JSON: the baseline's tuned constructor settings), profile (the profile YAML of an app given
as a file, "" for a shipped one), workload (JSON mapping of a workload given with
`--workload`, whose name is then the pattern; "" for a shipped pattern), label (method as
shown: `sair[no_icl]`);
p99_ms and p50_ms (end-to-end over the whole run, failures counted at k x SLA, to 1 %);
sla_attainment = requests completed within the SLA / requests completed (drops are not in
it: see the drops column); warmup_s and the steady-state p99_steady_ms, p50_steady_ms,
sla_attainment_steady, drops_steady over [warmup_s, end); arrivals, completed, drops,
errors; usd_per_1k_billable and usd_per_1k_effective ($ per 1 000 completed requests);
replicas_mean (sum over stages of each stage's mean replica count, sampled at every round)
and replicas_by_stage (JSON); rounds, actions (non-no-op rounds), probes (exploration
rounds), policy_failures, stored (experiences remembered); validator_escapes (rounds whose
executed action broke a limit, step, cooldown or the cluster capacity, see
`sair_ray.bench.checks`); decide_p50_ms / decide_p99_ms (wall time of the policy's
decision over the rounds that asked it) and overhead_p99_ms (the rest of a round); wall_s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MEAN_COLUMNS = ("p99_ms", "p50_ms", "sla_attainment", "drops", "p99_steady_ms",
                "sla_attainment_steady", "drops_steady", "usd_per_1k_billable",
                "usd_per_1k_effective", "replicas_mean", "decide_p50_ms", "decide_p99_ms",
                "overhead_p99_ms", "wall_s")
SUM_COLUMNS = ("validator_escapes",)


def label_of(row: dict[str, Any]) -> str:
    """How a row's method is shown: its label, else `method[variant]`, else the method."""
    if row.get("label"):
        return str(row["label"])
    return f"{row['method']}[{row['variant']}]" if row.get("variant") else str(row["method"])


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    flat = [{**r, "replicas_by_stage": json.dumps(r["replicas_by_stage"], sort_keys=True)}
            for r in rows]
    return pa.Table.from_pylist(flat)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results.parquet written by `write_outputs` (or of the directory
    holding one), as `run_one` made them."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.parquet"
    return [{**r, "replicas_by_stage": json.loads(r["replicas_by_stage"])}
            for r in pq.read_table(p).to_pylist()]


def _num(r: dict[str, Any], c: str) -> float:
    v = r.get(c)
    return float("nan") if v is None else float(v)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means (sums for SUM_COLUMNS) over seeds per (app, pattern, method label), in
    first-seen order; NaNs are left out of means."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["app"], r["pattern"], label_of(r)), []).append(r)
    out = []
    for (app, pattern, method), rs in groups.items():
        row: dict[str, Any] = {"app": app, "pattern": pattern, "method": method,
                               "seeds": len(rs)}
        for c in MEAN_COLUMNS:
            vals = [x for x in (_num(r, c) for r in rs) if not math.isnan(x)]
            row[c] = sum(vals) / len(vals) if vals else float("nan")
        for c in SUM_COLUMNS:
            vals = [x for x in (_num(r, c) for r in rs) if not math.isnan(x)]
            row[c] = sum(vals) if vals else float("nan")
        out.append(row)
    return out


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.0f}" if x >= 10 else f"{x:.2f}")


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| app | pattern | method | seeds | p99 ms | p50 ms | SLA att. | drops | "
            "steady p99 ms | steady SLA att. | steady drops | "
            "$/1k bill. | $/1k eff. | replicas | escapes | decide p50/p99 ms | wall s |")
    lines = [head, "|" + "---|" * 3 + "---:|" * 14]
    for s in summarise(rows):
        esc = "-" if math.isnan(s["validator_escapes"]) else f"{s['validator_escapes']:.0f}"
        lines.append(
            f"| {s['app']} | {s['pattern']} | {s['method']} | {s['seeds']} "
            f"| {s['p99_ms']:.0f} | {s['p50_ms']:.0f} | {s['sla_attainment']:.3f} "
            f"| {s['drops']:.0f} | {s['p99_steady_ms']:.0f} "
            f"| {s['sla_attainment_steady']:.3f} | {s['drops_steady']:.0f} "
            f"| {s['usd_per_1k_billable']:.4f} "
            f"| {s['usd_per_1k_effective']:.4f} | {s['replicas_mean']:.2f} "
            f"| {esc} | {_ms(s['decide_p50_ms'])}/{_ms(s['decide_p99_ms'])} "
            f"| {s['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def settings_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The baseline settings the rows ran with, one line per (app, method) that had any."""
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        s = r.get("settings") or "{}"
        if s != "{}":
            seen.setdefault((r["app"], r["method"]), s)
    if not seen:
        return ""
    lines = ["| app | method | settings |", "|---|---|---|"]
    lines += [f"| {app} | {m} | `{s}` |" for (app, m), s in seen.items()]
    return "\n".join(lines) + "\n"


SAIR_PREFIX = "sair"
# clairvoyant: bounds, not something one can deploy
HINDSIGHT = "hindsight-oracle"
DEPLOYED_EXCLUDED = ("oracle", HINDSIGHT)
ATTAIN = 0.99                     # steady SLA attainment a method must reach to count
WITHIN = 1.05                     # "within 5 %" of the project's target


def versus(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and SAIR method: how it compares with the deployable baselines of the same
    rows, on means over seeds of steady p99, steady attainment and effective $/1k.

    `best_p99` is the lowest p99 of any deployed baseline; `cheapest` the lowest cost among
    those reaching ATTAIN (else among all); `target_met` is the project's target, "within
    5 % of both, at >= ATTAIN"; `dominated_by` lists the baselines reaching ATTAIN that are no
    worse on both p99 and cost (empty = SAIR is on the Pareto front of what meets the
    SLA)."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summarise(rows):
        cells.setdefault((s["app"], s["pattern"]), []).append(s)
    out = []
    for (app, pattern), ms in cells.items():
        deployed = [m for m in ms if not m["method"].startswith(SAIR_PREFIX)
                    and m["method"] not in DEPLOYED_EXCLUDED]
        if not deployed:
            continue
        ok = [m for m in deployed if m["sla_attainment_steady"] >= ATTAIN]
        best = min(deployed, key=lambda m: m["p99_steady_ms"])
        cheap = min(ok or deployed, key=lambda m: m["usd_per_1k_effective"])
        hindsight = next((m for m in ms if m["method"] == HINDSIGHT), None)
        for m in ms:
            if not m["method"].startswith(SAIR_PREFIX):
                continue
            p99, att, usd = (m["p99_steady_ms"], m["sla_attainment_steady"],
                             m["usd_per_1k_effective"])
            out.append({
                "app": app, "pattern": pattern, "method": m["method"], "p99": p99,
                "attainment": att, "usd": usd, "best_p99": best["p99_steady_ms"],
                "best_p99_method": best["method"], "cheapest": cheap["usd_per_1k_effective"],
                "cheapest_method": cheap["method"],
                "target_met": (att >= ATTAIN and p99 <= WITHIN * best["p99_steady_ms"]
                               and usd <= WITHIN * cheap["usd_per_1k_effective"]),
                "dominated_by": [d["method"] for d in ok if d["p99_steady_ms"] <= p99
                                 and d["usd_per_1k_effective"] <= usd],
                "hindsight_attainment": (hindsight["sla_attainment_steady"]
                                         if hindsight else None),
                "hindsight_usd": hindsight["usd_per_1k_effective"] if hindsight else None})
    return out


def versus_markdown(rows: Sequence[dict[str, Any]]) -> str:
    vs = versus(rows)
    if not vs:
        return ""
    hs = any(v["hindsight_usd"] is not None for v in vs)
    lines = ["| app | pattern | SAIR method | steady p99 ms | steady att. | $/1k eff. "
             "| best deployed p99 ms | cheapest deployed $/1k at >= 99 % | within 5 % of both "
             "at >= 99 % | dominated by (>= 99 %) |"
             + (" hindsight oracle att. / $/1k |" if hs else ""),
             "|---|---|---|---:|---:|---:|---|---|---|---|" + ("---|" if hs else "")]
    for v in vs:
        hcol = ("" if not hs else " - |" if v["hindsight_usd"] is None else
                f" {v['hindsight_attainment']:.3f} / {v['hindsight_usd']:.4f} |")
        lines.append(
            f"| {v['app']} | {v['pattern']} | {v['method']} | {v['p99']:.0f} "
            f"| {v['attainment']:.3f} | {v['usd']:.4f} "
            f"| {v['best_p99']:.0f} ({v['best_p99_method']}) "
            f"| {v['cheapest']:.4f} ({v['cheapest_method']}) "
            f"| {'yes' if v['target_met'] else 'no'} "
            f"| {', '.join(v['dominated_by']) or '-'} |" + hcol)
    by: dict[str, list[dict[str, Any]]] = {}
    for v in vs:
        by.setdefault(v["method"], []).append(v)
    for method, xs in by.items():
        front = sum(1 for x in xs if x["attainment"] >= ATTAIN and not x["dominated_by"])
        met = sum(x["target_met"] for x in xs)
        lines.append(f"\n{method}: within 5 % of both in {met} of {len(xs)} cells; at >= 99 % "
                     f"attainment and dominated by no baseline that meets it in {front} of "
                     f"{len(xs)}.")
        paired = [x for x in xs if x["hindsight_usd"] is not None]
        if paired:
            ratio = (sum(x["usd"] for x in paired) / len(paired)) / (
                sum(x["hindsight_usd"] for x in paired) / len(paired))
            at_least = sum(x["attainment"] >= x["hindsight_attainment"] - 0.001
                           for x in paired)
            lines.append(f"Against the hindsight oracle ({len(paired)} cells): mean effective "
                         f"$/1k {ratio:.2f}x its mean; steady attainment at least its own "
                         f"(within 0.001) in {at_least} of {len(paired)}.")
    return "\n".join(lines) + "\n"


def sources_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The profile files and workloads of rows that were not shipped ones, and the credit
    of replayed data (the Azure trace); "" when every row is a shipped app and pattern."""
    from sair_ray.workloads import AZURE_CREDIT, AZURE_TRACE_FILE

    apps: dict[str, str] = {}
    workloads: dict[str, str] = {}
    for r in rows:
        if r.get("profile"):
            apps.setdefault(r["app"], r["profile"])
        if r.get("workload"):
            workloads.setdefault(r["pattern"], r["workload"])
    lines = [f"- app {a}: profile `{p}`" for a, p in apps.items()]
    lines += [f"- workload {w}: `{spec}`" for w, spec in workloads.items()]
    credit = any(Path(str(json.loads(spec).get("path", ""))).name == AZURE_TRACE_FILE
                 for spec in workloads.values())
    if credit:
        lines.append(f"- trace data: {AZURE_CREDIT}")
    return "\n".join(lines) + "\n" if lines else ""


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                  command: str = "") -> dict[str, Path]:
    """Write results.parquet and results.md under `out_dir` (created); their paths.
    `command`, when given, is recorded at the top of results.md."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": d / "results.parquet", "markdown": d / "results.md"}
    pq.write_table(to_table(rows), paths["parquet"])
    head = f"Command: `{command}`\n\n" if command else ""
    settings = settings_markdown(rows)
    if settings:
        settings = "Baseline settings (tuned per app by the sweep, see bench/tuned.py):\n\n" \
                   + settings + "\n"
    vs = versus_markdown(rows)
    sources = sources_markdown(rows)
    if sources:
        sources = ("Apps from profile files and workloads given with --workload (not "
                   "scaled to the app):\n\n" + sources + "\n")
    paths["markdown"].write_text(
        head + sources + "Means over seeds (escapes: sum over seeds). SLA attainment: completed "
        "requests within the SLA / completed requests (drops excluded, see the drops "
        "column); steady: after the warm-up, drops and errors counted as misses. $ per "
        "1 000 completed requests. replicas: sum over stages of the mean replicas per "
        "stage. decide: the policy's decision time per round that asked it.\n\n"
        + settings + to_markdown(rows)
        + ("\n## SAIR against the deployable baselines\n\n" + vs if vs else ""))
    return paths
