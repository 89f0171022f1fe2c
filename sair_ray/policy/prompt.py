"""The three prompt inputs of docs/algorithm.md §6 / paper Appendix I, as plain text.

- `constraints`: limits, SLA, budget and scaling guidelines. Static for an app, so it goes
  first in the prompt and llama.cpp reuses its KV cache across rounds.
- `sampled_episodes`: retrieved experiences in the paper's episode format, reward-labelled,
  in the curriculum order the retriever returns (lowest reward first).
- `current_input`: per-stage metrics of this round plus the bottleneck analysis.

One stage line format serves episodes and the current input, so the model sees the same
shape in both. Numbers are rounded hard: every token costs ~5 ms of prompt evaluation on
the embedded model, and 3 significant digits carry all the signal a scaler needs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sair_ray.bottleneck import BottleneckReport
from sair_ray.config import ValidatorConfig
from sair_ray.proposal import (
    ACTION,
    CPU,
    MEM,
    RATE,
    REPLICAS,
    Entry,
    hold,
    resize,
    scale_both,
    scale_replicas,
    set_rate,
)
from sair_ray.types import (
    ClusterResources,
    Context,
    Experience,
    PipelineSpec,
    StageAllocation,
    StageKind,
    StageObservation,
)

GOOD, FAIR = 0.5, 0.0  # reward label thresholds: > GOOD "GOOD", > FAIR "FAIR", else "BAD"


def _n(x: float) -> str:
    """A compact number: integers plain, others to 3 significant digits."""
    if x != x or x in (float("inf"), float("-inf")):
        return "n/a"
    if abs(x - round(x)) < 1e-9 and abs(x) < 1e6:
        return str(int(round(x)))
    return f"{x:.3g}"


def stage_line(s: StageObservation) -> str:
    """One stage, compactly: r replicas, q queue, u utilisation (GPU: of its rate quota),
    then resources, p99 processing and mean queue wait."""
    res = f"rate={s.rate:.2f}" if s.kind == StageKind.GPU else f"cpu={s.cpu_m}m mem={s.mem_mb}MB"
    return (f"{s.name} r={s.replicas} q={_n(s.queue)} u={_n(100 * s.util)}% {res} "
            f"p99={_n(s.p99_ms)}ms wait={_n(s.queue_delay_ms)}ms")


def context_lines(ctx: Context) -> list[str]:
    return [*(stage_line(s) for s in ctx.stages),
            f"E2E Latency: p99={_n(ctx.p99_ms)}ms (SLA {_n(ctx.sla_ms)}ms) "
            f"arrivals={_n(ctx.arrival_rate)}/s cost=${_n(ctx.cost_rate)}/h"
            + (f" drops={ctx.drops}" if ctx.drops else "")]


def _verb(kind: StageKind, d: Mapping[str, float]) -> str:
    reps = bool(d.get("replicas"))
    res = bool(d.get("cpu_m") or d.get("mem_mb"))
    if kind == StageKind.GPU:
        return "scale_replicas" if reps else "adjust_rate" if d.get("rate") else "none"
    return "scale_both" if reps and res else "scale_replicas" if reps else \
        "scale_resources" if res else "none"


def target_json(kind: StageKind, before: StageAllocation, delta: Mapping[str, float]) -> Entry:
    """One stage's action in the output schema: absolute targets after `delta`."""
    verb = _verb(kind, delta)
    replicas = before.replicas + int(delta.get("replicas", 0))
    cpu_m = before.cpu_m + int(delta.get("cpu_m", 0))
    mem_mb = before.mem_mb + int(delta.get("mem_mb", 0))
    if verb == "scale_replicas":
        return scale_replicas(replicas)
    if verb == "scale_resources":
        return resize(cpu_m, mem_mb)
    if verb == "scale_both":
        return scale_both(replicas, cpu_m, mem_mb)
    if verb == "adjust_rate":
        return set_rate(round(before.rate + float(delta.get("rate", 0.0)), 2))
    return hold()


def action_json(ctx: Context, action: Mapping[str, Mapping[str, float]], *,
                changed_only: bool = False) -> dict[str, Any]:
    """An executed action (deltas, as stored) in the absolute-target schema of §6;
    `changed_only` leaves out the stages it did not touch (shorter episodes)."""
    out = {s.name: target_json(s.kind, s.allocation, action.get(s.name, {}))
           for s in ctx.stages}
    if changed_only:
        out = {k: v for k, v in out.items() if v[ACTION] != "none"}
    return out


def episode_input(ctx: Context) -> str:
    """An episode's state on one line: the signal a decision turned on (replicas, queue,
    utilisation, CPU or rate per stage; end-to-end p99 vs SLA). The current input keeps the
    full detail; episodes are many, and each token costs prompt time on a small model."""
    parts = []
    for s in ctx.stages:
        res = f"rate={s.rate:.2f}" if s.kind == StageKind.GPU else f"cpu={s.cpu_m}m"
        parts.append(f"{s.name} r={s.replicas} q={_n(s.queue)} u={_n(100 * s.util)}% {res}")
    return "; ".join(parts) + f"; p99={_n(ctx.p99_ms)}ms SLA={_n(ctx.sla_ms)}ms"


def changed(proposal: Mapping[str, Any]) -> dict[str, Any]:
    """A proposal without its `none` stages (how candidates are listed in the prompt)."""
    return {k: v for k, v in proposal.items()
            if not (isinstance(v, Mapping) and v.get(ACTION) == "none")} or {"all": "none"}


def label(reward: float) -> str:
    return "GOOD" if reward > GOOD else "FAIR" if reward > FAIR else "BAD"


def format_episode(e: Experience) -> str:
    ctx = Context.from_dict(e.context)
    pred = json.dumps(action_json(ctx, e.action, changed_only=True),
                      separators=(",", ":")) if e.action else "{} (hold)"
    return "\n".join([f"Episode (Reward: {e.reward:+.2f} {label(e.reward)}):",
                      f"Input: {episode_input(ctx)}", f"Prediction: {pred}",
                      f"Reward: {e.reward:+.2f}"])


def format_episodes(episodes: Sequence[Experience]) -> str:
    if not episodes:
        return "(no past episodes yet: act on the current input and the guidelines)"
    return "\n\n".join(format_episode(e) for e in episodes)


def format_current(ctx: Context, bottleneck: BottleneckReport | None = None) -> str:
    lines = context_lines(ctx)
    if bottleneck is not None:
        lines.append(f"Bottleneck: {bottleneck.label} ({bottleneck.reason})")
    return "\n".join(lines)


def format_constraints(pipeline: PipelineSpec, v: ValidatorConfig, c_max: float) -> str:
    """Limits, goals and the paper's scaling guidelines. Depends on the app only (not on the
    round), so it is a stable prompt prefix."""
    stages = []
    for s in pipeline.stages:
        lim = s.limits(v)
        if s.kind == StageKind.GPU:
            stages.append(f"{s.name} (GPU stage): replicas {lim.replicas_min}-"
                          f"{lim.replicas_max}, rate_ratio {lim.rate_min:.2f}-{lim.rate_max:.2f}; "
                          f"actions adjust_rate|scale_replicas|none")
        else:
            stages.append(f"{s.name} (CPU stage): replicas {lim.replicas_min}-"
                          f"{lim.replicas_max}, cpu_millicores {lim.cpu_m_min}-{lim.cpu_m_max}, "
                          f"memory_mb {lim.mem_mb_min}-{lim.mem_mb_max}; actions "
                          f"scale_replicas|scale_resources|scale_both|none")
    c = pipeline.cluster
    return "\n".join([
        f"Pipeline {pipeline.name}, stages in order: {', '.join(pipeline.stage_names)}.",
        *stages,
        f"Physical Constraints: Max GPUs: {_n(c.gpus)}, Max CPU cores: {_n(c.cpus)}, "
        f"Max memory: {_n(c.memory_mb / 1024)} GB, Max cost budget: ${_n(c_max)}/hour.",
        f"Per step: replicas change by at most {v.max_replica_step}, cpu by "
        f"{v.max_cpu_step_m}m, memory by {v.max_mem_step_mb}MB, rate_ratio by "
        f"{v.max_rate_step:.2f}; larger changes are clamped.",
        "Scaling Guidelines: Current resource allocations are shown in state. Aggressive "
        "reduction (50%) is dangerous. If p99 > SLA and utilization is low, a burst already "
        "passed but the system failed to handle it; needs more capacity. Trust the latency: "
        "p99 > SLA means the system failed. Scale the bottleneck stage first.",
        f"Goals: Primary: Keep p99 latency below SLA target ({_n(pipeline.sla_ms)}ms). "
        "Secondary: Minimize cost. Learn from outcomes: if scaling a stage didn't improve "
        "latency, avoid scaling it next time.",
        "Output absolute targets (not deltas) for every stage; use action none to keep a "
        "stage as it is.",
    ])


RATIONALE_CHARS = 60  # ~15 tokens: the option taken explains a decision better than prose
MAX_ENUM = 40  # grammar size grows with the enums; 40 values per field keep it small


def value_grid(lo: float, hi: float, step: float, *, integral: bool = True) -> list[float]:
    """The values a field may take in the output schema: `lo`, `hi` and multiples of
    `step` between them, thinned to at most MAX_ENUM values. llama.cpp's grammar ignores
    minimum/maximum, so bounds are expressed as enums the decoder cannot leave."""
    while (hi - lo) / step > MAX_ENUM - 2:
        step *= 2
    k0 = math.ceil(lo / step)
    vals = {lo, hi, *(k * step for k in range(k0, int(math.floor(hi / step)) + 1))}
    out = sorted(v for v in vals if lo <= v <= hi)
    return [int(round(v)) for v in out] if integral else [round(v, 2) for v in out]


def _variant(verb: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {ACTION: {"const": verb}, **fields},
            "required": [ACTION, *fields], "additionalProperties": False}


def output_schema(pipeline: PipelineSpec, v: ValidatorConfig) -> dict[str, Any]:
    """JSON schema of the reply: {"action": {<stage>: {...}}, "rationale": str}.

    One variant per verb, carrying exactly that verb's fields, with in-range values only:
    a schema-constrained decoder can then neither emit 2e15 replicas nor a verb without its
    fields. The validator still applies steps, cooldowns and cluster capacity."""
    props: dict[str, Any] = {}
    for s in pipeline.stages:
        lim = s.limits(v)
        reps = {"enum": value_grid(lim.replicas_min, lim.replicas_max, 1)}
        if s.kind == StageKind.GPU:
            rate = {"enum": value_grid(lim.rate_min, lim.rate_max, 0.1, integral=False)}
            variants = [_variant("none", {}), _variant("scale_replicas", {REPLICAS: reps}),
                        _variant("adjust_rate", {RATE: rate})]
        else:
            cpu = {"enum": value_grid(lim.cpu_m_min, lim.cpu_m_max, v.max_cpu_step_m / 2)}
            mem = {"enum": value_grid(lim.mem_mb_min, lim.mem_mb_max, v.max_mem_step_mb / 2)}
            variants = [_variant("none", {}), _variant("scale_replicas", {REPLICAS: reps}),
                        _variant("scale_resources", {CPU: cpu, MEM: mem}),
                        _variant("scale_both", {REPLICAS: reps, CPU: cpu, MEM: mem})]
        props[s.name] = {"oneOf": variants}
    return {"type": "object",
            "properties": {
                "action": {"type": "object", "properties": props,
                           "required": list(pipeline.stage_names),
                           "additionalProperties": False},
                "rationale": {"type": "string", "maxLength": RATIONALE_CHARS}},
            "required": ["action", "rationale"], "additionalProperties": False}


def free_line(free: ClusterResources) -> str:
    return (f"Free now: {_n(free.cpus)} CPU cores, {_n(free.memory_mb / 1024)} GB memory, "
            f"{_n(free.gpus)} GPUs.")
