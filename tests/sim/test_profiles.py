"""Shipped profiles load and behave as documented; malformed profiles fail naming the key."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from sair_ray.profiles import (
    ProfileError,
    list_profiles,
    load_profile,
    profile_from_dict,
    profile_from_yaml,
)
from sair_ray.sim.distributions import Dist
from sair_ray.sim.engine import Simulation
from sair_ray.types import StageAllocation, StageKind
from sair_ray.workloads import Poisson

SHIPPED = ("image_classification", "nlp_analysis", "text_generation", "video_analysis")


def test_the_four_paper_pipelines_ship():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_consistent(name):
    p = load_profile(name)
    spec = p.pipeline
    assert spec.name == name and len(spec.stages) == len(p.models) == 3
    assert [s.kind for s in spec.stages] == [StageKind.CPU, StageKind.GPU, StageKind.CPU]
    assert spec.cluster.gpus == 2 and spec.cluster.cpus == 64  # paper 6.1
    for s, m in zip(spec.stages, p.models, strict=True):
        assert s.cpu_m_min <= s.initial.cpu_m <= s.cpu_m_max
        assert m.mem_need_mb <= s.initial.mem_mb  # the initial allocation does not OOM
        assert m.cold_start_s > 0
    assert p.default_workload().rate_at(0) > 0


def test_video_latency_profile_is_10_to_20_seconds():
    """Paper 6.1: video analysis has a 10-20 s latency profile."""
    p = load_profile("video_analysis")
    alloc = {"decode": StageAllocation(3, 4000, 4096),
             "analyze": StageAllocation(2, 2000, 8192, 1.0),
             "aggregate": StageAllocation(2, 1000, 3072)}
    sim = Simulation(p, Poisson(0.3), np.random.default_rng(0), allocation=alloc)
    sim.run_until(3600)
    w = sim.window(300, 3600)
    assert 5_000 < w.p50_ms < 12_000 and 10_000 < w.p99_ms < 20_000


def test_nlp_bottleneck_migrates_with_load():
    """The bottleneck (paper Assumption 3.2: the stage whose extra replica cuts latency most)
    moves from the encoder to scoring to tokenisation as load grows (profile comment)."""
    p = load_profile("nlp_analysis")

    def bottleneck(rate: float, alloc: dict[str, StageAllocation]) -> str:
        def mean_latency(extra: str | None) -> float:
            a = {**p.pipeline.initial_allocation(), **alloc}
            if extra is not None:
                a[extra] = StageAllocation(a[extra].replicas + 1, a[extra].cpu_m,
                                           a[extra].mem_mb, a[extra].rate)
            sim = Simulation(p, Poisson(rate), np.random.default_rng(0), allocation=a)
            sim.run_until(200)
            return sim.window(40, 200).mean_ms

        base = mean_latency(None)
        gains = {name: base - mean_latency(name) for name in p.pipeline.stage_names}
        return max(gains, key=gains.__getitem__)

    assert bottleneck(40.0, {}) == "embed"
    assert bottleneck(175.0, {}) == "score"
    assert bottleneck(250.0, {"score": StageAllocation(1, 3000, 1024)}) == "tokenize"


def test_text_generation_uses_trace_tokens_when_present():
    p = load_profile("text_generation")
    gen = p.model("generate")
    rng = np.random.default_rng(0)
    long = gen.draw_refs(rng, 1000, {"generated_tokens": np.full(1000, 500.0),
                                     "context_tokens": np.full(1000, 1000.0)})
    assert np.mean(long) == pytest.approx(0.010 + 0.02e-3 * 1000 + 6e-3 * 500, rel=0.02)
    drawn = gen.draw_refs(rng, 50_000)
    assert np.percentile(drawn, 99) > 5 * np.median(drawn)  # heavy tail


# -- errors ------------------------------------------------------------------------------------
def _base() -> dict:
    return yaml.safe_load("""
name: t
sla_ms: 100
stages:
  - name: a
    initial: {replicas: 1, cpu_m: 1000, mem_mb: 1024}
    sim:
      service: {dist: lognormal, mean_ms: 5, cv: 0.5}
""")


def _with(path: str, value: object, delete: bool = False) -> dict:
    d = copy.deepcopy(_base())
    node = d
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    if delete:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return d


@pytest.mark.parametrize("path, value, message", [
    ("sla_ms", -5, r"sla_ms: expected a number"),
    ("sla_ms", "fast", r"sla_ms: expected a number"),
    ("colour", "red", r"colour: unknown key"),
    ("stages.0.kind", "tpu", r"stages\[0\]\.kind: expected one of cpu, gpu"),
    ("stages.0.sim.service.cv", -1, r"stages\[0\]\.sim\.service\.cv"),
    ("stages.0.sim.service.dist", "weibull", r"stages\[0\]\.sim\.service\.dist"),
    ("stages.0.sim.service.alpha", 2.0, r"service\.alpha: not a parameter of a lognormal"),
    ("stages.0.sim.parallel_fraction", 1.5, r"stages\[0\]\.sim\.parallel_fraction"),
    ("stages.0.sim.gpu_fraction", 0.5, r"only GPU stages have a gpu_fraction"),
    ("stages.0.sim.memory", {"oom_ratio": 0.5}, r"stages\[0\]\.sim\.memory\.need_mb: required"),
    ("stages.0.initial.cpu_m", 9000, r"initial\.cpu_m: 9000 is outside"),
    ("stages.0.initial.rate", 0.5, r"initial\.rate: only GPU stages"),
    ("stages.0.sim.work", [{"attr": "t", "per_unit_ms": 1}], r"work\[0\]\.units: required"),
    ("stages.0.sim.batch", {"max_size": 0}, r"batch\.max_size: expected an integer in \[1"),
    ("stages", [], r"at least one stage"),
    ("workload", {"kind": "poisson", "rate": "lots"}, r"workload\.rate"),
])
def test_profile_errors_name_the_key(path, value, message):
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(_with(path, value), source="p.yaml")


def test_missing_keys_and_bad_yaml():
    with pytest.raises(ProfileError, match=r"stages\[0\]\.sim: required key is missing"):
        profile_from_dict(_with("stages.0.sim", None, delete=True))
    with pytest.raises(ProfileError, match="not valid YAML"):
        profile_from_yaml("name: [unclosed", source="x.yaml")
    with pytest.raises(ProfileError, match="no shipped profile 'nope'"):
        load_profile("nope")
    dup = _base()
    dup["stages"].append(copy.deepcopy(dup["stages"][0]))
    with pytest.raises(ProfileError, match="duplicate stage names"):
        profile_from_dict(dup)


def test_profile_by_path_round_trips(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(_with("stages.0.sim.cold_start_s", 3)))
    p = load_profile(f)
    assert p.name == "t" and p.model("a").cold_start_s == 3
    assert p.model("a").service == Dist("lognormal", 5.0, cv=0.5)


@pytest.mark.parametrize("dist", [Dist("exponential", 4.0), Dist("lognormal", 4.0, cv=0.7),
                                  Dist("gamma", 4.0, cv=0.4), Dist("pareto", 4.0, alpha=2.5),
                                  Dist("deterministic", 4.0)])
def test_distributions_have_the_stated_mean_and_cv(dist):
    x = dist.sample(np.random.default_rng(0), 400_000)
    assert x.mean() == pytest.approx(4.0, rel=0.02)
    if dist.kind in ("lognormal", "gamma"):
        assert x.std() / x.mean() == pytest.approx(dist.cv, rel=0.05)


def test_capped_pareto_mean_is_exact():
    d = Dist("pareto", 28.0, alpha=1.4, cap=2048.0)
    x = d.sample(np.random.default_rng(1), 2_000_000)
    assert x.max() <= 2048.0
    assert x.mean() == pytest.approx(d.capped_mean(), rel=0.02)
    assert d.capped_mean() < 28.0


def test_a_live_pipeline_needs_neither_sim_nor_initial(tmp_path):
    from sair_ray.profiles import ProfileError, load_pipeline, load_profile

    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nsla_ms: 500\nstages:\n  - name: Ingress\n"
                    "  - name: infer\n    kind: gpu\n    cpu_m_min: 500\n")
    p = load_pipeline(path)
    assert p.stage_names == ("Ingress", "infer") and p.sla_ms == 500
    assert p.stage("infer").initial.cpu_m == 1000
    # the simulator does need them, and says so
    with pytest.raises(ProfileError, match="initial: required.*simulator needs"):
        load_profile(path)
    # shipped names still work
    assert load_pipeline("nlp_analysis") == load_profile("nlp_analysis").pipeline


def test_replica_moves_only_pins_cpu_and_memory_and_caps_replicas():
    from pathlib import Path

    import sair_ray.profiles
    from sair_ray.profiles import replica_moves_only

    path = Path(sair_ray.profiles.__file__).parent / "image_classification.yaml"
    data = yaml.safe_load(path.read_text())
    text = path.read_text()
    out = replica_moves_only(data, replicas_max={"inference": 2})
    assert data == yaml.safe_load(text)                       # the input is left alone
    for st in out["stages"]:
        init = st["initial"]
        assert st["cpu_m_min"] == st["cpu_m_max"] == init["cpu_m"]
        assert st["mem_mb_min"] == st["mem_mb_max"] == init["mem_mb"]
    assert [st.get("replicas_max") for st in out["stages"]] == [None, 2, None]
    capped = replica_moves_only(data, replicas_max=3)
    assert {st["replicas_max"] for st in capped["stages"]} == {3}
    assert profile_from_dict(out).pipeline.stage("inference").replicas_max == 2
