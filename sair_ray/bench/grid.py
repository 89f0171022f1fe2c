"""The benchmark grid: methods x apps x patterns x seeds, each run on the simulator through
the same `Controller` + `run_virtual` loop.

Every method is a policy of `sair_ray.registry`, built by `make_policy` with what the
simulator knows (the profile; the oracle also reads the future workload), and run in a
controller `Session`. Baselines run with explore=False and no memory. SAIR methods (the
policies that learn: `sair`, the LLM policy; `sair-retrieval`, the retrieval-only
selector) run the full SAIR loop: exploration probes, learning into an `ExperienceMemory`
in a fresh temporary directory per run, and SAIR's own validator (docs/algorithm.md §7 step
limits and cooldowns), all seeded by the scenario seed. An ablation (`Scenario.variant`, a name of
`sair_ray.config.ABLATIONS`) changes SAIR's config with `with_ablation`.

Baseline settings: HPA's target and the threshold policy's thresholds come from the
per-app sweep (`sair_ray.bench.tuned.TUNED`, made by `sair bench --sweep`) unless the
grid is built with `tuned=None`; they are recorded in each row's `settings` column.

Workload patterns, relative to the mean rate `r` of the app profile's default workload:

| pattern | workload |
|---|---|
| poisson | Poisson at `r` |
| ramp | linear ramp from 0.3 r to 1.5 r over the whole run (mean 0.9 r) |
| burst | 0.6 r, with spikes of 2.5 r for the first 2 min of every 10 min (mean 0.98 r) |

Your own pipeline and workload: an app may also be a profile YAML path (`resolve_apps`;
the app is named by the profile's `name`, `Scenario.profile` keeps the path), and a grid
may run workloads instead of the patterns (`resolve_workloads`: a pattern name, a
`kind:options` string such as `trace:./t.csv,rate_scale=2.5` or a YAML/JSON workload file,
see `sair_ray.workloads.parse_workload_arg`). Such a workload is absolute, not scaled to the
profile; its name is the `pattern` of the rows and `Scenario.workload` holds its mapping
(JSON). A profile file gets baseline settings only from a tuned file given explicitly.

Steady state: every run starts at the profile's initial allocation, so whole-run figures
include the start-up backlog. The `*_steady` columns cover [warmup, end) with warmup =
min(20 % of the run, 15 min); there, SLA attainment counts drops and errors as misses.

Validator: baselines carry their own stabilisation rules (HPA's down window, the
threshold cooldown, VPA's update policy, the oracle's plan), so they run with a permissive
validator that does not add SAIR's step limits and cooldowns on top of them: replica step
8, CPU step 64 000 m, memory step 1 048 576 MB, GPU rate step 1.0, cooldowns 0 s. The
per-stage limits (replicas 1-8, GPU rate 0.1-1.0) and the cluster capacity of the profile
are kept (`PERMISSIVE_VALIDATOR`).

Decision logs (`sair bench --log-dir DIR`): every run, baselines included (they run
through the same controller), writes its controller's decision log to
`DIR/<app>/<pattern>/<method>[+<ablation>]/seed<N>/decisions.jsonl` (`run_log_path`),
replacing the log of an earlier run of the same scenario; `sair decisions`, `sair report`
and `sair top` read it.

Validator escapes: every round's executed allocation is re-checked against the stage
limits, the step limits and cooldowns of the run's validator, the cluster capacity and
what the next round observed (`sair_ray.bench.checks`); the `validator_escapes` column
counts the rounds that broke any.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray import registry
from sair_ray.backends.sim import SimBackend
from sair_ray.bench.checks import count_escapes
from sair_ray.bench.tuned import TUNED, TunedSettings
from sair_ray.config import ABLATIONS, SAIRConfig, with_ablation
from sair_ray.controller import run_virtual
from sair_ray.decision import Decision
from sair_ray.files import LOG_FILE, MEMORY_DIR, ControllerFiles
from sair_ray.policy.base import Policy
from sair_ray.profiles import Profile, ProfileError, list_profiles, load_profile
from sair_ray.session import Session
from sair_ray.workloads import (
    Burst,
    Poisson,
    Ramp,
    Workload,
    WorkloadError,
    parse_workload_arg,
    workload_from_dict,
)

log = logging.getLogger(__name__)

APPS: tuple[str, ...] = tuple(list_profiles())
SAIR_METHODS: tuple[str, ...] = registry.SAIR_POLICIES   # the methods that learn
METHODS: tuple[str, ...] = registry.BASELINES + SAIR_METHODS
# all but the LLM and the opt-in methods (hindsight-oracle: ~1 s of search per round)
DEFAULT_METHODS: tuple[str, ...] = registry.DEFAULT_BASELINES + ("sair-retrieval",)
ABLATION_APP = "image_classification"           # the paper's ablation table is on it
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
    variant: str = ""                              # SAIR ablation name ("" = full SAIR)
    settings: tuple[tuple[str, float], ...] = ()   # baseline constructor overrides
    profile: str = ""        # profile YAML path ("" = the shipped profile named `app`)
    workload: str = ""       # workload mapping as JSON ("" = the shipped pattern `pattern`)
    config: str = ""         # SAIR config YAML for SAIR runs ("" = the defaults)

    @property
    def label(self) -> str:
        """The method as shown in tables: `sair[no_icl]` for an ablation."""
        return method_label(self.method, self.variant)


def method_label(method: str, variant: str = "") -> str:
    return f"{method}[{variant}]" if variant else method


def run_log_path(log_dir: str | Path, sc: Scenario) -> Path:
    """Where `--log-dir` puts a scenario's decision log. `+`, not the table label's
    brackets, joins an ablation: brackets are glob characters in a shell."""
    method = f"{sc.method}+{sc.variant}" if sc.variant else sc.method
    return Path(log_dir) / sc.app / sc.pattern / method / f"seed{sc.seed}" / LOG_FILE


@dataclass
class GridResult:
    rows: list[dict[str, Any]] = field(default_factory=list)   # in grid order
    interrupted: bool = False
    failed: list[tuple[Scenario, str]] = field(default_factory=list)
    total: int = 0


SCENARIO_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Scenario))
_FIELD_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Scenario)
                                   if f.default is not MISSING}


@dataclass(frozen=True)
class BenchApp:
    """An app of the grid: a shipped profile (`profile` "") or a profile file."""

    name: str
    profile: str = ""          # absolute path of the profile YAML
    has_workload: bool = True  # the profile has a default workload (the patterns scale it)


@dataclass(frozen=True)
class BenchWorkload:
    """A workload of the grid: a shipped pattern (`spec` "") or an absolute workload."""

    name: str
    spec: str = ""             # the mapping for `workload_from_dict`, as JSON
    credit: str = ""           # data credit to print with the results ("" = none)
    ends_at: float | None = None   # when a trace that does not loop runs out (s)


def _is_path(app: str) -> bool:
    # load_profile's rule: a path has a "/" or a YAML suffix, else it is a shipped name
    return "/" in app or app.endswith((".yaml", ".yml"))


def resolve_apps(apps: Iterable[str]) -> list[BenchApp]:
    """Shipped app names and/or profile YAML paths, loaded and checked (the file exists,
    is a valid profile with the `sim:` blocks the simulator needs; no two different
    profiles share a name)."""
    vals = list(apps)
    allowed = f"{', '.join(APPS)} or a profile YAML path"
    bad = [v for v in vals if not _is_path(v) and v not in APPS]
    if bad:
        raise BenchError(f"unknown app {', '.join(map(repr, bad))}; allowed: {allowed}")
    if not vals:
        raise BenchError(f"no app given; allowed: {allowed}")
    out: list[BenchApp] = []
    for v in vals:
        out.append(_profile_app(v) if _is_path(v) else BenchApp(v))
    first: dict[str, tuple[str, BenchApp]] = {}
    for v, a in zip(vals, out, strict=True):
        given, prev = first.setdefault(a.name, (v, a))
        if prev.profile != a.profile:
            raise BenchError(f"apps {given!r} and {v!r} are both named {a.name!r}; give each "
                             "profile its own `name:`")
    return out


def _profile_app(v: str) -> BenchApp:
    p = Path(v).expanduser()
    if not p.is_file():
        raise BenchError(f"app {v!r}: no such profile file ({p.resolve()}); give a shipped "
                         f"app ({', '.join(APPS)}) or the path of a profile YAML")
    try:
        prof = load_profile(p)
    except ProfileError as e:
        hint = ""
        if ".sim" in str(e) and "docs/simulator.md" not in str(e):  # the loader's own hint
            hint = ("; the simulator needs a `sim:` block in every stage (service time, "
                    "scaling, cold start: see docs/simulator.md, or copy one from a shipped "
                    "profile in sair_ray/profiles/)")
        raise BenchError(f"app {v!r}: {e}{hint}") from None
    if "/" in prof.name:
        raise BenchError(f"app {v!r}: its name {prof.name!r} has a '/'; rename it")
    return BenchApp(prof.name, str(p.resolve()), prof.workload_spec is not None)


def resolve_workloads(workloads: Iterable[str | BenchWorkload]) -> list[BenchWorkload]:
    """Workloads named on the command line (`sair bench --workload`): a shipped pattern
    name, or what `sair_ray.workloads.parse_workload_arg` takes (built now, so a bad option
    or trace file fails here); resolved ones pass through. Two different workloads may not
    share a name."""
    vals = list(workloads)
    if not vals:
        raise BenchError(f"no workload given; allowed: {', '.join(PATTERNS)} or a workload")
    out: list[BenchWorkload] = []
    for v in vals:
        if isinstance(v, BenchWorkload) or v.strip() in PATTERNS:
            out.append(v if isinstance(v, BenchWorkload) else BenchWorkload(v.strip()))
            continue
        try:
            nw = parse_workload_arg(v)
        except WorkloadError as e:
            raise BenchError(f"workload {e}" + (f" (or a pattern: {', '.join(PATTERNS)})"
                                                if "not a workload" in str(e) else "")
                             ) from None
        out.append(BenchWorkload(nw.name, json.dumps(nw.spec, sort_keys=True), nw.credit,
                                 nw.ends_at))
    first: dict[str, tuple[str, BenchWorkload]] = {}
    for v, w in zip(vals, out, strict=True):
        shown = v if isinstance(v, str) else w.name
        given, prev = first.setdefault(w.name, (shown, w))
        if prev.spec != w.spec:
            raise BenchError(f"workloads {given!r} and {shown!r} are both named {w.name!r}; "
                             "rename one (a workload file takes a `name:`)")
    return out


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
               methods: Iterable[str] = DEFAULT_METHODS, seeds: int | Iterable[int] = 1,
               hours: float = 1.0, *, variants: Iterable[str] = ("",),
               tuned: TunedSettings | None = TUNED,
               workloads: Iterable[str | BenchWorkload] | None = None) -> list[Scenario]:
    """Every (app, pattern, seed, method, variant); `seeds` is a count (0..n-1) or explicit
    seeds. `variants` are SAIR ablation names ("" = full SAIR) and need SAIR methods.
    Apps are shipped names or profile paths (`resolve_apps`); `workloads`, when given,
    replace the patterns (`resolve_workloads`).
    Baselines named in `tuned` (per app) get its settings; `tuned=None` keeps the defaults;
    the committed TUNED is for the shipped profiles, not for profile files."""
    a = resolve_apps(apps)
    w = _grid_workloads(patterns, workloads, a)
    m = _check("method", [registry.ALIASES.get(x, x) for x in methods], METHODS)
    v = list(variants)
    bad = [x for x in v if x and x not in ABLATIONS]
    if bad:
        raise BenchError(f"unknown ablation {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(ABLATIONS)}")
    if not v:
        raise BenchError("no variant given (use '' for full SAIR)")
    if any(v) and not set(m) <= set(SAIR_METHODS):
        raise BenchError(f"ablations apply to SAIR methods only ({', '.join(SAIR_METHODS)}); "
                         f"got methods {', '.join(m)}")
    s = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not s:
        raise BenchError("need at least one seed")
    if not (math.isfinite(hours) and hours > 0):
        raise BenchError(f"hours must be > 0 (got {hours})")

    def settings(app: BenchApp, method: str) -> tuple[tuple[str, float], ...]:
        if app.profile and tuned is TUNED:
            return ()
        chosen = (tuned or {}).get(app.name, {}).get(method, {})
        return tuple(sorted(chosen.items()))

    return [Scenario(app.name, wl.name, seed, meth, hours, var, settings(app, meth),
                     app.profile, wl.spec)
            for app in a for wl in w for seed in s for meth in m for var in v]


def _grid_workloads(patterns: Iterable[str], workloads: Iterable[str | BenchWorkload] | None,
                    apps: Sequence[BenchApp]) -> list[BenchWorkload]:
    """The grid's workloads: `workloads` when given, else the patterns; the patterns scale
    an app's default workload, so every app needs one."""
    if workloads is None:
        ws = [BenchWorkload(p) for p in _check("pattern", patterns, PATTERNS)]
    else:
        ws = resolve_workloads(workloads)
    scaled = [x.name for x in ws if not x.spec]
    for app in apps:
        if scaled and not app.has_workload:
            raise BenchError(f"app {app.name!r} ({app.profile}) has no default workload, which "
                             f"the patterns ({', '.join(scaled)}) scale: add `workload:` to "
                             "the profile or give a workload (--workload trace:./t.csv)")
    return ws


def build_ablation_grid(ablations: Iterable[str], methods: Iterable[str] = ("sair",),
                        patterns: Iterable[str] = PATTERNS, seeds: int | Iterable[int] = 1,
                        hours: float = 1.0, apps: Iterable[str] = (ABLATION_APP,),
                        with_full: bool = True,
                        workloads: Iterable[str | BenchWorkload] | None = None
                        ) -> list[Scenario]:
    """SAIR variants (names of `sair_ray.config.ABLATIONS`) on image classification, plus
    full SAIR as the reference row unless `with_full` is False."""
    names = list(dict.fromkeys(ablations))
    if not names:
        raise BenchError(f"no ablation given; allowed: {', '.join(ABLATIONS)}")
    variants = ([""] if with_full and "full" not in names else []) + [
        "" if n == "full" else n for n in names]
    return build_grid(apps, patterns, methods, seeds, hours, variants=variants,
                      workloads=workloads)


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


def scenario_workload(sc: Scenario, profile: Profile) -> Workload:
    """The scenario's workload: its mapping when it has one, else its pattern."""
    if sc.workload:
        return workload_from_dict(json.loads(sc.workload), f"workload {sc.pattern}")
    return make_workload(profile, sc.pattern, sc.hours * 3600.0)


def bench_config(seed: int) -> SAIRConfig:
    """Config of a baseline run: the defaults with the permissive validator."""
    return SAIRConfig().replace(seed=seed, **PERMISSIVE_VALIDATOR)


def sair_config(seed: int, variant: str = "", config: str = "") -> SAIRConfig:
    """Config of a SAIR run: the defaults (docs/algorithm.md §7 validator included) or the
    `config` YAML, the ablation's overrides, and no fsync (the memory is a temporary
    directory thrown away after)."""
    base = SAIRConfig.from_yaml(config) if config else SAIRConfig()
    cfg = base.replace(seed=seed, **{"memory.fsync": False})
    return with_ablation(cfg, variant) if variant else cfg


def make_run_policy(sc: Scenario, cfg: SAIRConfig, profile: Profile,
                    workload: Workload) -> Policy:
    """The scenario's policy from the registry, given what the simulator knows; a baseline
    also gets the scenario's settings."""
    params = dict(sc.settings) if not registry.get(sc.method).learns else {}
    return registry.make_policy(sc.method, cfg, pipeline=profile.pipeline, profile=profile,
                                workload=workload, **params)


def _steady_attainment(completed: int, drops: int, errors: int, violations: int) -> float:
    """Share of the window's requests that met the SLA. Unlike `sla_attainment`, drops and
    errors count as misses (the simulator's violations include them), and so do requests
    still in flight past the SLA when the run ends (conservative: they are not in the
    denominator)."""
    n = completed + drops + errors
    return max(0.0, 1.0 - violations / n) if n else float("nan")


def run_one(sc: Scenario, log_dir: str | Path | None = None) -> dict[str, Any]:
    """One run; returns its result row (see `sair_ray.bench.report` for the columns).
    With `log_dir`, the run's decision log goes to `run_log_path(log_dir, sc)`."""
    log_path = run_log_path(log_dir, sc) if log_dir is not None else None
    profile = load_profile(sc.profile or sc.app)
    workload = scenario_workload(sc, profile)
    learns = registry.get(sc.method).learns
    if sc.variant and not learns:
        raise BenchError(f"ablation {sc.variant!r} given for baseline {sc.method!r}")
    cfg = sair_config(sc.seed, sc.variant, sc.config) if learns else bench_config(sc.seed)
    return run_scenario(sc, profile, workload, cfg, make_run_policy(sc, cfg, profile, workload),
                        learn=learns, log_path=log_path)


def run_scenario(sc: Scenario, profile: Profile, workload: Workload, cfg: SAIRConfig,
                 policy: Policy, *, learn: bool, log_path: str | Path | None = None
                 ) -> dict[str, Any]:
    """Run `policy` through the controller for the scenario and return its row.

    learn=True is the SAIR loop: exploration probes and an experience memory in a fresh
    temporary directory (dimension `phi_dim(stages)`), deleted after the run. The decision
    log is written only to `log_path`; the rows carry what the grid reports."""
    t0 = time.perf_counter()
    duration = sc.hours * 3600.0
    backend = SimBackend(profile, workload, seed=sc.seed, cost=cfg.cost,
                         retain_s=duration + 60.0)  # keeps the steady-state window readable
    pipeline = profile.pipeline
    with tempfile.TemporaryDirectory(prefix="sair-bench-") as tmp:
        if log_path is not None:
            # The log appends (a live controller resumes its own); a rerun must not
            # interleave its rounds with an earlier run's.
            Path(log_path).unlink(missing_ok=True)
        session = Session(backend, policy, cfg, learns=learn, files=ControllerFiles(
            memory=Path(tmp) / MEMORY_DIR,
            log=Path(log_path) if log_path is not None else None))
        ctl = session.controller
        try:
            decisions = run_virtual(ctl, backend, until=duration)
        finally:
            session.close()
    row = _result_row(sc, backend, decisions, duration)
    row |= {
        "actions": len(decisions) - ctl.counters.noops,
        "probes": ctl.counters.probes,
        "policy_failures": ctl.counters.policy_failures,
        "stored": ctl.counters.stored,
        "validator_escapes": count_escapes(decisions, pipeline, cfg.validator),
        **_decide_latency(decisions),
        "wall_s": time.perf_counter() - t0,
    }
    return row


def _result_row(sc: Scenario, backend: SimBackend, decisions: Sequence[Decision],
                duration: float) -> dict[str, Any]:
    tot = backend.totals()
    warmup = min(WARMUP_FRACTION * duration, WARMUP_MAX_S)
    steady = backend.window(warmup, duration)
    # Replicas each stage had at the start of every round (what the controller observed).
    replicas: dict[str, float] = {}
    for st in backend.pipeline.stage_names:
        vals = [s.replicas for d in decisions for s in d.context.stages if s.name == st]
        replicas[st] = float(np.mean(vals)) if vals else float("nan")
    base = asdict(sc)
    base["settings"] = _settings_json(sc)
    return {
        **base, "label": sc.label,
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
        "rounds": len(decisions),
    }


def _decide_latency(decisions: Sequence[Decision]) -> dict[str, float]:
    """p50/p99 of the "decide" step over rounds that asked the policy (probes excluded),
    and p99 of everything else a round does (observe, reward, retrieve, validate, act)."""
    asked = [d.timings_ms.get("decide", math.nan) for d in decisions
             if d.policy_name is not None]
    rest = [sum(v for k, v in d.timings_ms.items() if k != "decide") for d in decisions]
    nan = float("nan")
    return {
        "decide_p50_ms": float(np.percentile(asked, 50)) if asked else nan,
        "decide_p99_ms": float(np.percentile(asked, 99)) if asked else nan,
        "overhead_p99_ms": float(np.percentile(rest, 99)) if rest else nan,
    }


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a run in a results row: every `Scenario` field (settings as JSON);
    a field the row lacks (written before the field existed) has its default."""
    return tuple(row[f] if row.get(f) is not None else _FIELD_DEFAULTS.get(f)
                 for f in SCENARIO_FIELDS)


def scenario_key(sc: Scenario) -> tuple[Any, ...]:
    """`row_key` of the row `sc`'s run writes."""
    return row_key({**asdict(sc), "settings": _settings_json(sc)})


def reusable_rows(scenarios: Sequence[Scenario], rows: Iterable[dict[str, Any]]
                  ) -> dict[int, dict[str, Any]]:
    """The baseline runs of `scenarios` found among earlier results `rows`, by index: rows
    of the same scenario (app, pattern, seed, method, hours, settings, profile, workload,
    config). SAIR methods are never reused: their code and config are what a re-run is
    for. A simulator run is deterministic for its seed, so a reused baseline row is the
    row a re-run would write, as long as the simulator, the profiles and the baselines are
    unchanged since it was written."""
    by_key = {row_key(r): r for r in rows}
    out: dict[int, dict[str, Any]] = {}
    for i, sc in enumerate(scenarios):
        row = by_key.get(scenario_key(sc))
        if sc.method not in SAIR_METHODS and row is not None:
            out[i] = row
    return out


def _settings_json(sc: Scenario) -> str:
    return json.dumps(dict(sc.settings), sort_keys=True)


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_grid(scenarios: Sequence[Scenario], workers: int = 2,
             on_result: Callable[[Scenario, dict[str, Any] | None], None] | None = None,
             log_dir: str | Path | None = None) -> GridResult:
    """Run every scenario (in `workers` processes; 1 runs them here, in order), writing
    decision logs under `log_dir` if given (`run_log_path`).
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
                    row = run_one(sc, log_dir)
                except Exception as e:  # one broken run must not lose the grid
                    finish(i, None, repr(e))
                else:
                    finish(i, row)
        else:
            _run_pool(scenarios, workers, finish, log_dir)
    except KeyboardInterrupt:
        res.interrupted = True
        log.warning("interrupted: keeping %d of %d finished runs", len(done), len(scenarios))
    res.rows = [done[i] for i in sorted(done)]
    return res


def _run_pool(scenarios: Sequence[Scenario], workers: int,
              finish: Callable[[int, dict[str, Any] | None, str | None], None],
              log_dir: str | Path | None) -> None:
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
        futures = {ex.submit(run_one, sc, log_dir): i for i, sc in enumerate(scenarios)}
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
