"""Learning curve: SLA misses, cost and probes of SAIR per spike, with and without learning.

    .venv/bin/python benchmarks/bench_learning_curve.py [--apps image_classification ...]
        [--pattern burst] [--hours 4] [--seeds 3] [--workers 2]
        [--out docs/results/learning-curve] [--quick]

The target it measures: "4 simulated hours of burst per app; per-spike SLA misses and cost
per spike fall from the first spikes to the last" (the learning extension,
docs/algorithm.md §10).

Each (app, seed) runs `sair-retrieval` on the simulator twice, through the bench's own
scenario, workload, config and policy helpers (`sair_ray.bench.grid`), with the same seed
(the same requests, `SimBackend`), one arm with `learning.enabled` true and one with it
false, set explicitly as a dotted override of the bench's SAIR config
(`SAIRConfig.replace`, the machinery of `sair_ray.config.with_ablation`), so the result does
not depend on the default. Each run starts with an empty experience memory.

Each run is cut into the periods of the pattern's workload (`period_s` and `phase_s` of
`sair_ray.workloads.Burst`: 10 min, a 2-min spike at the start of each, for `burst`); only
whole periods inside the run count. Per period:

- attainment: share of the period's requests (completed, dropped or failed in it) that met
  the SLA, drops and errors counted as misses (as the bench's steady attainment);
- missed requests: those requests that missed the SLA (drops and errors included);
- missed windows: decision-interval windows (30 s) of the period whose p99 was over the SLA
  or that dropped or failed a request (the learner's own `fail` verdict);
- cost: $ the simulator's cost accounting charged over the period (effective cost, what the
  reward sees by default; billable in results.json);
- probes: exploration rounds (docs/algorithm.md §5) decided in the period.

Means over seeds with a 95 % confidence interval (Student t, n - 1 degrees of freedom).
Verdict per app: with learning, do missed requests and cost per period fall from the first
two periods to the last two?

Writes results.md, results.json (every run's periods) and learning_curve.png (needs
matplotlib) into `--out`. `--quick`: image classification, 1 seed, 0.5 h (3 periods), in a
few seconds (tests/bench/test_learning_curve.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sair_ray.backends.sim import SimBackend  # noqa: E402
from sair_ray.bench.grid import (  # noqa: E402
    APPS,
    PATTERNS,
    BenchError,
    Scenario,
    _steady_attainment,
    make_run_policy,
    resolve_apps,
    sair_config,
    scenario_workload,
)
from sair_ray.bench.stats import mean_ci  # noqa: E402
from sair_ray.controller import run_virtual  # noqa: E402
from sair_ray.files import MEMORY_DIR, ControllerFiles  # noqa: E402
from sair_ray.profiles import load_profile  # noqa: E402
from sair_ray.session import Session  # noqa: E402
from sair_ray.workloads import Workload  # noqa: E402

METHOD = "sair-retrieval"
# The two arms: dotted overrides of the bench's SAIR config, set explicitly.
ARMS: dict[str, dict[str, Any]] = {
    "learning": {"learning.enabled": True},
    "no learning": {"learning.enabled": False},
}
DEFAULT_OUT = "docs/results/learning-curve"
QUICK_APP, QUICK_HOURS = "image_classification", 0.5
EDGE = 2    # periods compared at each end for the verdict


# -- one run ------------------------------------------------------------------------------------
def periods_of(workload: Workload, duration_s: float) -> list[tuple[float, float]]:
    """The whole periods of a periodic workload inside [0, duration_s)."""
    period = getattr(workload, "period_s", None)
    if not period:
        raise BenchError(f"workload {workload.kind!r} has no period (period_s); use a "
                         "periodic pattern such as burst")
    t = float(getattr(workload, "phase_s", 0.0)) % period
    out = []
    while t + period <= duration_s + 1e-9:
        out.append((t, t + period))
        t += period
    return out


def run_arm(app: str, profile_path: str, pattern: str, seed: int, hours: float,
            arm: str) -> dict[str, Any]:
    """One run of `sair-retrieval` with the arm's overrides; its metrics per period."""
    t0 = time.perf_counter()
    sc = Scenario(app, pattern, seed, METHOD, hours, profile=profile_path)
    profile = load_profile(sc.profile or sc.app)
    workload = scenario_workload(sc, profile)
    duration = hours * 3600.0
    periods = periods_of(workload, duration)
    cfg = sair_config(seed).replace(**ARMS[arm])
    policy = make_run_policy(sc, cfg, profile, workload)
    backend = SimBackend(profile, workload, seed=seed, cost=cfg.cost,
                         retain_s=duration + 60.0)   # every period stays readable after
    with tempfile.TemporaryDirectory(prefix="sair-learning-curve-") as tmp:
        session = Session(backend, policy, cfg, learns=True,
                          files=ControllerFiles(memory=Path(tmp) / MEMORY_DIR))
        try:
            decisions = run_virtual(session.controller, backend, until=duration)
        finally:
            session.close()
    sla_ms = profile.pipeline.sla_ms
    step = cfg.loop.decision_interval_s
    probe_times = np.array([d.time for d in decisions if d.probed], dtype=float)
    rows = []
    for k, (p0, p1) in enumerate(periods):
        w = backend.window(p0, p1)
        missed_windows = n_windows = 0
        t = p0
        while t + step <= p1 + 1e-9:
            s = backend.window(t, t + step)
            n_windows += 1
            missed_windows += s.p99_ms > sla_ms or s.drops > 0 or s.errors > 0
            t += step
        rows.append({
            "period": k + 1, "start_s": p0, "end_s": p1,
            "start": hmm(p0), "end": hmm(p1),
            "requests": w.completed + w.drops + w.errors,
            "attainment": _steady_attainment(w.completed, w.drops, w.errors,
                                             w.sla_violations),
            "missed_requests": w.sla_violations, "drops": w.drops, "errors": w.errors,
            "missed_windows": missed_windows, "windows": n_windows,
            "cost_usd": w.cost_effective_usd, "cost_billable_usd": w.cost_billable_usd,
            "probes": int(np.sum((probe_times >= p0) & (probe_times < p1))),
        })
    return {"app": app, "pattern": pattern, "seed": seed, "hours": hours, "arm": arm,
            "overrides": ARMS[arm], "period_s": periods[0][1] - periods[0][0] if periods
            else float("nan"), "rounds": len(decisions),
            "probes": sum(d.probed for d in decisions), "periods": rows,
            "wall_s": time.perf_counter() - t0}


def hmm(seconds: float) -> str:
    """Simulated time since the start as h:mm (or h:mm:ss when not whole minutes)."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}" + (f":{sec:02d}" if sec else "")


# -- aggregation ----------------------------------------------------------------------------
METRICS = ("attainment", "missed_requests", "missed_windows", "cost_usd", "probes")


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(app, arm) -> per period: start, end, seeds and (mean, CI) of every metric."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    keys = sorted({(r["app"], r["arm"]) for r in runs})
    for key in keys:
        group = [r for r in runs if (r["app"], r["arm"]) == key]
        n = min(len(r["periods"]) for r in group)
        rows = []
        for k in range(n):
            ps = [r["periods"][k] for r in group]
            row: dict[str, Any] = {"period": k + 1, "start": ps[0]["start"],
                                   "end": ps[0]["end"], "seeds": len(ps)}
            for m in METRICS:
                row[m] = mean_ci([float(p[m]) for p in ps])
            rows.append(row)
        out[key] = rows
    return out


def verdict(app: str, agg: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """One line: mean of the first EDGE periods vs the last EDGE, both arms; 'yes' only if
    missed requests and cost per period both fall with learning."""
    parts = []
    miss_falls = cost_falls = False
    e = EDGE
    for arm in ARMS:
        rows = agg.get((app, arm))
        if not rows or len(rows) < 2:
            continue
        e = min(EDGE, len(rows) // 2)
        first, last = rows[:e], rows[-e:]

        def avg(rs: list[dict[str, Any]], m: str) -> float:
            return float(np.mean([r[m][0] for r in rs]))

        mf, ml = avg(first, "missed_requests"), avg(last, "missed_requests")
        af, al = avg(first, "attainment"), avg(last, "attainment")
        cf, cl = avg(first, "cost_usd"), avg(last, "cost_usd")
        if arm == "learning":
            miss_falls, cost_falls = ml < mf, cl < cf
        parts.append(f"{arm}: missed requests/period {mf:.0f} → {ml:.0f}, attainment "
                     f"{af:.3f} → {al:.3f}, cost/period ${cf:.3f} → ${cl:.3f}")
    yes = miss_falls and cost_falls
    head = (f"**{app}**: {'yes' if yes else 'no'}; with learning, misses per period "
            f"{'fall' if miss_falls else 'do not fall'} and cost per period "
            f"{'falls' if cost_falls else 'does not fall'} (mean of the first {e} vs the "
            f"last {e} periods)")
    return head + "; " + "; ".join(parts) + "."


# -- output ---------------------------------------------------------------------------------
def _fmt(mc: tuple[float, float], digits: int) -> str:
    m, h = mc
    if not math.isfinite(m):
        return "n/a"
    s = f"{m:.{digits}f}"
    return s + (f" ± {h:.{digits}f}" if math.isfinite(h) else "")


def write_markdown(path: Path, runs: Sequence[dict[str, Any]], apps: Sequence[str],
                   command: str, elapsed_s: float, generated: datetime) -> list[str]:
    agg = aggregate(runs)
    seeds = sorted({r["seed"] for r in runs})
    hours = runs[0]["hours"] if runs else math.nan
    period = runs[0]["period_s"] if runs else math.nan
    pattern = runs[0]["pattern"] if runs else ""
    now = generated.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdicts = [verdict(a, agg) for a in apps if any((a, arm) in agg for arm in ARMS)]
    lines = [
        "# Learning curve: per-spike SLA misses and cost, with and without learning", "",
        f"Command: `{command}`", "",
        f"Generated {now}; {len(runs)} runs in {elapsed_s:.0f} s wall time. Method "
        f"`{METHOD}`, pattern `{pattern}`, {hours:g} simulated hours, seeds "
        f"{', '.join(map(str, seeds))}; arms: "
        + ", ".join(f"{a} (`{', '.join(f'{k}={v}' for k, v in o.items()).lower()}`)"
                    for a, o in ARMS.items())
        + ". Each run starts with an empty memory.", "",
        f"Per period of the workload ({period / 60:g} min, the spike at its start; times "
        "are simulated h:mm from the start of the run): attainment = share of the "
        "period's requests within the SLA (drops and errors count as misses); missed "
        "windows = 30 s windows with p99 over the SLA or a drop; missed requests = "
        "requests over the SLA, drops and errors included; cost = $ (effective) charged "
        "over the period; probes = exploration rounds. Mean ± half-width of the 95 % "
        "confidence interval over seeds (Student t; none with one seed).", "",
        "## Verdicts", "",
        *[f"- {v}" for v in verdicts], "",
    ]
    for app in apps:
        if not any((app, arm) in agg for arm in ARMS):
            continue
        lines += [f"## {app}", "",
                  "| period | time | arm | seeds | attainment | missed windows "
                  "| missed requests | cost $ | probes |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        n = max(len(agg.get((app, arm), [])) for arm in ARMS)
        for k in range(n):
            for arm in ARMS:
                rows = agg.get((app, arm), [])
                if k >= len(rows):
                    continue
                r = rows[k]
                lines.append(
                    f"| {r['period']} | {r['start']}–{r['end']} | {arm} | {r['seeds']} "
                    f"| {_fmt(r['attainment'], 3)} | {_fmt(r['missed_windows'], 1)} "
                    f"| {_fmt(r['missed_requests'], 0)} | {_fmt(r['cost_usd'], 3)} "
                    f"| {_fmt(r['probes'], 1)} |")
        lines.append("")
    path.write_text("\n".join(lines))
    return verdicts


def write_figure(path: Path, runs: Sequence[dict[str, Any]], apps: Sequence[str]) -> bool:
    """Attainment and cost per period, both arms, one row per app; False without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    agg = aggregate(runs)
    shown = [a for a in apps if any((a, arm) in agg for arm in ARMS)]
    fig, axes = plt.subplots(len(shown), 2, figsize=(11, 2.8 * len(shown) + 0.6),
                             squeeze=False)
    colors = {"learning": "tab:blue", "no learning": "tab:orange"}
    for row, app in zip(axes, shown, strict=True):
        for ax, metric, label in ((row[0], "attainment", "SLA attainment"),
                                  (row[1], "cost_usd", "cost per period ($)")):
            for arm in ARMS:
                rs = agg.get((app, arm), [])
                if not rs:
                    continue
                x = np.array([r["period"] for r in rs])
                m = np.array([r[metric][0] for r in rs])
                h = np.nan_to_num(np.array([r[metric][1] for r in rs]))
                ax.plot(x, m, marker="o", ms=3, color=colors.get(arm), label=arm)
                lo, hi = m - h, m + h
                if metric == "attainment":
                    lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
                ax.fill_between(x, lo, hi, color=colors.get(arm), alpha=0.2, lw=0)
            ax.set_title(f"{app}: {label}", fontsize=10)
            ax.set_xlabel("period (spike) #")
            ax.grid(alpha=0.3)
        row[0].set_ylim(top=1.02)
        row[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Learning curve per spike (mean, 95 % CI band over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--apps", nargs="+", default=list(APPS),
                    help="shipped apps or profile YAML paths (default: all shipped)")
    ap.add_argument("--pattern", default="burst", choices=PATTERNS,
                    help="workload pattern; must be periodic (default burst)")
    ap.add_argument("--hours", type=float, default=4.0, help="simulated hours per run")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_APP}, 1 seed, {QUICK_HOURS} h (a smoke test)")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="run nothing: rewrite results.md and learning_curve.png beside a "
                    "results.json of an earlier run (its command, time and runs)")
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    if args.quick:
        args.apps, args.seeds, args.hours = [QUICK_APP], 1, QUICK_HOURS
    if args.seeds < 1 or not (math.isfinite(args.hours) and args.hours > 0):
        ap.error("need --seeds >= 1 and --hours > 0")
    try:
        apps = resolve_apps(args.apps)
        probe = Scenario(apps[0].name, args.pattern, 0, METHOD, args.hours,
                         profile=apps[0].profile)
        wl = scenario_workload(probe, load_profile(probe.profile or probe.app))
        if len(periods_of(wl, args.hours * 3600.0)) < 2:
            ap.error(f"{args.hours} h holds fewer than 2 whole periods of {args.pattern}")
    except BenchError as e:
        ap.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_learning_curve.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    jobs = [(a.name, a.profile, args.pattern, seed, args.hours, arm)
            for a in apps for seed in range(args.seeds) for arm in ARMS]
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def done(r: dict[str, Any]) -> None:
        runs.append(r)
        print(f"[{len(runs)}/{len(jobs)}] {r['app']} seed {r['seed']} {r['arm']}: "
              f"{len(r['periods'])} periods, {r['probes']} probes, {r['wall_s']:.1f} s "
              f"(elapsed {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    if args.workers <= 1:
        for j in jobs:
            done(run_arm(*j))
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            for f in as_completed([ex.submit(run_arm, *j) for j in jobs]):
                done(f.result())
    elapsed = round(time.perf_counter() - t0, 1)   # as results.json keeps it
    order = {(j[0], j[3], j[5]): i for i, j in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["app"], r["seed"], r["arm"])])
    generated = datetime.now(UTC)
    (out / "results.json").write_text(json.dumps(
        {"command": command, "generated": generated.isoformat(timespec="seconds"),
         "wall_s": elapsed, "runs": runs}, indent=1, allow_nan=True))
    return write_outputs(out, runs, command, elapsed, generated)


def write_outputs(out: Path, runs: list[dict[str, Any]], command: str, elapsed: float,
                  generated: datetime) -> dict[str, Any]:
    names = list(dict.fromkeys(r["app"] for r in runs))
    verdicts = write_markdown(out / "results.md", runs, names, command, elapsed, generated)
    figure = write_figure(out / "learning_curve.png", runs, names)
    if not figure:
        print("matplotlib not installed: no learning_curve.png", file=sys.stderr)
    for v in verdicts:
        print(v)
    print(f"wrote {out / 'results.md'} ({len(runs)} runs, {elapsed:.0f} s)", file=sys.stderr)
    return {"runs": runs, "verdicts": verdicts, "out": str(out), "figure": figure,
            "wall_s": elapsed}


def render(path: Path) -> dict[str, Any]:
    """results.md and the figure again from a results.json (e.g. after a change of the
    verdict or the figure), with the run's own command, time and wall time."""
    data = json.loads(path.read_text())
    return write_outputs(path.parent, data["runs"], data["command"], float(data["wall_s"]),
                         datetime.fromisoformat(data["generated"]))


if __name__ == "__main__":
    main()
