"""`sair report`: one self-contained HTML page (figures embedded as base64 PNG, also
written beside it as files) from a decision log.

Figures: p99 vs SLA and arrival rate over time; replicas, GPU rate and cost rate per stage;
reward and its terms (docs/algorithm.md §3); exploration probes vs policy decisions; the
latency/cost outcomes SAIR remembered, coloured by time, with their Pareto frontier. The
outcome of the action chosen in round t is what round t+1 observed (that is what its
reward scored).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray.report.explain import REWARD_TERMS, action_text, source_kind
from sair_ray.report.records import DecisionRecords, num

REPORT_NAME = "report.html"
EPOCH_MIN = 1e9  # a log time above this is wall-clock epoch seconds (a live controller)


def wall_clock(t: float) -> bool:
    """Live logs carry epoch seconds; simulator runs carry virtual seconds from 0."""
    return bool(np.isfinite(t) and t > EPOCH_MIN)


def utc(t: float, fmt: str = "%H:%M:%S") -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt)


def time_axis(t: np.ndarray) -> tuple[np.ndarray, str]:
    """Decision times as minutes since the first round, and the axis label saying when
    that was: the wall-clock start (UTC) for a live log, the simulated second otherwise."""
    finite = t[np.isfinite(t)]
    if not len(finite):
        return t, "minutes"
    t0 = float(finite.min())
    minutes = (t - t0) / 60.0
    if wall_clock(t0):
        return minutes, f"minutes since {utc(t0, '%Y-%m-%d %H:%M:%S')} UTC"
    return minutes, f"minutes since the first round (simulated t = {t0:,.0f} s)"


def time_span(t: np.ndarray) -> str:
    """The log's time span for the summary table: wall-clock times (UTC) for a live log,
    simulated seconds otherwise, and its length in minutes."""
    finite = t[np.isfinite(t)]
    if not len(finite):
        return "-"
    t0, t1 = float(finite.min()), float(finite.max())
    length = f"{(t1 - t0) / 60:,.1f} min"
    if wall_clock(t0):
        day = utc(t0, "%Y-%m-%d ")
        return f"{day}{utc(t0)} - {utc(t1)} UTC ({length})"
    return f"simulated t = {t0:,.0f} - {t1:,.0f} s ({length})"


@dataclass(frozen=True)
class Series:
    """The log as columns, one entry per round (NaN where a value is missing)."""

    t: np.ndarray
    p99: np.ndarray
    sla: np.ndarray
    arrival: np.ndarray
    cost: np.ndarray
    probe: np.ndarray           # bool: forced exploration round
    acted: np.ndarray           # bool: the validated action changed something
    clamps: np.ndarray          # validator clamps per round
    replicas: dict[str, np.ndarray]
    rate: dict[str, np.ndarray]  # GPU stages only
    reward: dict[str, np.ndarray]  # total and each term

    @classmethod
    def of(cls, decisions: list[dict[str, Any]]) -> Series:
        ctxs = [d.get("context") or {} for d in decisions]
        stages: list[str] = []
        gpu: list[str] = []
        for c in ctxs:
            for s in c.get("stages", []):
                if s["name"] not in stages:
                    stages.append(s["name"])
                if s.get("kind") == "gpu" and s["name"] not in gpu:
                    gpu.append(s["name"])

        def col(f: Callable[[dict[str, Any]], Any], items: list[dict[str, Any]]) -> np.ndarray:
            return np.array([num(f(x)) for x in items], dtype=float)

        def key_col(key: str, items: list[dict[str, Any]]) -> np.ndarray:
            return col(lambda x: x.get(key), items)

        def stage_col(name: str, key: str) -> np.ndarray:
            return np.array([num(next((s.get(key) for s in c.get("stages", [])
                                       if s["name"] == name), None)) for c in ctxs])

        rewards = [d.get("reward") or {} for d in decisions]
        return cls(
            t=col(lambda d: d.get("time"), decisions),
            p99=col(lambda c: c.get("p99_ms"), ctxs),
            sla=col(lambda c: c.get("sla_ms"), ctxs),
            arrival=col(lambda c: c.get("arrival_rate"), ctxs),
            cost=col(lambda c: c.get("cost_rate"), ctxs),
            probe=np.array([source_kind(d) == "probe" for d in decisions], dtype=bool),
            acted=np.array([action_text(d.get("action") or {}) != "no-op (hold)"
                            for d in decisions], dtype=bool),
            clamps=np.array([len(d.get("clamps") or []) for d in decisions], dtype=int),
            replicas={n: stage_col(n, "replicas") for n in stages},
            rate={n: stage_col(n, "rate") for n in gpu},
            reward={k: key_col(k, rewards) for k in ("total", *REWARD_TERMS)},
        )


def outcomes(decisions: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(time, p99 ms, cost $/h) of the outcomes SAIR remembered, and whether they are the
    remembered ones (True) or, for a run without memory, every rewarded outcome (False)."""
    rows, stored_rows = [], []
    for d, nxt in zip(decisions, decisions[1:], strict=False):
        r, ctx = d.get("reward"), nxt.get("context") or {}
        if not r or nxt.get("round") != d.get("round", -2) + 1:
            continue
        row = (num(d.get("time")), num(ctx.get("p99_ms")), num(ctx.get("cost_rate")))
        rows.append(row)
        if r.get("stored"):
            stored_rows.append(row)
    chosen, remembered = (stored_rows, True) if stored_rows else (rows, False)
    a = np.array(chosen, dtype=float).reshape(-1, 3)
    return a[:, 0], a[:, 1], a[:, 2], remembered


def frontier(lat: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both latency and cost, by latency."""
    order = np.lexsort((cost, lat))
    out, best = [], np.inf
    for i in order:
        if np.isfinite(lat[i]) and cost[i] < best:
            out.append(i)
            best = cost[i]
    return np.array(out, dtype=int)


def summary(recs: DecisionRecords, s: Series) -> list[tuple[str, str]]:
    n = len(s.t)
    ok = np.isfinite(s.p99) & np.isfinite(s.sla)
    rewarded = np.isfinite(s.reward["total"])

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    return [
        ("decision log", str(recs.path)), ("app", recs.app or "?"), ("rounds", str(n)),
        ("time span", time_span(s.t) if n else "-"),
        ("exploration probes", f"{int(s.probe.sum())} ({pct(s.probe.mean())})" if n else "0"),
        ("policy decisions", str(int((~s.probe).sum()))),
        ("rounds that changed the allocation", str(int(s.acted.sum()))),
        ("validator clamps", f"{int(s.clamps.sum())} in {int((s.clamps > 0).sum())} rounds"),
        ("rounds over SLA", pct(float((s.p99[ok] > s.sla[ok]).mean())) if ok.any() else "-"),
        ("median p99", f"{np.nanmedian(s.p99):,.0f} ms" if ok.any() else "-"),
        ("mean cost rate", f"${np.nanmean(s.cost):.2f}/h" if np.isfinite(s.cost).any()
         else "-"),
        ("mean reward", f"{np.nanmean(s.reward['total'][rewarded]):+.3f}" if rewarded.any()
         else "-"),
    ]


def _figures(s: Series, decisions: list[dict[str, Any]]) -> dict[str, tuple[str, Any]]:
    """name -> (caption, matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a controller or CI machine
    import matplotlib.pyplot as plt

    figs: dict[str, tuple[str, Any]] = {}
    t, xlabel = time_axis(s.t)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    a1.plot(t, s.p99, label="p99 latency", color="tab:blue")
    a1.plot(t, s.sla, "--", label="SLA", color="tab:red")
    over = s.p99 > s.sla
    a1.scatter(t[over], s.p99[over], s=10, color="tab:red", zorder=3, label="SLA violated")
    if np.nanmax(s.p99, initial=0) > 20 * np.nanmin(s.sla, initial=1):
        a1.set_yscale("log")  # a backlog's seconds would flatten the in-SLA part
    a1.set_ylabel("ms")
    a1.legend(loc="upper right")
    a2.plot(t, s.arrival, color="tab:green")
    a2.set_ylabel("arrival req/s")
    a2.set_xlabel(xlabel)
    figs["latency"] = ("End-to-end p99 latency vs SLA, and the arrival rate", fig)

    n_rows = 3 if s.rate else 2
    fig, axes = plt.subplots(n_rows, 1, figsize=(9, 2.4 * n_rows + 0.5), sharex=True)
    for name, r in s.replicas.items():
        axes[0].step(t, r, where="post", label=name)
    axes[0].set_ylabel("replicas")
    axes[0].legend(loc="upper left", fontsize="small")
    if s.rate:
        for name, r in s.rate.items():
            axes[1].step(t, r, where="post", label=name)
        axes[1].set_ylabel("GPU rate ratio")
        axes[1].set_ylim(0, 1.05)
        axes[1].legend(loc="lower left", fontsize="small")
    axes[-1].plot(t, s.cost, color="tab:brown")
    axes[-1].set_ylabel("cost $/h")
    axes[-1].set_xlabel(xlabel)
    figs["allocation"] = ("Replicas and GPU rate per stage, and the cost rate", fig)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    a1.plot(t, s.reward["total"], color="black", label="reward R")
    a1.axhline(0, color="grey", lw=0.5)
    a1.set_ylabel("R")
    a1.legend(loc="lower right")
    for k in REWARD_TERMS:
        sign = -1.0 if k == "p_sla" else 1.0  # the SLA penalty is subtracted in R
        a2.plot(t, sign * s.reward[k], label=("-p_sla" if k == "p_sla" else k), lw=1)
    a2.axhline(0, color="grey", lw=0.5)
    a2.set_ylabel("term")
    a2.set_xlabel(f"{xlabel}, of the rewarded action")
    a2.legend(loc="lower right", fontsize="small", ncol=5)
    figs["reward"] = ("Reward of each round's action and its terms (docs/algorithm.md §3)", fig)

    fig, ax = plt.subplots(figsize=(9, 2.8))
    probes, policy = s.probe, ~s.probe
    ax.plot(t, np.cumsum(policy), label="policy decisions", color="tab:blue")
    ax.plot(t, np.cumsum(probes), label="exploration probes", color="tab:purple")
    ax.plot(t, np.cumsum(s.acted), ":", label="rounds that acted", color="tab:grey")
    ax.scatter(t[probes], np.cumsum(probes)[probes], s=12, color="tab:purple")
    ax.set_ylabel("cumulative rounds")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left")
    figs["decisions"] = ("Exploration probes vs policy decisions", fig)

    ot, olat, ocost, remembered = outcomes(decisions)
    fig, ax = plt.subplots(figsize=(7, 5))
    if len(ot):
        # the same clock as the other figures: minutes since the first round
        t0 = float(np.nanmin(s.t)) if np.isfinite(s.t).any() else 0.0
        sc = ax.scatter(olat, ocost, c=(ot - t0) / 60.0, cmap="viridis", s=22)
        fig.colorbar(sc, ax=ax, label=xlabel)
        f = frontier(olat, ocost)
        ax.step(olat[f], ocost[f], where="post", color="tab:red", label="Pareto frontier")
        ax.scatter(olat[f], ocost[f], facecolors="none", edgecolors="tab:red", s=60)
        if np.nanmax(olat) > 20 * max(np.nanmin(olat), 1e-9):
            ax.set_xscale("log")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no rewarded outcomes yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("cost ($/h)")
    what = "remembered" if remembered else "observed (this run kept no memory)"
    figs["pareto"] = (f"Latency/cost outcomes {what}, coloured by time, and their Pareto "
                      "frontier", fig)
    return figs


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;
text-align:left}figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555}"""


def write_report(recs: DecisionRecords, out_dir: str | Path, *, note: str = "") -> Path:
    """Write report.html (figures embedded) and the figures as PNG files into `out_dir`.
    `note` goes into the title, in parentheses (the demo: what the pipeline computes
    with)."""
    if not recs.decisions:
        raise ValueError(f"{recs.path}: no decisions logged; nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = Series.of(recs.decisions)
    body = []
    for name, (caption, fig) in _figures(s, recs.decisions).items():
        png = _png(fig)
        (out / f"{name}.png").write_bytes(png)
        b64 = base64.b64encode(png).decode()
        body.append(f'<figure id="{name}"><img alt="{html.escape(caption)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}'
                    f' (<a href="{name}.png">{name}.png</a>)</figcaption></figure>')
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in summary(recs, s))
    title = f"SAIR report: {recs.app or recs.path.name}" + (f" ({note})" if note else "")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table>{''.join(body)}</body></html>")
    path = out / REPORT_NAME
    path.write_text(page)
    return path
