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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray.backends.sim import SimBackend
from sair_ray.bottleneck import analyse
from sair_ray.config import ValidatorConfig
from sair_ray.profiles import Profile, list_profiles, load_profile
from sair_ray.sim.model import StageModel
from sair_ray.types import PipelineSpec, StageAllocation, StageSpec
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


# -- running --------------------------------------------------------------------------------
def run_scenario(sc: BottleneckScenario) -> dict[str, Any]:
    """Simulate the scenario, analyse the last window; the scenario's result row."""
    profile = load_profile(sc.app)
    pipe = profile.pipeline
    backend = SimBackend(profile, Poisson(rate=sc.rate), seed=sc.seed * 100_003 + sc.index,
                         allocation=sc.allocation)
    t = sc.observe_at
    backend.advance_to(t)
    prev = backend.observe(t - 2 * WINDOW_S, t - WINDOW_S)
    ctx = backend.observe(t - WINDOW_S, t)
    report = analyse(ctx, pipe, prev)
    if report.label == "multiple":
        predicted = "multiple"
    elif report.label in pipe.stage_names:
        predicted = stage_class(pipe, report.label)
    else:
        predicted = NONE
    return {
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


def evaluate(n: int = 200, seed: int = 0, workers: int = 1) -> list[dict[str, Any]]:
    """Build and run scenarios 0..n-1; one row per scenario, in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    scenarios = [make_scenario(i, seed) for i in range(n)]
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


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                  command: str = "") -> dict[str, Path]:
    """scenarios.parquet (one row per scenario), metrics.parquet (one row per class) and
    results.md (the table, per-app accuracy, the confusion matrix) under `out_dir`."""
    import json

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
    pq.write_table(pa.Table.from_pylist(
        [{"class": c, **v} for c, v in m["per_class"].items()]
        + [{"class": "overall", "precision": math.nan, "recall": math.nan,
            "f1": m["accuracy"], "support": m["n"]}]), paths["metrics"])
    apps = list(dict.fromkeys(r["app"] for r in rows))
    per_app = ["| app | scenarios | accuracy |", "|---|---:|---:|"]
    for a in apps:
        rs = [r for r in rows if r["app"] == a]
        per_app.append(f"| {a} | {len(rs)} | {sum(r['correct'] for r in rs) / len(rs):.3f} |")
    exact = [r["stages_exact"] for r in rows if r["truth"] == "multiple"
             and r["predicted"] == "multiple"]
    head = f"Command: `{command}`\n\n" if command else ""
    paths["markdown"].write_text(
        head + f"Bottleneck detection on {m['n']} generated scenarios (classes balanced, "
        "apps as balanced as their limits allow; ground truth from the construction, see "
        "sair_ray/bench/bottleneck_eval.py). Overall accuracy "
        f"{m['accuracy']:.1%}.\n\n" + metrics_markdown(m) + "\nPer app:\n\n"
        + "\n".join(per_app) + "\n\n"
        + (f"Of the {len(exact)} correct `multiple` answers, {sum(exact)} named exactly the "
           "two constructed stages.\n" if exact else ""))
    return paths
