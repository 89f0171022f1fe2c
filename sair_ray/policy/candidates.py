"""Candidate actions for one round: what a small policy model chooses among.

A 135M-parameter model cannot reason its way from metrics to a good allocation, but it
can pick among a handful of sensible, fully-formed options and copy one, which is what
in-context learning in small models amounts to. Each round offers:

- `fit`: every stage sized to the load it measured (`sizing.size`), one validator step;
- `relieve <stage>`: one validator step more capacity for the stage(s) the bottleneck
  analysis names (replicas, or CPU when replicas are at their limit; GPU rate first, then
  replicas), offered whenever the SLA is violated or a stage is saturated; never for a
  stage the sizing holds because its requests do not wait (`sizing.Sizing.quiet`);
- `episode <id>`: the action of each of the best retrieved episodes (similarity x reward),
  re-applied as a delta from the current allocation, where it moves every stage the way
  `fit` does and gives none less;
- `hold`: every stage as it is, unless the pipeline fails and something else would help.

Every candidate on offer is one a blind pick could take without harm, because a small
model at temperature 1 picks nearly blindly.

All are proposals in the docs/algorithm.md §6 schema (absolute targets for every stage); the
validator still clamps them. With `policy.decoding = "candidates"` the LLM answers with one
candidate's label (an enum in the output schema: a few tokens instead of a whole action to
copy); with `"free"` they are only listed in the prompt as hints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sair_ray.config import ValidatorConfig
from sair_ray.policy import sizing
from sair_ray.policy.base import PolicyRequest
from sair_ray.policy.prompt import target_json
from sair_ray.proposal import (
    CPU,
    RATE,
    REPLICAS,
    Entry,
    Proposal,
    hold,
    holds,
    resize,
    scale_replicas,
    set_rate,
)
from sair_ray.types import PipelineSpec, StageKind, StageObservation

MAX_EPISODES = 3


@dataclass(frozen=True)
class Candidate:
    label: str                 # unique within a round; what the model answers with
    proposal: Proposal
    note: str = ""             # shown beside the label in the prompt


def pick(cands: Sequence[Candidate], answer: object) -> Candidate | None:
    """The candidate a reply names: exact label, else the one label it starts with or
    that starts with it (case-insensitive)."""
    if not isinstance(answer, str):
        return None
    a = answer.strip().lower()
    for c in cands:
        if c.label.lower() == a:
            return c
    hits = [c for c in cands if a and (c.label.lower().startswith(a) or
                                       a.startswith(c.label.lower()))]
    return hits[0] if len(hits) == 1 else None


def _hold(stages: Sequence[StageObservation]) -> Proposal:
    return {s.name: hold() for s in stages}


def _more(s: StageObservation, pipeline: PipelineSpec, v: ValidatorConfig) -> Entry | None:
    lim = pipeline.stage(s.name).limits(v)
    if s.kind == StageKind.GPU:
        if s.rate < lim.rate_max - 1e-9:
            return set_rate(round(min(lim.rate_max, s.rate + v.max_rate_step), 2))
        if s.replicas < lim.replicas_max:
            return scale_replicas(min(lim.replicas_max, s.replicas + v.max_replica_step))
        return None
    if s.replicas < lim.replicas_max:
        return scale_replicas(min(lim.replicas_max, s.replicas + v.max_replica_step))
    if s.cpu_m < lim.cpu_m_max:
        return resize(min(lim.cpu_m_max, s.cpu_m + v.max_cpu_step_m), s.mem_mb)
    return None


def build(request: PolicyRequest, v: ValidatorConfig,
          max_episodes: int = MAX_EPISODES) -> list[Candidate]:
    ctx, pipeline = request.context, request.pipeline
    stages = ctx.stages
    hold = _hold(stages)
    plan = sizing.size(ctx, pipeline, v, request.history)
    sized = dict(plan.proposal)
    # a stage the sizing holds because its requests do not wait is no bottleneck, whatever
    # its utilisation reads (a batching GPU stage reads busy long before it is short): no
    # candidate gives it more, and it alone does not make the pipeline failing
    report = request.bottleneck
    symptoms = report.symptoms if report is not None else ()
    saturated = {sy.stage for sy in symptoms if sy.saturated} - plan.quiet
    named = [n for n in (report.stages if report is not None else ()) if n not in plan.quiet]
    failing = ctx.p99_ms > ctx.sla_ms or bool(saturated)
    out: list[Candidate] = []
    relief = dict(hold)
    if named and failing:
        for name in named:
            more = _more(ctx.stage(name), pipeline, v)
            if more is not None:
                relief[name] = more
        if relief != hold:
            out.append(Candidate(f"relieve {'+'.join(named)}", relief))
    for name in named:
        # the analysis names a stage the sizing finds no shortage in (latency-bound, or a
        # window without the work to estimate from): give it the relief step as well
        if holds(sized[name]) and not holds(relief[name]):
            sized[name] = relief[name]
    if sized != hold:
        out.append(Candidate("fit", sized, "sized to the measured load"))
    direction = {s.name: _adds_capacity(s, sized[s.name]) for s in stages}
    ranked = sorted((r for r in request.episodes if r.experience.reward > 0),
                    key=lambda r: -(r.similarity * r.experience.reward))
    for r in ranked:
        if sum(c.label.startswith("episode") for c in out) >= max_episodes:
            break
        prop = {s.name: target_json(s.kind, s.allocation, r.experience.action.get(s.name, {}))
                for s in stages}
        # An episode is replayed only where it moves every stage the way the measured load
        # says it should (its step size is what the memory contributes): judged by what it
        # would do here, inside this stage's limits, since an episode that added a replica
        # to a stage now at its maximum does nothing now, and one that removed capacity in
        # a calmer state would starve this one.
        within = {s.name: _within(prop[s.name], s, pipeline, v) for s in stages}
        effect = {s.name: _adds_capacity(s, within[s.name]) for s in stages}
        if effect != direction or not any(effect.values()):
            continue
        if any(_below(s, within[s.name], sized[s.name]) for s in stages):
            continue   # less than the measured load needs: the memory's step may be larger
        if all(c.proposal != prop for c in out):
            out.append(Candidate(f"episode {r.experience.id[:8]}", prop,
                                 f"reward {r.experience.reward:+.2f}"))
    if not (failing and out):
        # holding a failing pipeline still is never on offer while something would help
        out.insert(0, Candidate("hold", hold))
    return out


def default_choice(cands: Sequence[Candidate]) -> Candidate:
    """The fixed rule of the retrieval-only selector: the best retrieved episode that
    `build` found consistent with the state, else size the stages to the measured load
    (`fit`), else relieve the bottleneck, else hold."""
    for prefix in ("episode", "fit", "relieve"):
        for c in cands:
            if c.label.startswith(prefix):
                return c
    return cands[0]


def _within(target: Entry, s: StageObservation, pipeline: PipelineSpec,
            v: ValidatorConfig) -> Entry:
    """`target` with its values clamped into the stage's limits."""
    lim = pipeline.stage(s.name).limits(v)
    out = dict(target)
    if REPLICAS in out:
        out[REPLICAS] = min(max(out[REPLICAS], lim.replicas_min), lim.replicas_max)
    if CPU in out:
        out[CPU] = min(max(out[CPU], lim.cpu_m_min), lim.cpu_m_max)
    if RATE in out:
        out[RATE] = min(max(out[RATE], lim.rate_min), lim.rate_max)
    return out


def _below(s: StageObservation, target: Entry, sized: Entry) -> bool:
    """Whether `target` leaves the stage with less of any dimension than `sized` does."""
    cur = {REPLICAS: s.replicas, CPU: s.cpu_m, RATE: s.rate}
    return any(target.get(k, v) < sized.get(k, v) - 1e-9 for k, v in cur.items())


def _adds_capacity(s: StageObservation, target: Entry) -> int:
    """+1 if the target adds capacity to the stage, -1 if it removes some, 0 otherwise."""
    ups = [target.get(REPLICAS, s.replicas) - s.replicas,
           target.get(CPU, s.cpu_m) - s.cpu_m,
           target.get(RATE, s.rate) - s.rate]
    if any(u < 0 for u in ups):
        return -1
    return 1 if any(u > 0 for u in ups) else 0
