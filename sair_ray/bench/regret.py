"""Regret decomposition: how far each round's decision is from the best one, and why.

For every round of a run (any policy of the registry, on the simulator), the state just
before the decision is forked (`sair_ray.sim.fork`) and three kinds of action are played
from it, each on its own copy, with the same future requests (common random numbers):

- **chosen**: what the policy did (the validated targets the controller applied);
- **offered**: the candidates SAIR offers that round (`policy.candidates.build`, the
  menu of the `sair` LLM and of the `sair-retrieval` rule), each through the validator;
- **searched**: a broad search of the feasible actions: every single-dimension step of
  every stage (replicas by 1 and by the step limit, CPU or GPU rate by half and a full
  step, both ways), then the combination of each stage's best step, plus the model
  oracle's plan (`baselines.oracle`); the offered and chosen actions are in the pool too.

Every action goes through the validator as it stood before the round (step limits,
cooldowns, free cluster), so only actions the policy could have taken are compared. Each
is scored two ways over the window the next round observes (from `settle_s` after an
applied action, docs/algorithm.md §1):

- the realised SPEC reward (`reward.score`, the controller's frontier and previous outcome,
  exactly as the next round scores it; for the chosen action it is the reward the run
  recorded, which each record checks in `reward_check`);
- cost at SLA: the cost rate ($/h, the reward's cost model) if the window's p99 meets the
  SLA, else infinite.

Per round: `coverage_gap = best searched - best offered` (>= 0: the searched pool holds
the offered one) and `selection_error = best offered - chosen` (>= 0 whenever the chosen
action is among those offered; a probe or a baseline may do better than the menu), in
reward; in cost, the same with `cost_*` names over rounds whose terms are finite, and
counts of rounds where the menu or the choice missed an SLA the search could meet. The
chosen, best offered and best searched actions are also run over a longer horizon
(`horizon_s`, holding the action) for p99 and cost. `summarise` aggregates per app,
pattern and method. See docs/regret.md.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray import registry
from sair_ray.backends.sim import SimBackend
from sair_ray.baselines.oracle import Oracle
from sair_ray.bench.grid import (
    Scenario,
    bench_config,
    build_grid,
    make_run_policy,
    sair_config,
    scenario_workload,
)
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.files import MEMORY_DIR, ControllerFiles
from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest
from sair_ray.policy.candidates import build as build_candidates
from sair_ray.profiles import Profile, load_profile
from sair_ray.proposal import Proposal, hold, resize, scale_both, scale_replicas, set_rate
from sair_ray.proposal import targets as rate_targets
from sair_ray.retrieval import Retrieved
from sair_ray.reward import Outcome, capacity_added, score
from sair_ray.session import Session
from sair_ray.sim.fork import Fork
from sair_ray.types import Allocation, ClusterResources, Context, PipelineSpec, StageKind
from sair_ray.validator import Cooldowns, Validated, Validator
from sair_ray.workloads import Workload

DEFAULT_HORIZON_S = 300.0


@dataclass(frozen=True)
class Scored:
    """One action played from a fork point."""

    label: str
    targets: Allocation
    acts: bool                 # changes the allocation (else a no-op, not applied)
    reward: float
    p99_ms: float
    cost_rate: float           # $/h of the allocation, the reward's cost model
    meets_sla: bool

    @property
    def cost_at_sla(self) -> float:
        return self.cost_rate if self.meets_sla else math.inf


@dataclass
class RegretRun:
    """One run's per-round records and its timing."""

    app: str
    pattern: str
    method: str
    seed: int
    hours: float
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    alternatives: int = 0      # actions played in all


class _Recorder:
    """Wraps the run's policy to see each request (and so the candidates it was offered)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.request: PolicyRequest | None = None

    def decide(self, request: PolicyRequest) -> PolicyReply:
        self.request = request
        return self.inner.decide(request)


def _moves(ctx: Context, pipeline: PipelineSpec, v: Any) -> list[tuple[str, str, Any]]:
    """(stage, label, entry): every single-dimension step of every stage."""
    out: list[tuple[str, str, Any]] = []
    for s in ctx.stages:
        r_steps = sorted({1, max(1, int(v.max_replica_step))})
        for k in r_steps:
            for sign in (1, -1):
                out.append((s.name, f"{s.name} replicas{sign * k:+d}",
                            scale_replicas(s.replicas + sign * k)))
        if s.kind is StageKind.GPU:
            for frac in (0.5, 1.0):
                for sign in (1, -1):
                    r = round(s.rate + sign * frac * v.max_rate_step, 4)
                    out.append((s.name, f"{s.name} rate{sign * frac * v.max_rate_step:+.2f}",
                                set_rate(r)))
        else:
            for frac in (0.5, 1.0):
                for sign in (1, -1):
                    d = int(sign * frac * v.max_cpu_step_m)
                    out.append((s.name, f"{s.name} cpu{d:+d}",
                                resize(s.cpu_m + d, s.mem_mb)))
    return out


class _Round:
    """Plays actions from one fork point and scores them as the next round would."""

    def __init__(self, ctl: Controller, point: Fork, validator: Validator, ctx: Context,
                 free: ClusterResources, now: float, last_action_at: float | None) -> None:
        self.ctl, self.point, self.validator = ctl, point, validator
        self.ctx, self.free, self.now = ctx, free, now
        cfg = ctl.cfg
        self.step = cfg.loop.decision_interval_s
        self.settle = cfg.loop.settle_s
        self.next_t = now + self.step
        self.last_action_at = last_action_at
        self.effective = cfg.reward.cost_model == "effective"
        self.sla_ms = ctl.pipeline.sla_ms
        self.played: dict[tuple[Any, ...], Scored] = {}
        self.n_played = 0

    def _window_start(self, acts: bool) -> float:
        start = self.next_t - self.step
        last = self.now if acts else self.last_action_at
        if last is not None:
            start = max(start, min(last + self.settle, self.next_t))
        return start

    def play(self, label: str, proposal: Any, validated: Validated | None = None) -> Scored:
        """Score `proposal` through the validator (or `validated`, what the run applied)."""
        val = validated or self.validator.validate(proposal, self.ctx.allocation,
                                                   now=self.now, free=self.free)
        key = tuple(sorted(val.targets.items()))
        if key in self.played:  # the same targets scored already (a no-op, a clamp)
            prev = self.played[key]
            return replace(prev, label=label) if prev.label != label else prev
        acts = not val.action.is_noop
        sim = self.point.play(val.targets if acts else None, self.next_t)
        self.n_played += 1
        w = sim.window(self._window_start(acts), self.next_t)
        cost = self.ctl.costs.rate(val.targets, effective=self.effective)
        c = self.ctx
        front = self.ctl.reward_model.frontiers
        rb = score(self.ctl.cfg.reward, front.frontier(w.arrival_rate),
                   outcome=Outcome(w.p99_ms, cost, w.arrival_rate),
                   prev=Outcome(c.p99_ms, c.cost_rate, c.arrival_rate), v_prev=c.violation,
                   up_sum=capacity_added(val.action, self.ctl.cfg.validator),
                   n_stages=len(self.ctl.pipeline.stages), sla_ms=self.sla_ms,
                   c_max=self.ctl.c_max, bucket=front.bucket(w.arrival_rate))
        s = Scored(label, dict(val.targets), acts, rb.total, w.p99_ms, cost,
                   w.p99_ms <= self.sla_ms)
        self.played[key] = s
        return s

    def horizon(self, s: Scored, horizon_s: float) -> tuple[float, float]:
        """(p99 ms, $ spent) over [window start, now + horizon_s), holding the action."""
        end = self.now + horizon_s
        sim = self.point.play(s.targets if s.acts else None, end)
        self.n_played += 1
        w = sim.window(self._window_start(s.acts), end)
        usd = w.cost_effective_usd if self.effective else w.cost_billable_usd
        return w.p99_ms, usd


def _search(rnd: _Round, ctx: Context, pipeline: PipelineSpec, cfg: SAIRConfig,
            oracle: Oracle | None, pool: list[Scored]) -> list[Scored]:
    """The broad search: single steps, then each stage's best step combined."""
    base = {s.name: hold() for s in ctx.stages}
    held = rnd.play("hold", base)
    out = [held]
    best_by_stage: dict[str, tuple[float, Any]] = {}
    for stage, label, entry in _moves(ctx, pipeline, cfg.validator):
        s = rnd.play(label, {**base, stage: entry})
        out.append(s)
        if s.reward > held.reward and s.reward > best_by_stage.get(stage, (-math.inf,))[0]:
            best_by_stage[stage] = (s.reward, entry)
    if len(best_by_stage) > 1:
        combo: Proposal = {**base, **{k: e for k, (_, e) in best_by_stage.items()}}
        out.append(rnd.play("combined best steps", combo))
    # start from the best action seen so far (offered ones included) and add each
    # stage's best step to it: a second coordinate round
    top = max(out + pool, key=lambda s: s.reward)
    if top.acts:
        for stage, (_, entry) in best_by_stage.items():
            p = _as_proposal(top.targets, pipeline)
            p[stage] = entry
            out.append(rnd.play(f"{top.label} + {stage} step", p))
    if oracle is not None:
        req = PolicyRequest(now=rnd.now, context=ctx, pipeline=pipeline, free=rnd.free)
        out.append(rnd.play("model-oracle plan", oracle.decide(req).proposal))
    return out


def _as_proposal(targets: Mapping[str, Any], pipeline: PipelineSpec) -> Proposal:
    p: Proposal = {}
    for spec in pipeline.stages:
        a = targets[spec.name]
        p[spec.name] = (rate_targets(replicas=a.replicas, rate=a.rate) if spec.is_gpu
                        else scale_both(a.replicas, a.cpu_m, a.mem_mb))
    return p


def _best(xs: Sequence[Scored]) -> Scored:
    return max(xs, key=lambda s: (s.reward, -s.cost_rate))


def _cheapest(xs: Sequence[Scored]) -> Scored:
    return min(xs, key=lambda s: (s.cost_at_sla, s.p99_ms))


def regret_run(profile: Profile, workload: Workload, seed: int, method: str, hours: float,
               *, pattern: str = "", horizon_s: float = DEFAULT_HORIZON_S,
               search: bool = True, settings: Mapping[str, float] | None = None,
               variant: str = "", max_rounds: int | None = None,
               config: str = "") -> RegretRun:
    """Run `method` on the simulator as `sair bench` does (same config, memory, validator,
    seed; `variant` a SAIR ablation, `settings` a baseline's overrides, `config` a SAIR
    config YAML, e.g. a policy endpoint) and decompose every round's regret. `max_rounds`
    stops early (tests)."""
    t0 = time.perf_counter()
    learns = registry.get(method).learns
    cfg = sair_config(seed, variant, config) if learns else bench_config(seed)
    sc = Scenario(profile.pipeline.name, pattern or "custom", seed, method, hours,
                  variant=variant if learns else "",
                  settings=tuple(sorted((settings or {}).items())))
    policy = make_run_policy(sc, cfg, profile, workload)
    duration = hours * 3600.0
    backend = SimBackend(profile, workload, seed=seed, cost=cfg.cost, retain_s=duration + 60.0)
    pipeline = profile.pipeline
    oracle = Oracle(profile, workload, validator=cfg.validator, prices=cfg.cost, seed=seed,
                    cost_model=cfg.reward.cost_model) if search else None
    run = RegretRun(pipeline.name, sc.pattern, sc.label, seed, hours)
    with tempfile.TemporaryDirectory(prefix="sair-regret-") as tmp:
        session = Session(backend, policy, cfg, learns=learns,
                          files=ControllerFiles(memory=Path(tmp) / MEMORY_DIR, log=None))
        ctl = session.controller
        rec = _Recorder(ctl.policy)
        ctl.policy = rec
        episodes: list[Retrieved] = []
        if ctl.retriever is not None:
            select = ctl.retriever.select

            def capture(q: np.ndarray) -> list[Retrieved]:
                episodes[:] = select(q)
                return episodes
            ctl.retriever.select = capture  # type: ignore[method-assign]
        try:
            step = cfg.loop.decision_interval_s
            now = step
            pending: dict[str, Any] | None = None
            while now <= duration + 1e-9:
                if max_rounds is not None and len(run.records) >= max_rounds:
                    break
                backend.advance_to(now)
                point = Fork(backend.sim)
                validator = Validator(pipeline, cfg.validator,
                                      Cooldowns.from_dict(ctl.validator.cooldowns.to_dict()))
                free = backend.free_resources()
                history = tuple(ctl.history)
                last_action_at = ctl.last_action_at
                episodes.clear()
                rec.request = None
                d = ctl.tick(now)
                if pending is not None and ctl.last_reward is not None:
                    pending["reward_check"] = ctl.last_reward.total
                ctx = d.context
                request = rec.request or PolicyRequest(
                    now=now, context=ctx, pipeline=pipeline, free=free,
                    bottleneck=d.bottleneck, episodes=tuple(episodes), history=history)
                rnd = _Round(ctl, point, validator, ctx, free, now, last_action_at)
                chosen = rnd.play("chosen", d.proposal, Validated(d.action, dict(d.targets)))
                offered = [rnd.play(c.label, c.proposal)
                           for c in build_candidates(request, cfg.validator)]
                searched = _search(rnd, ctx, pipeline, cfg, oracle, offered + [chosen]) \
                    if search else []
                pool = searched + offered + [chosen]
                best_s, best_o = _best(pool), _best(offered)
                cheap_s, cheap_o = _cheapest(pool), _cheapest(offered)
                record = _record(d.round, now, d.source, chosen, offered, best_o, best_s,
                                 cheap_o, cheap_s, len(pool))
                for name, s in (("chosen", chosen), ("best_offered", best_o),
                                ("best_searched", best_s)):
                    p99, usd = rnd.horizon(s, horizon_s)
                    record[f"{name}_horizon_p99_ms"] = p99
                    record[f"{name}_horizon_usd"] = usd
                record["alternatives"] = rnd.n_played
                run.records.append(record)
                run.alternatives += rnd.n_played
                pending = record
                now += step
        finally:
            session.close()
    run.wall_s = time.perf_counter() - t0
    for r in run.records:
        r.update(app=run.app, pattern=run.pattern, method=run.method, seed=seed)
    return run


def _record(round_no: int, now: float, source: str, chosen: Scored, offered: list[Scored],
            best_o: Scored, best_s: Scored, cheap_o: Scored, cheap_s: Scored,
            pool_size: int) -> dict[str, Any]:
    in_menu = any(o.targets == chosen.targets for o in offered)

    def gap(hi: float, lo: float) -> float:
        return hi - lo if math.isfinite(hi) and math.isfinite(lo) else math.nan

    return {
        "round": round_no, "time": now, "source": source, "chosen_offered": in_menu,
        "offered": len(offered), "searched": pool_size,
        "chosen_label": next((o.label for o in offered if o.targets == chosen.targets),
                             source),
        "best_offered_label": best_o.label,
        "best_searched_label": best_s.label,
        "chosen_reward": chosen.reward, "best_offered_reward": best_o.reward,
        "best_searched_reward": best_s.reward,
        "coverage_gap": best_s.reward - best_o.reward,
        "selection_error": best_o.reward - chosen.reward,
        "regret": best_s.reward - chosen.reward,
        "chosen_p99_ms": chosen.p99_ms, "chosen_cost_rate": chosen.cost_rate,
        "chosen_cost_at_sla": chosen.cost_at_sla,
        "best_offered_cost_at_sla": cheap_o.cost_at_sla,
        "best_searched_cost_at_sla": cheap_s.cost_at_sla,
        "cost_coverage_gap": gap(cheap_o.cost_at_sla, cheap_s.cost_at_sla),
        "cost_selection_error": gap(chosen.cost_at_sla, cheap_o.cost_at_sla),
        "sla_reachable": math.isfinite(cheap_s.cost_at_sla),
        "menu_misses_sla": math.isfinite(cheap_s.cost_at_sla)
        and not math.isfinite(cheap_o.cost_at_sla),
        "chosen_misses_sla": math.isfinite(cheap_s.cost_at_sla) and not chosen.meets_sla,
        "reward_check": math.nan,   # the reward the run recorded, filled one round later
    }


SUMMARY_COLUMNS = ("app", "pattern", "method", "rounds", "chosen_offered", "reward_chosen",
                   "reward_best_offered", "reward_best_searched", "coverage_gap",
                   "selection_error", "regret", "cost_coverage_gap", "cost_selection_error",
                   "menu_misses_sla", "chosen_misses_sla", "reward_check_max_err")


def summarise(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean per-round terms per (app, pattern, method); rates are shares of rounds."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["app"], r["pattern"], r["method"]), []).append(r)
    out = []
    for (app, pattern, method), rs in groups.items():
        def mean(k: str, rs: list[Mapping[str, Any]] = rs) -> float:
            xs = [float(r[k]) for r in rs if math.isfinite(float(r[k]))]
            return float(np.mean(xs)) if xs else math.nan
        errs = [abs(r["reward_check"] - r["chosen_reward"]) for r in rs
                if math.isfinite(r["reward_check"])]
        out.append({
            "app": app, "pattern": pattern, "method": method, "rounds": len(rs),
            "chosen_offered": mean("chosen_offered"),
            "reward_chosen": mean("chosen_reward"),
            "reward_best_offered": mean("best_offered_reward"),
            "reward_best_searched": mean("best_searched_reward"),
            "coverage_gap": mean("coverage_gap"), "selection_error": mean("selection_error"),
            "regret": mean("regret"),
            "cost_coverage_gap": mean("cost_coverage_gap"),
            "cost_selection_error": mean("cost_selection_error"),
            "menu_misses_sla": mean("menu_misses_sla"),
            "chosen_misses_sla": mean("chosen_misses_sla"),
            "reward_check_max_err": max(errs) if errs else math.nan,
        })
    return out


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of `summarise` rows."""
    head = "| " + " | ".join(SUMMARY_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = [head, sep] + ["| " + " | ".join(cell(r[c]) for c in SUMMARY_COLUMNS) + " |"
                           for r in rows]
    return "\n".join(lines)


@dataclass
class RegretResult:
    runs: list[RegretRun]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for run in self.runs for r in run.records]

    def summary(self) -> list[dict[str, Any]]:
        return summarise(self.records)

    def format(self) -> str:
        played = sum(r.alternatives for r in self.runs)
        wall = sum(r.wall_s for r in self.runs)
        return (format_summary(self.summary()) + f"\n\n{len(self.records)} rounds, "
                f"{played} actions played in {wall:.1f} s "
                f"({played / wall if wall else 0:.0f} per second, runs included)")

    def write(self, out: str | Path) -> list[Path]:
        """regret_records.parquet (one row a round) and regret_summary.md under `out`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        rec = d / "regret_records.parquet"
        pq.write_table(pa.Table.from_pylist(self.records), rec)
        md = d / "regret_summary.md"
        md.write_text(self.format() + "\n")
        return [rec, md]


def regret_scenario(sc: Scenario, *, horizon_s: float = DEFAULT_HORIZON_S,
                    search: bool = True, max_rounds: int | None = None) -> RegretRun:
    """`regret_run` for one scenario of the bench grid (its profile, workload, seed,
    method, ablation and baseline settings, as `grid.run_one` resolves them)."""
    profile = load_profile(sc.profile or sc.app)
    workload = scenario_workload(sc, profile)
    return regret_run(profile, workload, sc.seed, sc.method, sc.hours, pattern=sc.pattern,
                      horizon_s=horizon_s, search=search, settings=dict(sc.settings),
                      variant=sc.variant, max_rounds=max_rounds, config=sc.config)


def run_regret(scenarios: Iterable[Scenario], *, horizon_s: float = DEFAULT_HORIZON_S,
               search: bool = True, max_rounds: int | None = None,
               on_run: Callable[[RegretRun], None] | None = None) -> RegretResult:
    """The decomposition for every scenario of a bench grid (`grid.build_grid`), one after
    the other (each run plays tens of alternatives a round; docs/regret.md gives the
    cost). `on_run` is called after each run (progress)."""
    runs = []
    for sc in scenarios:
        run = regret_scenario(sc, horizon_s=horizon_s, search=search, max_rounds=max_rounds)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return RegretResult(runs)


def run_regret_grid(apps: Iterable[str], patterns: Iterable[str], methods: Iterable[str],
                    seeds: int | Iterable[int] = 1, hours: float = 0.25,
                    **kw: Any) -> RegretResult:
    """`run_regret` over `build_grid(apps, patterns, methods, seeds, hours)`."""
    return run_regret(build_grid(apps, patterns, methods, seeds, hours), **kw)


__all__ = ["DEFAULT_HORIZON_S", "RegretResult", "RegretRun", "Scored", "format_summary",
           "regret_run", "regret_scenario", "run_regret", "run_regret_grid", "summarise"]
