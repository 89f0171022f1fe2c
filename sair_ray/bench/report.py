"""Benchmark outputs: `results.parquet` (one row per run) and `results.md` (means over
seeds per app x pattern x method).

Columns: app, pattern, seed, method, hours; p99_ms and p50_ms (end-to-end over the whole
run, failures counted at k x SLA, to 1 %); sla_attainment = requests completed within the
SLA / requests completed (drops are not in it: see the drops column); warmup_s and the
steady-state p99_steady_ms, p50_steady_ms, sla_attainment_steady, drops_steady over
[warmup_s, end); arrivals, completed,
drops, errors; usd_per_1k_billable and usd_per_1k_effective ($ per 1 000 completed
requests); replicas_mean (sum over stages of each stage's mean replica count, sampled at
every round) and replicas_by_stage (JSON); rounds, actions (non-no-op rounds), wall_s.
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
                "usd_per_1k_effective", "replicas_mean", "wall_s")


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    flat = [{**r, "replicas_by_stage": json.dumps(r["replicas_by_stage"], sort_keys=True)}
            for r in rows]
    return pa.Table.from_pylist(flat)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (app, pattern, method), in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["app"], r["pattern"], r["method"]), []).append(r)
    out = []
    for (app, pattern, method), rs in groups.items():
        row: dict[str, Any] = {"app": app, "pattern": pattern, "method": method,
                               "seeds": len(rs)}
        for c in MEAN_COLUMNS:
            vals = [float(r[c]) for r in rs if not math.isnan(float(r[c]))]
            row[c] = sum(vals) / len(vals) if vals else float("nan")
        out.append(row)
    return out


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| app | pattern | method | seeds | p99 ms | p50 ms | SLA att. | drops | "
            "steady p99 ms | steady SLA att. | steady drops | "
            "$/1k bill. | $/1k eff. | replicas | wall s |")
    lines = [head, "|" + "---|" * 3 + "---:|" * 12]
    for s in summarise(rows):
        lines.append(
            f"| {s['app']} | {s['pattern']} | {s['method']} | {s['seeds']} "
            f"| {s['p99_ms']:.0f} | {s['p50_ms']:.0f} | {s['sla_attainment']:.3f} "
            f"| {s['drops']:.0f} | {s['p99_steady_ms']:.0f} "
            f"| {s['sla_attainment_steady']:.3f} | {s['drops_steady']:.0f} "
            f"| {s['usd_per_1k_billable']:.4f} "
            f"| {s['usd_per_1k_effective']:.4f} | {s['replicas_mean']:.2f} "
            f"| {s['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write results.parquet and results.md under `out_dir` (created); their paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": d / "results.parquet", "markdown": d / "results.md"}
    pq.write_table(to_table(rows), paths["parquet"])
    paths["markdown"].write_text(
        "Means over seeds. SLA attainment: completed requests within the SLA / completed "
        "requests (drops excluded, see the drops column). $ per 1 000 completed requests. "
        "replicas: sum over stages of the mean replicas per stage.\n\n" + to_markdown(rows))
    return paths
