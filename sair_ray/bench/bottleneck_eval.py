"""Bottleneck-detection evaluation (paper Table 5): generated scenarios with known truth.

Each scenario is a pipeline (one of the four app profiles) given a fixed allocation and a
Poisson load chosen so that, by construction, a known set of stages lacks capacity:

- the class is `pre` (the first stage), `inference` (the GPU stage), `post` (the last
  stage) or `multiple` (two stages); classes are balanced (scenario i has class i mod 4)
  and apps as balanced as their limits allow (`make_scenario`);
- a stage's capacity is computed from the profile's service model, not measured:
  replicas / (mean reference time x allocation factor), at the largest batch for batching
  stages (`stage_capacity`);
- a bottleneck stage gets offered load / capacity rho in [RHO_OVER_MIN, RHO_OVER_MAX];
  every other stage gets rho in [RHO_OK_MIN, RHO_OK_MAX] of the flow that reaches it (the
  offered load, or the smallest capacity upstream of it);
- for `multiple`, the downstream bottleneck gets less capacity than the upstream one (by
  a factor in the same overload range), so it is overloaded by the flow the upstream one
  lets through; otherwise the upstream stage would shield it and the overload would be
  invisible to any detector.

The simulator then runs the pipeline from warm replicas for a random 90-240 s; the
analyser (`sair_ray.bottleneck.analyse`) sees the last 30 s window and the one before, as
the controller would. Ground truth comes only from the construction above, never from the
analyser's rules. `evaluate` returns per-scenario rows; `classification_metrics` gives
per-class precision, recall, F1, accuracy and the confusion matrix.

That is the *easy* set: the gap between 0.7 and 1.15 is the one the analyser's thresholds
were tuned on (eval seed 0). The *hard* set (`make_hard_scenario`, `evaluate(...,
eval_set="hard")`) is not easy by construction:

- ground truth (the same fluid rule for both sets, made exact here): a stage's capacity
  c_i is `stage_capacity` of the window's allocation; its offered load is the steady flow
  that reaches it, f_1 = the Poisson rate and f_(i+1) = min(f_i, c_i) (a stage passes on
  at most its capacity); the stage is a bottleneck of the window iff f_i > c_i, i.e.
  rho_i = f_i / c_i > 1. Transients (a backlog left by an earlier allocation) are not
  offered load. The label is the bottleneck's class, or `multiple` for two or more;
- every stage of a hard scenario has rho in [RHO_HARD_OK_MIN, RHO_HARD_OK_MAX] (not a
  bottleneck) or [RHO_HARD_OVER_MIN, RHO_HARD_OVER_MAX] (a bottleneck): 0.8-1.2, less a
  2 % guard band either side of 1 that keeps the truth clear of the capacity model's
  error (the simulator's saturated throughput matches `stage_capacity` within 0.3 % for
  image classification and NLP; a test checks it). Text generation cannot be loaded so
  (its CPU stages serve >= 50 req/s, its GPU stage <= 10), so it has no hard scenarios;
- three categories (`HARD_CATEGORIES`), disjoint: `near-boundary` (only that),
  `noisy` (each observed metric of both windows the analyser sees multiplied by
  exp(N(0, NOISE_SIGMA)), queues rounded) and `migrated` (the previous window ran another
  allocation, differing in replica counts, whose bottleneck set by the same rule is
  non-empty and disjoint from this window's: replicas added reach serving exactly at the
  window boundary, i.e. they are applied one cold start before it, replicas removed are
  removed at the boundary);
- scenario i has class i mod 4, category i mod 3 (so each (class, category) pair occurs
  once in every 12) and app (i div 12) mod 3 of the apps that can be loaded so;
- seeds: hard scenarios draw from seed HARD_SEED_OFFSET + the eval seed, a seed space
  disjoint from the easy set's (whose seeds must stay below it), so none of them is a
  scenario the analyser was tuned on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray.backends.sim import SimBackend
from sair_ray.bottleneck import analyse
from sair_ray.config import ValidatorConfig
from sair_ray.profiles import Profile, list_profiles, load_profile
from sair_ray.sim.model import StageModel
from sair_ray.types import Context, PipelineSpec, StageAllocation, StageSpec
from sair_ray.workloads import Poisson

CLASSES = ("pre", "inference", "post", "multiple")
NONE = "none"                     # what the analyser says when it sees no bottleneck
RHO_OVER_MIN, RHO_OVER_MAX = 1.15, 2.0
RHO_OK_MIN, RHO_OK_MAX = 0.02, 0.7
WINDOW_S = 30.0
OBSERVE_MIN_S, OBSERVE_MAX_S = 90.0, 240.0
CPU_GRID_M = 250
RATE_GRID = 0.05
MAX_TRIES = 200
# the hard set (see the module docstring)
EVAL_SETS = ("easy", "hard")
HARD_CATEGORIES = ("near-boundary", "noisy", "migrated")
RHO_HARD_OK_MIN, RHO_HARD_OK_MAX = 0.8, 0.98
RHO_HARD_OVER_MIN, RHO_HARD_OVER_MAX = 1.02, 1.2
NOISE_SIGMA = 0.1                 # log-normal measurement noise of `noisy` scenarios
HARD_SEED_OFFSET = 1_000_000      # hard seeds: HARD_SEED_OFFSET + eval seed


@dataclass(frozen=True)
class BottleneckScenario:
    index: int
    app: str
    truth: str                              # one of CLASSES
    stages: tuple[str, ...]                 # the constructed bottleneck stage(s)
    rate: float                             # offered load, req/s
    allocation: dict[str, StageAllocation]
    rho: dict[str, float]                   # flow reaching the stage / its capacity
    observe_at: float
    seed: int
    # hard set only (the easy set keeps the defaults)
    eval_set: str = "easy"
    category: str = ""                                   # one of HARD_CATEGORIES
    noise: float = 0.0                                   # sigma of the log-normal noise
    prev_allocation: dict[str, StageAllocation] | None = None   # `migrated`: before
    prev_stages: tuple[str, ...] = ()                   # its bottleneck(s), same rule
    prev_rho: dict[str, float] | None = None


# -- capacities -------------------------------------------------------------------------
def stage_capacity(spec: StageSpec, model: StageModel, alloc: StageAllocation) -> float:
    """Requests per second the stage completes when always busy (largest batch if it
    batches), from the profile's model: no simulation, no analyser."""
    factor = model.factor(spec.kind, alloc.cpu_m, alloc.mem_mb, alloc.rate)
    b = model.batch_max
    per_batch = (model.batch_overhead_s + b * model.mean_ref_s()) * factor
    return alloc.replicas * b / per_batch


def stage_class(pipeline: PipelineSpec, stage: str) -> str:
    """pre / inference / post of a stage: the GPU stage is inference, stages before the
    first GPU stage are pre, after it post."""
    names = pipeline.stage_names
    gpu = [i for i, s in enumerate(pipeline.stages) if s.is_gpu]
    i = names.index(stage)
    if pipeline.stages[i].is_gpu:
        return "inference"
    first_gpu = gpu[0] if gpu else len(names) // 2
    return "pre" if i < first_gpu else "post"


def _class_stages(pipeline: PipelineSpec, cls: str) -> list[str]:
    return [s for s in pipeline.stage_names if stage_class(pipeline, s) == cls]


def _options(spec: StageSpec, model: StageModel, v: ValidatorConfig,
             profile: Profile) -> list[StageAllocation]:
    """The allocations a scenario may give a stage: replicas x CPU grid (CPU stages) or
    replicas x rate grid (GPU stages, CPU/memory at the initial values); memory at least
    the working set, so memory never confounds the capacity."""
    lim = spec.limits(v)
    gpus = profile.pipeline.cluster.gpus
    max_n = lim.replicas_max
    if spec.is_gpu:
        max_n = min(max_n, int(gpus // spec.gpus_per_replica))
    init = spec.initial
    mem = int(min(lim.mem_mb_max, max(init.mem_mb, math.ceil(model.mem_need_mb))))
    out = []
    for n in range(lim.replicas_min or 1, max_n + 1):
        if spec.is_gpu:
            k = int(round((lim.rate_max - lim.rate_min) / RATE_GRID))
            for j in range(k + 1):
                r = round(lim.rate_min + j * RATE_GRID, 6)
                out.append(StageAllocation(n, init.cpu_m, mem, r))
        else:
            lo = -(-lim.cpu_m_min // CPU_GRID_M) * CPU_GRID_M
            for cpu in range(lo, lim.cpu_m_max + 1, CPU_GRID_M):
                out.append(StageAllocation(n, cpu, mem, 1.0))
    return out


def _fits_cluster(profile: Profile, alloc: dict[str, StageAllocation]) -> bool:
    c = profile.pipeline.cluster
    cpus = sum(a.replicas * a.cpu_m for a in alloc.values()) / 1000
    mem = sum(a.replicas * a.mem_mb for a in alloc.values())
    gpus = sum(alloc[s.name].replicas * s.gpus_per_replica for s in profile.pipeline.stages
               if s.is_gpu)
    return cpus <= c.cpus and mem <= c.memory_mb and gpus <= c.gpus


# -- scenario construction ------------------------------------------------------------------
def make_scenario(index: int, seed: int = 0, apps: Sequence[str] | None = None,
                  v: ValidatorConfig | None = None) -> BottleneckScenario:
    """Scenario `index` of the evaluation (deterministic for (index, seed)): class
    index mod 4, app (index div 4) mod 4, or the next app that can have that class within
    its limits (text generation's tokenizer serves hundreds of requests per second on a
    quarter core while its two GPUs serve a few, so it has no pre or post scenarios)."""
    apps = list(apps or list_profiles())
    truth = CLASSES[index % len(CLASSES)]
    first = (index // len(CLASSES)) % len(apps)
    for k in range(len(apps)):
        app = apps[(first + k) % len(apps)]
        sc = _construct(index, seed, app, truth, v or ValidatorConfig())
        if sc is not None:
            return sc
    raise RuntimeError(f"scenario {index} ({truth}): no app can be given that bottleneck "
                       f"within its limits in {MAX_TRIES} tries")


def _construct(index: int, seed: int, app: str, truth: str,
               v: ValidatorConfig) -> BottleneckScenario | None:
    profile = load_profile(app)
    pipe = profile.pipeline
    rng = np.random.default_rng([seed, index])
    opts = {s.name: _options(s, m, v, profile) for s, m in zip(pipe.stages, profile.models,
                                                                 strict=True)}
    caps = {s.name: np.array([stage_capacity(s, m, a) for a in opts[s.name]])
            for s, m in zip(pipe.stages, profile.models, strict=True)}

    def pick(stage: str, lo: float, hi: float) -> int | None:
        ok = np.flatnonzero((caps[stage] >= lo) & (caps[stage] <= hi))
        return int(rng.choice(ok)) if len(ok) else None

    for _ in range(MAX_TRIES):
        if truth == "multiple":
            pair = sorted(rng.choice(len(pipe.stages), size=2, replace=False))
            bottlenecks = [pipe.stage_names[i] for i in pair]
        else:
            bottlenecks = [str(rng.choice(_class_stages(pipe, truth)))]
        first = bottlenecks[0]
        i0 = int(rng.integers(len(opts[first])))
        rate = float(rng.uniform(RHO_OVER_MIN, RHO_OVER_MAX) * caps[first][i0])
        chosen: dict[str, int] = {first: i0}
        if len(bottlenecks) == 2:  # downstream gets less capacity than the upstream one
            k = float(rng.uniform(RHO_OVER_MIN, RHO_OVER_MAX))
            target = caps[first][i0] / k
            j = pick(bottlenecks[1], target / 1.05, target * 1.05)
            if j is None:
                continue
            chosen[bottlenecks[1]] = j
        flow, ok = rate, True
        for st in pipe.stage_names:  # pipeline order: each stage sees what upstream passes
            if st not in chosen:
                fine = np.flatnonzero((caps[st] >= flow / RHO_OK_MAX)
                                      & (caps[st] <= flow / RHO_OK_MIN))
                if not len(fine):
                    ok = False
                    break
                # a random option near a utilisation drawn uniformly from the range, so
                # utilisations are spread over it rather than piled at the low end
                target = flow / float(rng.uniform(RHO_OK_MIN, RHO_OK_MAX))
                gap = np.abs(caps[st][fine] - target)
                near = fine[gap <= 0.15 * target]
                chosen[st] = int(rng.choice(near)) if len(near) else int(fine[gap.argmin()])
            flow = min(flow, float(caps[st][chosen[st]]))
        if not ok:
            continue
        alloc = {st: opts[st][chosen[st]] for st in pipe.stage_names}
        if not _fits_cluster(profile, alloc):
            continue
        flow, rho_of = rate, {}
        for st in pipe.stage_names:
            c = float(caps[st][chosen[st]])
            rho_of[st] = flow / c
            flow = min(flow, c)
        return BottleneckScenario(index, app, truth, tuple(bottlenecks), rate, alloc, rho_of,
                                  float(rng.uniform(OBSERVE_MIN_S, OBSERVE_MAX_S)), seed)
    return None


# -- the hard set ---------------------------------------------------------------------------
def fluid_rho(pipeline: PipelineSpec, caps: dict[str, float], rate: float) -> dict[str, float]:
    """rho_i = f_i / c_i with f_1 = rate, f_(i+1) = min(f_i, c_i): the ground truth's rule
    (a stage is a bottleneck iff its rho > 1)."""
    flow, rho = rate, {}
    for st in pipeline.stage_names:
        rho[st] = flow / caps[st]
        flow = min(flow, caps[st])
    return rho


def _capacities(profile: Profile, alloc: dict[str, StageAllocation]) -> dict[str, float]:
    return {s.name: stage_capacity(s, m, alloc[s.name])
            for s, m in zip(profile.pipeline.stages, profile.models, strict=True)}


@cache
def hard_apps() -> tuple[str, ...]:
    """The shipped apps whose stages can all be loaded within 0.8-1.2 of capacity at once
    (some flow f has, for every stage, an allocation with f / capacity in the hard bands)."""
    v = ValidatorConfig()
    out = []
    for app in list_profiles():
        profile = load_profile(app)
        caps = [np.array([stage_capacity(s, m, a) for a in _options(s, m, v, profile)])
                for s, m in zip(profile.pipeline.stages, profile.models, strict=True)]
        flows = np.concatenate(caps) * RHO_HARD_OK_MAX
        if any(all(np.any((f / c >= RHO_HARD_OK_MIN) & (f / c <= RHO_HARD_OVER_MAX))
                   for c in caps) for f in flows):
            out.append(app)
    return tuple(out)


def make_hard_scenario(index: int, seed: int = 0, apps: Sequence[str] | None = None,
                       v: ValidatorConfig | None = None) -> BottleneckScenario:
    """Hard scenario `index` (deterministic for (index, seed)): class index mod 4,
    category index mod 3, app (index div 12) mod len(apps) or the next app that can have
    it; drawn from seed HARD_SEED_OFFSET + `seed`."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    apps = list(apps or hard_apps())
    truth = CLASSES[index % len(CLASSES)]
    category = HARD_CATEGORIES[index % len(HARD_CATEGORIES)]
    first = (index // (len(CLASSES) * len(HARD_CATEGORIES))) % len(apps)
    for k in range(len(apps)):
        app = apps[(first + k) % len(apps)]
        sc = _construct_hard(index, HARD_SEED_OFFSET + seed, app, truth, category,
                             v or ValidatorConfig())
        if sc is not None:
            return sc
    raise RuntimeError(f"hard scenario {index} ({truth}, {category}): no app can be given "
                       f"that bottleneck within its limits in {MAX_TRIES} tries")


def _construct_hard(index: int, seed: int, app: str, truth: str, category: str,
                    v: ValidatorConfig) -> BottleneckScenario | None:
    profile = load_profile(app)
    pipe = profile.pipeline
    rng = np.random.default_rng([seed, index])
    opts = {s.name: _options(s, m, v, profile) for s, m in zip(pipe.stages, profile.models,
                                                                 strict=True)}
    caps = {s.name: np.array([stage_capacity(s, m, a) for a in opts[s.name]])
            for s, m in zip(pipe.stages, profile.models, strict=True)}

    def pick(stage: str, flow: float, lo: float, hi: float) -> int | None:
        """An option loaded flow / capacity in [lo, hi], near a load drawn uniformly from
        the range (so loads spread over it)."""
        rho = flow / caps[stage]
        ok = np.flatnonzero((rho >= lo) & (rho <= hi))
        if not len(ok):
            return None
        gap = np.abs(rho[ok] - float(rng.uniform(lo, hi)))
        near = ok[gap <= 0.02]
        return int(rng.choice(near)) if len(near) else int(ok[gap.argmin()])

    for _ in range(MAX_TRIES):
        if truth == "multiple":
            pair = sorted(rng.choice(len(pipe.stages), size=2, replace=False))
            bottlenecks = [pipe.stage_names[i] for i in pair]
        else:
            bottlenecks = [str(rng.choice(_class_stages(pipe, truth)))]
        first = bottlenecks[0]
        i0 = int(rng.integers(len(opts[first])))
        rate = float(rng.uniform(RHO_HARD_OVER_MIN, RHO_HARD_OVER_MAX) * caps[first][i0])
        chosen: dict[str, int] = {first: i0}
        flow, ok = rate, True
        for st in pipe.stage_names:  # pipeline order: each stage sees what upstream passes
            if st not in chosen:
                band = ((RHO_HARD_OVER_MIN, RHO_HARD_OVER_MAX) if st in bottlenecks
                        else (RHO_HARD_OK_MIN, RHO_HARD_OK_MAX))
                j = pick(st, flow, *band)
                if j is None:
                    ok = False
                    break
                chosen[st] = j
            flow = min(flow, float(caps[st][chosen[st]]))
        if not ok:
            continue
        alloc = {st: opts[st][chosen[st]] for st in pipe.stage_names}
        if not _fits_cluster(profile, alloc):
            continue
        rho_of = fluid_rho(pipe, _capacities(profile, alloc), rate)
        if {st for st, r in rho_of.items() if r > 1} != set(bottlenecks):
            continue                                     # cannot happen; never mislabel
        prev: tuple[dict[str, StageAllocation], tuple[str, ...], dict[str, float]] | None
        prev = None
        if category == "migrated":
            prev = _migrate(rng, profile, alloc, tuple(bottlenecks), rate, v)
            if prev is None:
                continue
        return BottleneckScenario(
            index, app, truth, tuple(bottlenecks), rate, alloc, rho_of,
            float(rng.uniform(OBSERVE_MIN_S, OBSERVE_MAX_S)), seed, eval_set="hard",
            category=category, noise=NOISE_SIGMA if category == "noisy" else 0.0,
            prev_allocation=prev[0] if prev else None, prev_stages=prev[1] if prev else (),
            prev_rho=prev[2] if prev else None)
    return None


def _migrate(rng: np.random.Generator, profile: Profile, alloc: dict[str, StageAllocation],
             stages: tuple[str, ...], rate: float, v: ValidatorConfig,
             ) -> tuple[dict[str, StageAllocation], tuple[str, ...], dict[str, float]] | None:
    """The previous window's allocation of a `migrated` scenario: a stage X that is no
    bottleneck now had fewer replicas, and a bottleneck stage that X's shortfall does not
    shield had enough more not to be one; its bottleneck set (same rule) must be non-empty
    and disjoint from `stages`, and both allocations at once must fit the cluster."""
    pipe = profile.pipeline
    specs = {s.name: s for s in pipe.stages}
    others = [s for s in pipe.stage_names if s not in stages]

    def max_replicas(name: str) -> int:
        spec, lim = specs[name], specs[name].limits(v)
        if spec.is_gpu:
            return min(lim.replicas_max, int(pipe.cluster.gpus // spec.gpus_per_replica))
        return lim.replicas_max

    for _ in range(20):
        x = str(rng.choice(others))
        low = max(1, specs[x].limits(v).replicas_min)
        if alloc[x].replicas <= low:
            continue
        prev = dict(alloc)
        prev[x] = replace(alloc[x], replicas=int(rng.integers(low, alloc[x].replicas)))
        ok = True
        for s in stages:  # still a bottleneck before: it had more replicas then
            rho = fluid_rho(pipe, _capacities(profile, prev), rate)
            if rho[s] <= 1:
                continue
            n = alloc[s].replicas
            while n < max_replicas(s) and rho[s] > RHO_HARD_OK_MAX:
                n += 1
                prev[s] = replace(alloc[s], replicas=n)
                rho = fluid_rho(pipe, _capacities(profile, prev), rate)
            if rho[s] > RHO_HARD_OK_MAX:
                ok = False
                break
        if not ok:
            continue
        rho = fluid_rho(pipe, _capacities(profile, prev), rate)
        before = tuple(st for st in pipe.stage_names if rho[st] > 1)
        both = {st: replace(alloc[st], replicas=max(alloc[st].replicas, prev[st].replicas))
                for st in pipe.stage_names}
        if before and not set(before) & set(stages) and _fits_cluster(profile, both):
            return prev, before, rho
    return None


def _noisy(ctx: Context, rng: np.random.Generator, sigma: float) -> Context:
    """The context with every observed rate, latency, utilisation and queue multiplied by
    its own exp(N(0, sigma)) (queues rounded to whole requests)."""
    def f(x: float) -> float:
        return float(x * math.exp(rng.normal(0.0, sigma)))

    stages = tuple(replace(o, util=f(o.util), queue=float(round(f(o.queue))),
                           p50_ms=f(o.p50_ms), p99_ms=f(o.p99_ms),
                           queue_delay_ms=f(o.queue_delay_ms),
                           throughput_rps=f(o.throughput_rps)) for o in ctx.stages)
    return replace(ctx, stages=stages, arrival_rate=f(ctx.arrival_rate), p50_ms=f(ctx.p50_ms),
                   p99_ms=f(ctx.p99_ms))


# -- running --------------------------------------------------------------------------------
def migration_steps(sc: BottleneckScenario, profile: Profile) -> list[tuple[float, str]]:
    """(time, stage) at which a `migrated` scenario moves each stage from its previous to
    its current allocation, in time order, so the current one serves from the start of the
    last window (observe_at - WINDOW_S): replicas added are applied one cold start early,
    replicas removed at that moment. Empty for other scenarios."""
    if sc.prev_allocation is None:
        return []
    t0 = sc.observe_at - WINDOW_S
    steps = []
    for st, m in zip(profile.pipeline.stage_names, profile.models, strict=True):
        a, old = sc.allocation[st], sc.prev_allocation[st]
        if a != old:
            steps.append((t0 - (m.cold_start_s if a.replicas > old.replicas else 0.0), st))
    return sorted(steps)


def run_scenario(sc: BottleneckScenario) -> dict[str, Any]:
    """Simulate the scenario, analyse the last window; the scenario's result row."""
    profile = load_profile(sc.app)
    pipe = profile.pipeline
    backend = SimBackend(profile, Poisson(rate=sc.rate), seed=sc.seed * 100_003 + sc.index,
                         allocation=sc.prev_allocation or sc.allocation)
    t = sc.observe_at
    for at, st in migration_steps(sc, profile):
        backend.apply({st: sc.allocation[st]}, at)
    backend.advance_to(t)
    prev = backend.observe(t - 2 * WINDOW_S, t - WINDOW_S)
    ctx = backend.observe(t - WINDOW_S, t)
    if sc.noise > 0:
        rng = np.random.default_rng([sc.seed, sc.index, 1])
        prev, ctx = _noisy(prev, rng, sc.noise), _noisy(ctx, rng, sc.noise)
    report = analyse(ctx, pipe, prev)
    if report.label == "multiple":
        predicted = "multiple"
    elif report.label in pipe.stage_names:
        predicted = stage_class(pipe, report.label)
    else:
        predicted = NONE
    row = {
        "index": sc.index, "app": sc.app, "truth": sc.truth, "predicted": predicted,
        "correct": predicted == sc.truth,
        "truth_stages": list(sc.stages), "predicted_stages": list(report.stages),
        "stages_exact": sorted(report.stages) == sorted(sc.stages),
        "rate": sc.rate, "observe_at": sc.observe_at, "seed": sc.seed,
        "rho": {k: round(x, 4) for k, x in sc.rho.items()},
        "allocation": {k: [a.replicas, a.cpu_m, a.mem_mb, a.rate]
                       for k, a in sc.allocation.items()},
        "p99_ms": ctx.p99_ms, "sla_ms": ctx.sla_ms, "reason": report.reason,
    }
    if sc.eval_set == "hard":
        row.update({
            "eval_set": "hard", "category": sc.category, "noise": sc.noise,
            "prev_truth_stages": list(sc.prev_stages),
            # migrated: the analyser named (some of) the previous window's bottleneck(s)
            "named_previous": bool(set(report.stages) & set(sc.prev_stages)),
            "prev_rho": json.dumps({k: round(x, 4) for k, x in (sc.prev_rho or {}).items()}),
            "prev_allocation": json.dumps(
                {k: [a.replicas, a.cpu_m, a.mem_mb, a.rate]
                 for k, a in (sc.prev_allocation or {}).items()})})
    return row


def evaluate(n: int = 200, seed: int = 0, workers: int = 1,
             eval_set: str = "easy") -> list[dict[str, Any]]:
    """Build and run scenarios 0..n-1 of `eval_set` ("easy" or "hard"); one row per
    scenario, in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if eval_set not in EVAL_SETS:
        raise ValueError(f"eval_set must be one of {', '.join(EVAL_SETS)} (got {eval_set!r})")
    if eval_set == "easy" and not 0 <= seed < HARD_SEED_OFFSET:
        raise ValueError(f"easy seeds are 0..{HARD_SEED_OFFSET - 1} (above: the hard "
                         f"set's seed space); got {seed}")
    build = make_scenario if eval_set == "easy" else make_hard_scenario
    scenarios = [build(i, seed) for i in range(n)]
    if workers <= 1:
        return [run_scenario(s) for s in scenarios]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(run_scenario, scenarios, chunksize=8))


# -- metrics --------------------------------------------------------------------------------
def classification_metrics(truth: Sequence[str], predicted: Sequence[str],
                           classes: Sequence[str] = CLASSES) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, accuracy, macro F1 and the confusion
    matrix (rows: truth, columns: predictions, with any label outside `classes`, e.g.
    "none", as extra columns). Precision of a class never predicted is 0."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    if not truth:
        raise ValueError("no scenarios")
    labels = list(classes) + sorted(set(predicted) - set(classes))
    confusion = {t: dict.fromkeys(labels, 0) for t in classes}
    for t, p in zip(truth, predicted, strict=True):
        if t not in confusion:
            raise ValueError(f"truth {t!r} is not one of {', '.join(classes)}")
        confusion[t][p] += 1
    per_class = {}
    for c in classes:
        tp = confusion[c][c]
        n_pred = sum(confusion[t][c] for t in classes)
        n_true = sum(confusion[c].values())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true}
    correct = sum(confusion[c][c] for c in classes)
    return {"per_class": per_class, "accuracy": correct / len(truth),
            "macro_f1": sum(m["f1"] for m in per_class.values()) / len(classes),
            "confusion": confusion, "labels": labels, "n": len(truth)}


def metrics_markdown(m: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} "
                     f"| {v['support']} |")
    lines.append(f"| **overall accuracy** | | | **{m['accuracy']:.3f}** | {m['n']} |")
    lines.append(f"| macro F1 | | | {m['macro_f1']:.3f} | |")
    lines += ["", "Confusion matrix (rows: truth, columns: analyser):", "",
              "| truth \\ predicted | " + " | ".join(m["labels"]) + " |",
              "|---|" + "---:|" * len(m["labels"])]
    for t, row in m["confusion"].items():
        lines.append(f"| {t} | " + " | ".join(str(row[p]) for p in m["labels"]) + " |")
    return "\n".join(lines) + "\n"


def category_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`classification_metrics` of each hard category's rows, in HARD_CATEGORIES order."""
    out = {}
    for c in HARD_CATEGORIES:
        rs = [r for r in rows if r.get("category") == c]
        if rs:
            out[c] = classification_metrics([r["truth"] for r in rs],
                                            [r["predicted"] for r in rs])
    return out


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One set's results: the table, the confusion matrix, per-app accuracy and, for the
    hard set, per-category accuracy."""
    m = classification_metrics([r["truth"] for r in rows], [r["predicted"] for r in rows])
    hard = any(r.get("eval_set") == "hard" for r in rows)
    apps = list(dict.fromkeys(r["app"] for r in rows))
    per_app = ["| app | scenarios | accuracy |", "|---|---:|---:|"]
    for a in apps:
        rs = [r for r in rows if r["app"] == a]
        per_app.append(f"| {a} | {len(rs)} | {sum(r['correct'] for r in rs) / len(rs):.3f} |")
    exact = [r["stages_exact"] for r in rows if r["truth"] == "multiple"
             and r["predicted"] == "multiple"]
    if hard:
        intro = (f"Hard set: bottleneck detection on {m['n']} generated scenarios, every "
                 f"stage at {RHO_HARD_OK_MIN}-{RHO_HARD_OK_MAX} (not a bottleneck) or "
                 f"{RHO_HARD_OVER_MIN}-{RHO_HARD_OVER_MAX} (a bottleneck: offered load > "
                 "capacity) of its capacity; categories near-boundary, noisy "
                 f"(log-normal noise, sigma {NOISE_SIGMA}, on every observed metric) and "
                 "migrated (the previous window's bottleneck was another stage); seeds "
                 f"from {HARD_SEED_OFFSET}, disjoint from the easy set's. ")
    else:
        intro = (f"Bottleneck detection on {m['n']} generated scenarios (classes balanced, "
                 "apps as balanced as their limits allow; ")
    text = (intro + ("Ground truth from the construction, see "
                     "sair_ray/bench/bottleneck_eval.py. " if hard else
                     "ground truth from the construction, see "
                     "sair_ray/bench/bottleneck_eval.py). ")
            + f"Overall accuracy {m['accuracy']:.1%}.\n\n" + metrics_markdown(m))
    if hard:
        cats = category_metrics(rows)
        lines = ["| category | scenarios | accuracy | macro F1 | "
                 + " | ".join(f"{c} recall" for c in CLASSES) + " |",
                 "|---|---:|---:|---:|" + "---:|" * len(CLASSES)]
        for c, cm in cats.items():
            lines.append(f"| {c} | {cm['n']} | {cm['accuracy']:.3f} | {cm['macro_f1']:.3f} | "
                         + " | ".join(f"{cm['per_class'][k]['recall']:.3f}" for k in CLASSES)
                         + " |")
        text += "\nPer category:\n\n" + "\n".join(lines) + "\n"
        mig = [r for r in rows if r.get("category") == "migrated"]
        if mig:
            text += (f"\nOf the {len(mig)} migrated scenarios, the analyser named (one of) "
                     f"the previous window's bottleneck(s) in "
                     f"{sum(r['named_previous'] for r in mig)}.\n")
    text += "\nPer app:\n\n" + "\n".join(per_app) + "\n\n"
    if exact:
        text += (f"Of the {len(exact)} correct `multiple` answers, {sum(exact)} named exactly "
                 "the two constructed stages.\n")
    return text


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                  command: str = "") -> dict[str, Path]:
    """scenarios.parquet (one row per scenario), metrics.parquet (one row per class, and
    for the hard set per category and class) and results.md (`results_markdown`) under
    `out_dir`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = classification_metrics([r["truth"] for r in rows], [r["predicted"] for r in rows])
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"scenarios": d / "scenarios.parquet", "metrics": d / "metrics.parquet",
             "markdown": d / "results.md"}
    flat = [{**r, "rho": json.dumps(r["rho"], sort_keys=True),
             "allocation": json.dumps(r["allocation"], sort_keys=True)} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), paths["scenarios"])

    def metric_rows(mm: dict[str, Any]) -> list[dict[str, Any]]:
        return ([{"class": c, **v} for c, v in mm["per_class"].items()]
                + [{"class": "overall", "precision": math.nan, "recall": math.nan,
                    "f1": mm["accuracy"], "support": mm["n"]}])

    table = metric_rows(m)
    if any(r.get("eval_set") == "hard" for r in rows):
        table = [{"category": "all", **t} for t in table] + [
            {"category": c, **t} for c, cm in category_metrics(rows).items()
            for t in metric_rows(cm)]
    pq.write_table(pa.Table.from_pylist(table), paths["metrics"])
    head = f"Command: `{command}`\n\n" if command else ""
    paths["markdown"].write_text(head + results_markdown(rows))
    return paths


def write_eval_outputs(sets: Mapping[str, Sequence[dict[str, Any]]], out_dir: str | Path,
                       command: str = "") -> dict[str, Path]:
    """Each set's outputs (`write_outputs`) under out_dir/<set>/, and out_dir/results.md
    with one section per set, reported apart."""
    d = Path(out_dir)
    paths: dict[str, Path] = {}
    sections = [f"Command: `{command}`\n"] if command else []
    for name, rows in sets.items():
        p = write_outputs(rows, d / name, command)
        paths.update({f"{name}_{k}": v for k, v in p.items()})
        sections.append(f"## {name.capitalize()} set\n\n" + results_markdown(rows))
    paths["markdown"] = d / "results.md"
    paths["markdown"].write_text("\n".join(sections))
    return paths
