"""Independent re-check of every executed action: the "validator escapes" of a run.

The validator (docs/algorithm.md §7) promises that whatever the policy proposes, the executed
allocation stays inside each stage's limits, moves by at most one step per dimension, respects the
scale-up/scale-down cooldowns and fits the cluster. This module checks that promise from
the decision records alone, without the validator's code, so a validator bug shows up as a
non-zero `validator_escapes` column instead of being trusted away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sair_ray.config import ValidatorConfig
from sair_ray.decision import Decision
from sair_ray.types import Action, PipelineSpec, StageAllocation
from sair_ray.validator import cooldown_slack_s, is_feasible

EPS = 1e-9


def allocation_problems(before: Mapping[str, StageAllocation], action: Action,
                        pipeline: PipelineSpec, v: ValidatorConfig) -> list[str]:
    """What is wrong with executing `action` from `before` (empty when nothing is):
    stage limits, step limits and cluster capacity. Cooldowns need the history and are
    checked by `count_escapes`."""
    out = []
    after = action.apply(before)
    for spec in pipeline.stages:
        if spec.name not in after:
            continue
        a = after[spec.name]
        if not is_feasible(a, spec.limits(v)):
            out.append(f"{spec.name}: {a} outside the stage limits")
        d = action.delta(spec.name)
        steps = ((abs(d.replicas), v.max_replica_step, "replicas"),
                 (abs(d.cpu_m), v.max_cpu_step_m, "cpu_m"),
                 (abs(d.mem_mb), v.max_mem_step_mb, "mem_mb"),
                 (abs(d.rate), v.max_rate_step, "rate"))
        out += [f"{spec.name}: {name} step {x} > {lim}" for x, lim, name in steps
                if x > lim + EPS]
    cpus = sum(a.replicas * a.cpu_m for a in after.values()) / 1000
    mem = sum(a.replicas * a.mem_mb for a in after.values())
    gpus = sum(after[s.name].replicas * s.gpus_per_replica for s in pipeline.stages
               if s.is_gpu and s.name in after)
    c = pipeline.cluster
    if cpus > c.cpus + EPS or mem > c.memory_mb + EPS or gpus > c.gpus + EPS:
        out.append(f"cluster: {cpus:g} CPUs, {mem:g} MB, {gpus:g} GPUs exceed {c}")
    return out


def count_escapes(decisions: Sequence[Decision], pipeline: PipelineSpec,
                  v: ValidatorConfig) -> int:
    """Rounds whose executed action broke a limit, a step, a cooldown, or whose result is
    not what the next round observed (the backend did something other than asked)."""
    escapes = 0
    up_s = v.cooldown_up_s - cooldown_slack_s(v.cooldown_up_s) - EPS
    down_s = v.cooldown_down_s - cooldown_slack_s(v.cooldown_down_s) - EPS
    last_up: dict[str, float] = {}
    last_down: dict[str, float] = {}
    for i, d in enumerate(decisions):
        before, action = d.context.allocation, d.action
        bad = bool(allocation_problems(before, action, pipeline, v))
        for stage, delta in action.deltas.items():
            dims = (delta.replicas, delta.cpu_m, delta.mem_mb, delta.rate)
            if any(x > 0 for x in dims):
                bad |= d.time - last_up.get(stage, -float("inf")) < up_s
                last_up[stage] = d.time
            if any(x < 0 for x in dims):
                bad |= d.time - last_down.get(stage, -float("inf")) < down_s
                last_down[stage] = d.time
        if i + 1 < len(decisions):
            bad |= decisions[i + 1].context.allocation != d.targets
        escapes += bad
    return escapes
