"""PNG figures of a bench run, shaped like the paper's Figures 1-2: per app, grouped bars of
steady-state p99 latency (log scale, SLA marked) and effective cost per 1 000 requests, by
workload pattern and method. Needs matplotlib (`pip install sair-ray[bench]`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sair_ray.bench.report import summarise

FIGURES = {
    "p99_steady.png": ("p99_steady_ms", "steady-state p99 latency (ms, log)", True),
    "cost_effective.png": ("usd_per_1k_effective", "effective $ per 1 000 requests", False),
}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_figures(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                  sla_ms: dict[str, float] | None = None) -> list[Path]:
    """One PNG per metric in FIGURES under `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    apps = list(dict.fromkeys(s["app"] for s in summary))
    patterns = list(dict.fromkeys(s["pattern"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    value = {(s["app"], s["pattern"], s["method"]): s for s in summary}
    out = []
    for name, (column, label, log) in FIGURES.items():
        fig, axes = plt.subplots(1, len(apps), figsize=(4.2 * max(len(apps), 2), 4.0),
                                 squeeze=False)
        width = 0.8 / max(len(methods), 1)
        for ax, app in zip(axes[0], apps, strict=True):
            for j, method in enumerate(methods):
                ys = [value.get((app, p, method), {}).get(column, math.nan) for p in patterns]
                xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(patterns))]
                ax.bar(xs, ys, width, label=method)
            if log:
                ax.set_yscale("log")
            if sla_ms and app in sla_ms and column.startswith("p99"):
                ax.axhline(sla_ms[app], color="black", linestyle="--", linewidth=1)
            if max(len(p) for p in patterns) > 10:  # a trace or workload file's name
                ax.set_xticks(range(len(patterns)), patterns, rotation=20, ha="right",
                              fontsize=8)
            else:
                ax.set_xticks(range(len(patterns)), patterns)
            ax.set_title(app.replace("_", " "))
            ax.set_ylabel(label)
        # one legend under all panels, so it never hides a bar
        handles, labels = axes[0][0].get_legend_handles_labels()
        width_in = fig.get_size_inches()[0]
        label_in = 0.06 * max(len(m) for m in methods) + 0.4   # ~ a label at fontsize 7
        ncol = max(1, min(len(methods), int(width_in // label_in)))
        legend_rows = math.ceil(len(methods) / ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.05 + 0.05 * legend_rows, 1, 1))
        path = Path(out_dir) / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
