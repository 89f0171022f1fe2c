"""Candidate actions for one round: what a small policy model chooses among.

A 135M-parameter model cannot reason its way from metrics to a good allocation, but it
can pick among a handful of sensible, fully-formed options and copy one, which is what
in-context learning in small models amounts to. Each round offers:

- `hold`: every stage as it is;
- `relieve <stage>`: one validator step more capacity for the stage(s) the bottleneck
  analysis names (replicas, or CPU when replicas are at their limit; GPU rate first, then
  replicas), offered whenever the SLA is violated or a stage is saturated;
- `trim <stage>`: one replica (or one rate step) less on the least-utilised stage, offered
  when p99 is under half the SLA and nothing is saturated;
- `episode <id>`: the action of each of the best retrieved episodes (similarity x reward),
  re-applied as a delta from the current allocation; while the SLA is violated or a stage
  is saturated, only episodes that add capacity to a bottleneck stage and remove none.

All are proposals in the SPEC 6 schema (absolute targets for every stage); the validator
still clamps them. With `policy.decoding = "candidates"` the LLM answers with one
candidate's label (an enum in the output schema: a few tokens instead of a whole action to
copy); with `"free"` they are only listed in the prompt as hints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyRequest
from sair_ray.policy.prompt import target_json
from sair_ray.types import PipelineSpec, StageKind, StageObservation

MAX_EPISODES = 3
TRIM_BELOW = 0.5   # p99 under this share of the SLA counts as over-provisioned


@dataclass(frozen=True)
class Candidate:
    label: str                 # unique within a round; what the model answers with
    proposal: dict[str, Any]
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


def _hold(stages: Sequence[StageObservation]) -> dict[str, Any]:
    return {s.name: {"action": "none"} for s in stages}


def _more(s: StageObservation, pipeline: PipelineSpec, v: ValidatorConfig) -> dict | None:
    lim = pipeline.stage(s.name).limits(v)
    if s.kind == StageKind.GPU:
        if s.rate < lim.rate_max - 1e-9:
            return {"action": "adjust_rate",
                    "rate_ratio": round(min(lim.rate_max, s.rate + v.max_rate_step), 2)}
        if s.replicas < lim.replicas_max:
            return {"action": "scale_replicas",
                    "replicas": min(lim.replicas_max, s.replicas + v.max_replica_step)}
        return None
    if s.replicas < lim.replicas_max:
        return {"action": "scale_replicas",
                "replicas": min(lim.replicas_max, s.replicas + v.max_replica_step)}
    if s.cpu_m < lim.cpu_m_max:
        return {"action": "scale_resources", "cpu_millicores":
                min(lim.cpu_m_max, s.cpu_m + v.max_cpu_step_m), "memory_mb": s.mem_mb}
    return None


def _less(s: StageObservation, pipeline: PipelineSpec, v: ValidatorConfig) -> dict | None:
    lim = pipeline.stage(s.name).limits(v)
    if s.replicas > lim.replicas_min:
        return {"action": "scale_replicas", "replicas": s.replicas - 1}
    if s.kind == StageKind.GPU and s.rate > lim.rate_min + 1e-9:
        return {"action": "adjust_rate",
                "rate_ratio": round(max(lim.rate_min, s.rate - v.max_rate_step / 2), 2)}
    return None


def build(request: PolicyRequest, v: ValidatorConfig,
          max_episodes: int = MAX_EPISODES) -> list[Candidate]:
    ctx, pipeline = request.context, request.pipeline
    stages = ctx.stages
    out = [Candidate("hold", _hold(stages))]
    report = request.bottleneck
    saturated = {sy.stage for sy in getattr(report, "symptoms", ()) if sy.saturated}
    named = list(getattr(report, "stages", ()))
    failing = ctx.p99_ms > ctx.sla_ms or bool(saturated)
    if named and failing:
        prop = _hold(stages)
        for name in named:
            more = _more(ctx.stage(name), pipeline, v)
            if more is not None:
                prop[name] = more
        if prop != _hold(stages):
            out.append(Candidate(f"relieve {'+'.join(named)}", prop))
    if ctx.p99_ms < TRIM_BELOW * ctx.sla_ms and not saturated:
        for s in sorted(stages, key=lambda s: s.util):
            less = _less(s, pipeline, v)
            if less is not None:
                out.append(Candidate(f"trim {s.name}", {**_hold(stages), s.name: less}))
                break
    ranked = sorted((r for r in request.episodes if r.experience.reward > 0),
                    key=lambda r: -(r.similarity * r.experience.reward))
    for r in ranked:
        if sum(c.label.startswith("episode") for c in out) >= max_episodes:
            break
        prop = {s.name: target_json(s.kind, s.allocation, r.experience.action.get(s.name, {}))
                for s in stages}
        if failing:
            # a failing pipeline needs capacity where it is short: an episode that removes
            # some, or adds none to the bottleneck, was good in a calmer state, not this one
            effect = {s.name: _adds_capacity(s, prop[s.name]) for s in stages}
            if min(effect.values()) < 0 or not any(effect[n] > 0 for n in named or effect):
                continue
        if all(c.proposal != prop for c in out):
            out.append(Candidate(f"episode {r.experience.id[:8]}", prop,
                                 f"reward {r.experience.reward:+.2f}"))
    return out


def default_choice(cands: Sequence[Candidate]) -> Candidate:
    """The fixed rule of the retrieval-only selector: the best episode if one was retrieved,
    else relieve the bottleneck, else trim, else hold. (`build` offers only episodes that
    add capacity while the pipeline is failing, so "best episode" never holds a failing
    pipeline still when a relief exists.)"""
    for prefix in ("episode", "relieve", "trim"):
        for c in cands:
            if c.label.startswith(prefix):
                return c
    return cands[0]


def _adds_capacity(s: StageObservation, target: dict[str, Any]) -> int:
    """+1 if the target adds capacity to the stage, -1 if it removes some, 0 otherwise."""
    ups = [target.get("replicas", s.replicas) - s.replicas,
           target.get("cpu_millicores", s.cpu_m) - s.cpu_m,
           target.get("rate_ratio", s.rate) - s.rate]
    if any(u < 0 for u in ups):
        return -1
    return 1 if any(u > 0 for u in ups) else 0
