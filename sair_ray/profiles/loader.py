"""Pipeline profiles: a `PipelineSpec` plus how each stage behaves in the simulator.

Profiles are YAML files; the four paper pipelines ship in `sair_ray/profiles/` and are
meant to be copied as templates. A profile file looks like this (every key checked, and
every error names the key, e.g. `stages[1].sim.service.cv`):

    name: image_classification
    description: ...
    sla_ms: 1000
    cluster: {cpus: 64, memory_mb: 262144, gpus: 2}
    workload: {kind: poisson, rate: 50}          # default workload (optional)
    stages:
      - name: preprocess
        kind: cpu                                  # cpu | gpu
        cpu_m_min: 250                             # ... the StageSpec fields
        initial: {replicas: 1, cpu_m: 1000, mem_mb: 1024}
        sim:
          service: {dist: lognormal, mean_ms: 60, cv: 0.35}
          work: [{attr: generated_tokens, per_unit_ms: 6,
                  units: {dist: pareto, mean: 28, alpha: 1.4, max: 2048}}]
          ref_cpu_m: 1000
          parallel_fraction: 0.5
          gpu_fraction: 1.0
          batch: {max_size: 1, overhead_ms: 0}
          cold_start_s: 10
          memory: {need_mb: 400, oom_ratio: 0.75, max_slowdown: 2.0}

See docs/simulator.md for the model behind each key.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sair_ray.schema import Fields, SchemaError
from sair_ray.sim.distributions import KINDS, Dist
from sair_ray.sim.model import StageModel, WorkTerm
from sair_ray.types import (
    ClusterResources,
    PipelineSpec,
    SpecError,
    StageAllocation,
    StageKind,
    StageSpec,
)
from sair_ray.workloads import Workload, WorkloadError, workload_from_dict

PROFILE_PACKAGE = "sair_ray.profiles"


class ProfileError(SchemaError):
    """A pipeline profile is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    pipeline: PipelineSpec
    models: tuple[StageModel, ...]          # in stage order
    workload_spec: Mapping[str, Any] | None = None
    description: str = ""
    source: str = ""
    base_dir: str | None = field(default=None, compare=False)

    def model(self, stage: str) -> StageModel:
        return self.models[self.pipeline.stage_names.index(stage)]

    @property
    def name(self) -> str:
        return self.pipeline.name

    def default_workload(self) -> Workload:
        if self.workload_spec is None:
            raise ProfileError(f"profile {self.name!r} has no default workload")
        return workload_from_dict(self.workload_spec, "workload", base_dir=self.base_dir)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with sair-ray."""
    root = importlib.resources.files(PROFILE_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`"nlp_analysis"`) or any profile YAML file by path."""
    s = str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in s and not s.endswith((".yaml", ".yml")):
        res = importlib.resources.files(PROFILE_PACKAGE) / f"{s}.yaml"
        if not res.is_file():
            raise ProfileError(f"no shipped profile {s!r}; shipped: "
                               f"{', '.join(list_profiles())} (or give a path to a YAML file)")
        return profile_from_yaml(res.read_text(), source=f"{s}.yaml")
    p = Path(name_or_path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ProfileError(f"cannot read profile {p}: {e.strerror or e}") from None
    return profile_from_yaml(text, source=str(p), base_dir=str(p.parent))


def load_pipeline(name_or_path: str | Path) -> PipelineSpec:
    """Only the pipeline part of a profile (stages, limits, SLA, cluster): what a live app
    needs. Here `sim:` blocks are optional (checked when present) and so is `initial` (a
    live backend reads the allocation from the app)."""
    s = str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in s and not s.endswith((".yaml", ".yml")):
        return load_profile(s).pipeline
    p = Path(name_or_path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ProfileError(f"cannot read profile {p}: {e.strerror or e}") from None
    return _parse(_yaml(text, str(p)), str(p), str(p.parent), need_sim=False).pipeline


def replica_moves_only(data: Mapping[str, Any], *,
                       replicas_max: int | Mapping[str, int] | None = None) -> dict[str, Any]:
    """A copy of a profile mapping (a profile YAML's contents) whose every stage has its CPU
    and memory pinned to its initial values, so a controller reading it moves replica
    counts only (a CPU or memory change of a Serve deployment restarts every replica);
    `replicas_max`: a ceiling for every stage, or per stage name."""
    import copy

    out = copy.deepcopy(dict(data))
    for st in out["stages"]:
        init = st["initial"]
        st["cpu_m_min"] = st["cpu_m_max"] = init["cpu_m"]
        st["mem_mb_min"] = st["mem_mb_max"] = init["mem_mb"]
        if isinstance(replicas_max, int):
            st["replicas_max"] = replicas_max
        elif replicas_max and st["name"] in replicas_max:
            st["replicas_max"] = replicas_max[st["name"]]
    return out


def profile_from_yaml(text: str, source: str = "<string>",
                      base_dir: str | None = None) -> Profile:
    return profile_from_dict(_yaml(text, source), source=source, base_dir=base_dir)


def profile_from_dict(data: Any, source: str = "<dict>",
                      base_dir: str | None = None) -> Profile:
    return _parse(data, source, base_dir, need_sim=True)


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: not valid YAML: {e}") from None


def _parse(data: Any, source: str, base_dir: str | None, *, need_sim: bool) -> Profile:
    try:
        return _profile(Fields(data, ""), source, base_dir, need_sim)
    except (SchemaError, SpecError) as e:
        hint = ""
        if need_sim and str(e).endswith("required key is missing") and (
                ".sim" in str(e) or ".initial" in str(e)):
            hint = (" (the simulator needs `initial` and a `sim:` model of every stage, "
                    "docs/simulator.md; attaching to a live app needs neither)")
        raise ProfileError(f"{source}: {e}{hint}") from None


def _profile(f: Fields, source: str, base_dir: str | None, need_sim: bool) -> Profile:
    name = f.text("name")
    description = f.text("description", "")
    sla_ms = f.num("sla_ms", lo=0, lo_open=True)
    cluster = ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=2)
    if f.has("cluster"):
        c = f.sub("cluster")
        cluster = ClusterResources(cpus=c.num("cpus", lo=0), memory_mb=c.num("memory_mb", lo=0),
                                   gpus=c.num("gpus", lo=0))
        c.done()
    workload_spec = f.raw("workload", None)
    if workload_spec is not None:
        try:  # validate now so a bad default workload fails at load time, naming its key
            if not (isinstance(workload_spec, Mapping) and workload_spec.get("kind") == "trace"):
                workload_from_dict(workload_spec, "workload", base_dir=base_dir)
        except WorkloadError as e:
            raise ProfileError(str(e)) from None
    stage_fields = f.items("stages")
    if not stage_fields:
        raise ProfileError("stages: a pipeline needs at least one stage")
    specs, models = [], []
    for sf in stage_fields:
        spec, model = _stage(sf, need_sim)
        specs.append(spec)
        if model is not None:
            models.append(model)
    f.done()
    pipeline = PipelineSpec(name=name, stages=tuple(specs), sla_ms=sla_ms, cluster=cluster)
    return Profile(pipeline, tuple(models), workload_spec, description, source, base_dir)


def _stage(f: Fields, need_sim: bool = True) -> tuple[StageSpec, StageModel | None]:
    name = f.text("name")
    kind = StageKind(f.text("kind", "cpu", choices=("cpu", "gpu")))
    defaults = StageSpec(name=name, kind=kind)
    kw: dict[str, Any] = {}
    for key in ("cpu_m_min", "cpu_m_max", "mem_mb_min", "mem_mb_max", "queue_max"):
        kw[key] = f.num(key, getattr(defaults, key), lo=1, integer=True)
    for key in ("replicas_min", "replicas_max"):
        kw[key] = f.num(key, None, lo=0, integer=True)
    kw["gpus_per_replica"] = f.num("gpus_per_replica", defaults.gpus_per_replica, lo=0,
                                   lo_open=True)
    if not need_sim and not f.has("initial"):
        # a live app's allocation is read from the app; this only has to be in range
        initial = StageAllocation(
            replicas=1, cpu_m=min(max(1000, kw["cpu_m_min"]), kw["cpu_m_max"]),
            mem_mb=min(max(1024, kw["mem_mb_min"]), kw["mem_mb_max"]))
        spec = StageSpec(name=name, kind=kind, initial=initial, **kw)
        model = _model(f.sub("sim"), kind) if f.has("sim") else None
        f.done()
        return spec, model
    init = f.sub("initial")
    initial = StageAllocation(
        replicas=init.num("replicas", lo=0, integer=True),
        cpu_m=init.num("cpu_m", lo=1, integer=True),
        mem_mb=init.num("mem_mb", lo=1, integer=True),
        rate=init.num("rate", 1.0, lo=0, hi=1, lo_open=True) if kind is StageKind.GPU else 1.0)
    if kind is StageKind.CPU and init.has("rate"):
        raise ProfileError(f"{init.key('rate')}: only GPU stages have a rate")
    init.done()
    _within(init, "cpu_m", initial.cpu_m, kw["cpu_m_min"], kw["cpu_m_max"])
    _within(init, "mem_mb", initial.mem_mb, kw["mem_mb_min"], kw["mem_mb_max"])
    spec = StageSpec(name=name, kind=kind, initial=initial, **kw)
    model = _model(f.sub("sim"), kind) if need_sim or f.has("sim") else None
    f.done()
    return spec, model


def _within(f: Fields, key: str, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        raise ProfileError(f"{f.key(key)}: {v} is outside the stage's range [{lo}, {hi}]")


def _model(f: Fields, kind: StageKind) -> StageModel:
    service = _dist(f.sub("service"), "_ms")
    work = []
    for w in f.items("work", None):
        work.append(WorkTerm(attr=w.text("attr"), per_unit_ms=w.num("per_unit_ms", lo=0),
                             units=_dist(w.sub("units"), "")))
        w.done()
    batch_max, overhead = 1, 0.0
    if f.has("batch"):
        b = f.sub("batch")
        batch_max = b.num("max_size", 1, lo=1, integer=True)
        overhead = b.num("overhead_ms", 0.0, lo=0)
        b.done()
    need, oom_ratio, max_slow = 0.0, 0.75, 2.0
    if f.has("memory"):
        m = f.sub("memory")
        need = m.num("need_mb", lo=0)
        oom_ratio = m.num("oom_ratio", 0.75, lo=0, hi=1, lo_open=True)
        max_slow = m.num("max_slowdown", 2.0, lo=1)
        m.done()
    if kind is StageKind.CPU:
        ref_cpu_m = f.num("ref_cpu_m", 1000, lo=1, integer=True)
        p = f.num("parallel_fraction", 0.0, lo=0, hi=1)
        g = 1.0
        if f.has("gpu_fraction"):
            raise ProfileError(f"{f.key('gpu_fraction')}: only GPU stages have a gpu_fraction")
    else:
        ref_cpu_m, p = 1000, 0.0
        g = f.num("gpu_fraction", 1.0, lo=0, hi=1, lo_open=True)
        for key in ("ref_cpu_m", "parallel_fraction"):
            if f.has(key):
                raise ProfileError(f"{f.key(key)}: GPU stages scale with the rate ratio, "
                                   "not with CPU; remove this key")
    cold = f.num("cold_start_s", 10.0, lo=0)
    f.done()
    return StageModel(service=service, work=tuple(work), ref_cpu_m=ref_cpu_m,
                      parallel_fraction=p, gpu_fraction=g, batch_max=batch_max,
                      batch_overhead_ms=overhead, cold_start_s=cold, mem_need_mb=need,
                      oom_ratio=oom_ratio, mem_max_slowdown=max_slow)


_SHAPE_KEYS = {"deterministic": (), "exponential": (), "lognormal": ("cv",),
               "gamma": ("cv",), "pareto": ("alpha",)}


def _dist(f: Fields, unit: str) -> Dist:
    kind = f.text("dist", choices=KINDS)
    mean = f.num("mean" + unit, lo=0)
    for key in ("cv", "alpha"):
        if key not in _SHAPE_KEYS[kind] and f.has(key):
            raise ProfileError(f"{f.key(key)}: not a parameter of a {kind} distribution")
    cv = f.num("cv", lo=0, lo_open=True) if "cv" in _SHAPE_KEYS[kind] else 0.0
    alpha = f.num("alpha", lo=1, lo_open=True) if kind == "pareto" else 0.0
    cap = f.num("max" + unit, math.inf, lo=0, lo_open=True)
    f.done()
    return Dist(kind, mean, cv=cv, alpha=alpha, cap=cap)
