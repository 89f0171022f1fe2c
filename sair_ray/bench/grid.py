"""The benchmark grid: methods x apps x patterns x seeds, each run on the simulator through
the same `Controller` + `run_virtual` loop SAIR uses (explore=False, no memory).

Workload patterns, relative to the mean rate `r` of the app profile's default workload:

| pattern | workload |
|---|---|
| poisson | Poisson at `r` |
| ramp | linear ramp from 0.3 r to 1.5 r over the whole run (mean 0.9 r) |
| burst | 0.6 r, with spikes of 2.5 r for the first 2 min of every 10 min (mean 0.98 r) |

Steady state: every run starts at the profile's initial allocation, so whole-run figures
include the start-up backlog. The `*_steady` columns cover [warmup, end) with warmup =
min(20 % of the run, 15 min); there, SLA attainment counts drops and errors as misses.

Validator: baselines carry their own stabilisation rules (HPA's down window, the
threshold cooldown, VPA's update policy, the oracle's plan), so they run with a permissive
validator that does not add SAIR's step limits and cooldowns on top of them: replica step
8, CPU step 64 000 m, memory step 1 048 576 MB, GPU rate step 1.0, cooldowns 0 s. The
per-stage limits (replicas 1-8, GPU rate 0.1-1.0) and the cluster capacity of the profile
are kept (`PERMISSIVE_VALIDATOR`).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sair_ray.backends.sim import SimBackend
from sair_ray.baselines import BASELINES, make_baseline
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.sim.profiles import Profile, list_profiles, load_profile
from sair_ray.sim.workloads import Burst, Poisson, Ramp, Workload

log = logging.getLogger(__name__)

APPS: tuple[str, ...] = tuple(list_profiles())
METHODS: tuple[str, ...] = BASELINES
PATTERNS: tuple[str, ...] = ("poisson", "ramp", "burst")

PERMISSIVE_VALIDATOR: dict[str, Any] = {
    "validator.max_replica_step": 8,
    "validator.max_cpu_step_m": 64_000,
    "validator.max_mem_step_mb": 1_048_576,
    "validator.max_rate_step": 1.0,
    "validator.cooldown_up_s": 0.0,
    "validator.cooldown_down_s": 0.0,
}

RAMP_FROM, RAMP_TO = 0.3, 1.5
# Every run starts at the profile's initial allocation; the start-up backlog would dominate
# a whole-run p99, so steady-state figures leave out the first fifth of the run (<= 15 min).
WARMUP_FRACTION, WARMUP_MAX_S = 0.2, 900.0
BURST_BASE, BURST_SPIKE, BURST_PERIOD_S, BURST_SPIKE_S = 0.6, 2.5, 600.0, 120.0


class BenchError(ValueError):
    """A bad grid request (unknown app, method or pattern; bad counts)."""


@dataclass(frozen=True)
class Scenario:
    app: str
    pattern: str
    seed: int
    method: str
    hours: float = 1.0


@dataclass
class GridResult:
    rows: list[dict[str, Any]] = field(default_factory=list)   # in grid order
    interrupted: bool = False
    failed: list[tuple[Scenario, str]] = field(default_factory=list)
    total: int = 0


def _check(kind: str, values: Iterable[str], allowed: Sequence[str]) -> list[str]:
    vals = list(values)
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise BenchError(f"unknown {kind} {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(allowed)}")
    if not vals:
        raise BenchError(f"no {kind} given; allowed: {', '.join(allowed)}")
    return vals


def build_grid(apps: Iterable[str] = APPS, patterns: Iterable[str] = PATTERNS,
               methods: Iterable[str] = METHODS, seeds: int | Iterable[int] = 1,
               hours: float = 1.0) -> list[Scenario]:
    """Every (app, pattern, seed, method); `seeds` is a count (0..n-1) or explicit seeds."""
    a = _check("app", apps, APPS)
    p = _check("pattern", patterns, PATTERNS)
    m = _check("method", methods, METHODS)
    s = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not s:
        raise BenchError("need at least one seed")
    if not (math.isfinite(hours) and hours > 0):
        raise BenchError(f"hours must be > 0 (got {hours})")
    return [Scenario(app, pat, seed, meth, hours)
            for app in a for pat in p for seed in s for meth in m]


def make_workload(profile: Profile, pattern: str, duration_s: float) -> Workload:
    """The pattern's workload, scaled to the mean rate of the profile's default workload."""
    r = profile.default_workload().mean_rate(0.0, duration_s)
    if pattern == "poisson":
        return Poisson(rate=r)
    if pattern == "ramp":
        return Ramp(start_rate=RAMP_FROM * r, end_rate=RAMP_TO * r, duration_s=duration_s)
    if pattern == "burst":
        return Burst(base=BURST_BASE * r, spike=BURST_SPIKE * r, period_s=BURST_PERIOD_S,
                     spike_s=BURST_SPIKE_S)
    raise BenchError(f"unknown pattern {pattern!r}; allowed: {', '.join(PATTERNS)}")


def bench_config(seed: int) -> SAIRConfig:
    return SAIRConfig().replace(seed=seed, **PERMISSIVE_VALIDATOR)


def _steady_attainment(completed: int, drops: int, errors: int, violations: int) -> float:
    """Share of the window's requests that met the SLA. Unlike `sla_attainment`, drops and
    errors count as misses (the simulator's violations include them), and so do requests
    still in flight past the SLA when the run ends (conservative: they are not in the
    denominator)."""
    n = completed + drops + errors
    return max(0.0, 1.0 - violations / n) if n else float("nan")


def run_one(sc: Scenario) -> dict[str, Any]:
    """One run; returns its result row (see `sair_ray.bench.report` for the columns)."""
    t0 = time.perf_counter()
    profile = load_profile(sc.app)
    duration = sc.hours * 3600.0
    workload = make_workload(profile, sc.pattern, duration)
    cfg = bench_config(sc.seed)
    backend = SimBackend(profile, workload, seed=sc.seed, cost=cfg.cost,
                         retain_s=duration + 60.0)  # keeps the steady-state window readable
    params: dict[str, Any] = {}
    if sc.method != "static":
        params["validator"] = cfg.validator
    if sc.method == "vpa":
        params["profile"] = profile
    if sc.method == "oracle":
        params |= {"profile": profile, "workload": workload, "prices": cfg.cost,
                   "seed": sc.seed}
    ctl = Controller(backend, make_baseline(sc.method, **params), cfg, explore=False,
                     learn=False)
    try:
        decisions = run_virtual(ctl, backend, until=duration)
    finally:
        ctl.close()
    tot = backend.totals()
    warmup = min(WARMUP_FRACTION * duration, WARMUP_MAX_S)
    steady = backend.window(warmup, duration)
    # Replicas each stage had at the start of every round (what the controller observed).
    replicas: dict[str, float] = {}
    for st in profile.pipeline.stage_names:
        vals = [s["replicas"] for d in decisions for s in d.context["stages"]
                if s["name"] == st]
        replicas[st] = float(np.mean(vals)) if vals else float("nan")
    return {
        **asdict(sc),
        "p99_ms": tot.p99_ms, "p50_ms": tot.p50_ms,
        "sla_attainment": tot.within_sla / tot.completed if tot.completed else float("nan"),
        "warmup_s": warmup, "p99_steady_ms": steady.p99_ms, "p50_steady_ms": steady.p50_ms,
        "sla_attainment_steady": _steady_attainment(steady.completed, steady.drops,
                                                    steady.errors, steady.sla_violations),
        "drops_steady": steady.drops,
        "arrivals": tot.arrivals, "completed": tot.completed, "drops": tot.drops,
        "errors": tot.errors,
        "usd_per_1k_billable": tot.usd_per_1000_billable,
        "usd_per_1k_effective": tot.usd_per_1000_effective,
        "replicas_mean": float(sum(replicas.values())),
        "replicas_by_stage": replicas,
        "rounds": len(decisions), "actions": len(decisions) - ctl.counters.noops,
        "wall_s": time.perf_counter() - t0,
    }


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_grid(scenarios: Sequence[Scenario], workers: int = 2,
             on_result: Callable[[Scenario, dict[str, Any] | None], None] | None = None
             ) -> GridResult:
    """Run every scenario (in `workers` processes; 1 runs them here, in order).
    Ctrl-C stops cleanly: pending runs are cancelled, runs in flight finish, and the
    result holds every finished row with `interrupted=True`. A run that raises is logged
    and listed in `failed`; the others go on."""
    res = GridResult(total=len(scenarios))
    done: dict[int, dict[str, Any]] = {}

    def finish(i: int, row: dict[str, Any] | None, error: str | None = None) -> None:
        if row is not None:
            done[i] = row
        else:
            log.error("run %s failed: %s", scenarios[i], error)
            res.failed.append((scenarios[i], error or ""))
        if on_result is not None:
            on_result(scenarios[i], row)

    try:
        if workers <= 1:
            for i, sc in enumerate(scenarios):
                try:
                    row = run_one(sc)
                except Exception as e:  # one broken run must not lose the grid
                    finish(i, None, repr(e))
                else:
                    finish(i, row)
        else:
            _run_pool(scenarios, workers, finish)
    except KeyboardInterrupt:
        res.interrupted = True
        log.warning("interrupted: keeping %d of %d finished runs", len(done), len(scenarios))
    res.rows = [done[i] for i in sorted(done)]
    return res


def _run_pool(scenarios: Sequence[Scenario], workers: int,
              finish: Callable[[int, dict[str, Any] | None, str | None], None]) -> None:
    seen: set[int] = set()

    def collect(f: Future[dict[str, Any]], i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        try:
            row = f.result()
        except Exception as e:
            finish(i, None, repr(e))
        else:
            finish(i, row, None)

    ex = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    futures: dict[Future[dict[str, Any]], int] = {}
    try:
        futures = {ex.submit(run_one, sc): i for i, sc in enumerate(scenarios)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                collect(f, futures[f])
    except KeyboardInterrupt:
        ex.shutdown(wait=True, cancel_futures=True)
        for f, i in futures.items():   # runs that were in flight have finished now
            if f.done() and not f.cancelled():
                collect(f, i)
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
