"""Emulated compute: run a profile's pipeline on real Ray Serve with replicas that *wait*
instead of computing (docs/emulation.md).

Everything here is the simulator's model, reused rather than re-derived:

- `scale_profile(profile, time_scale)`: the profile with every duration of its stage
  models multiplied by `time_scale` (service means, work terms, batch overheads and, unless
  `cold_start_scale` says otherwise, cold starts), for a live run in slow motion.
- `TimeScaled(workload, time_scale)`: the workload on the stretched time axis (times
  multiplied, rates divided by `time_scale`); the same random draws as the original.
- `request_plan(profile, workload, duration_s, seed)`: the arrival times and per-stage
  reference service times *exactly* as `sair_ray.sim.Simulation` draws them for
  `np.random.default_rng(seed)` (same streams, same 10 s blocks), so a live run can send
  the very requests the simulation serves (common random numbers).
- `service_time_s(model, kind, refs, ...)`: what one replica takes for a batch, from
  `StageModel.factor` (CPU allocation vs `ref_cpu_m` by Amdahl, GPU rate, memory
  slowdown): `(sum(refs) + batch overhead) * factor`, the simulator's formula.
- `emulated_ray(profile)`: a local Ray whose *logical* resources are the profile's cluster
  (CPUs, GPUs, memory), so Serve schedules, queues and leaves replicas pending as on that
  cluster, while the replicas use next to no real CPU.
- `partitioned_ray(profile, n)`: one local Ray with `n` logical nodes, each shaped like the
  profile's cluster and tagged with a resource of its own (`partition_resource(i)`), so
  `n` apps run side by side, each confined to its node (benchmarks/bench_live.py runs the
  methods it compares at the same time this way).

Outputs built on this are labelled `EMULATED` ("emulated compute"): the service times are
the model's, not measured work; the control plane (proxy, router, controller, replicas
as processes, scaling API, redeploys) is real.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sair_ray.profiles import Profile, replica_moves_only
from sair_ray.sim.distributions import Dist
from sair_ray.sim.model import StageModel
from sair_ray.types import StageKind
from sair_ray.workloads import Arrivals, Workload

EMULATED = "emulated compute"
MB = 1024 * 1024
BLOCK_S = 10.0  # the simulator's arrival block (Simulation(block_s=10))

# Ray starts one idle Python worker per logical CPU when the first driver connects: with a
# 64-CPU profile on a 2-core machine that is 64 processes for nothing. Replicas start their
# own workers anyway. Serve's proxy health check gives up after 10 s x 3 misses; on a few cores
# a burst of replica processes starting can starve the proxy that long, and Serve would
# restart it and drop every open connection (see HEALTH_CHECK_TIMEOUT_S in
# serve_apps/emulated.py for the replicas' side).
#
# Serve's latency histograms (which SAIR reads its p50 / p99 from with `pipeline.metrics:
# serve`) have default buckets at 5, 10 and 60 s: a p99 between 10 and 60 s reads as
# anything in between, linearly interpolated, and a time-scaled profile's SLA lands right
# there (image_classification's 1 s x 40; video_analysis's own 20 s). An emulated Ray
# records latencies in buckets at most 1.5x apart from 10 ms to 2 minutes instead.
LATENCY_BUCKETS_MS = (1, 2, 5) + tuple(
    round(m * 10 ** e) for e in range(1, 5) for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)) + (
    100000, 120000, 300000, 600000)
RAY_EMULATION_ENV = {"RAY_prestart_worker_first_driver": "0",
                     "RAY_enable_worker_prestart": "0",
                     "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
                     "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS":
                         ",".join(str(b) for b in LATENCY_BUCKETS_MS)}


# -- time scaling ----------------------------------------------------------------------------
def _scaled_dist(d: Dist, s: float) -> Dist:
    return replace(d, mean=d.mean * s, cap=d.cap * s if math.isfinite(d.cap) else d.cap)


def scale_model(model: StageModel, time_scale: float,
                cold_start_scale: float | None = None) -> StageModel:
    """`model` with its durations multiplied by `time_scale` (work *sizes* unchanged, their
    per-unit times scaled); cold start by `cold_start_scale` (default `time_scale`)."""
    s = float(time_scale)
    c = s if cold_start_scale is None else float(cold_start_scale)
    if s == 1.0 and c == 1.0:
        return model
    return replace(model, service=_scaled_dist(model.service, s),
                   work=tuple(replace(w, per_unit_ms=w.per_unit_ms * s) for w in model.work),
                   batch_overhead_ms=model.batch_overhead_ms * s,
                   cold_start_s=model.cold_start_s * c)


def scale_profile(profile: Profile, time_scale: float,
                  cold_start_scale: float | None = None) -> Profile:
    """The profile in slow motion: service times x `time_scale`, cold starts x
    `cold_start_scale` (default `time_scale`), SLA x `time_scale`. Resources, limits and
    allocation factors are unchanged. Pair it with `TimeScaled(workload, time_scale)`."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if cold_start_scale is not None and not cold_start_scale >= 0:
        raise ValueError(f"cold_start_scale must be >= 0, got {cold_start_scale}")
    if time_scale == 1.0 and cold_start_scale in (None, 1.0):
        return profile
    models = tuple(scale_model(m, time_scale, cold_start_scale) for m in profile.models)
    pipeline = replace(profile.pipeline, sla_ms=profile.pipeline.sla_ms * time_scale)
    return replace(profile, pipeline=pipeline, models=models)


class TimeScaled(Workload):
    """`inner` on a time axis stretched by `scale`: arrivals at `scale` x the inner times,
    rates divided by `scale`. Sampling [t0, t1) draws the inner workload over
    [t0/scale, t1/scale) with the same generator."""

    kind = "time_scaled"

    def __init__(self, inner: Workload, scale: float) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"time scale must be > 0, got {scale}")
        self.inner, self.scale = inner, float(scale)

    def rates(self, t: np.ndarray) -> np.ndarray:
        return self.inner.rates(np.asarray(t, dtype=float) / self.scale) / self.scale

    def expected_arrivals(self, t0: float, t1: float) -> float:
        return self.inner.expected_arrivals(t0 / self.scale, t1 / self.scale)

    def peak_rate(self, t0: float, t1: float) -> float:
        return self.inner.peak_rate(t0 / self.scale, t1 / self.scale) / self.scale

    def sample(self, t0: float, t1: float, rng: np.random.Generator) -> Arrivals:
        arr = self.inner.sample(t0 / self.scale, t1 / self.scale, rng)
        return Arrivals(np.asarray(arr.times, dtype=float) * self.scale, dict(arr.attrs))

    def sample_attrs(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return self.inner.sample_attrs(rng, n)

    def attr_means(self) -> dict[str, float]:
        return self.inner.attr_means()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self.scale, "workload": self.inner.to_dict()}


def scaled_workload(workload: Workload, time_scale: float) -> Workload:
    return workload if time_scale == 1.0 else TimeScaled(workload, time_scale)


# -- the simulator's requests, for a live run -------------------------------------------------
@dataclass(frozen=True)
class RequestPlan:
    """Arrival times (s from the start) and each request's reference service time per stage
    (seconds, at the reference allocation), as the simulator draws them."""

    times: np.ndarray                       # (n,)
    refs: np.ndarray                        # (n, stages)
    stages: tuple[str, ...]
    duration_s: float
    attrs: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)

    def body(self, i: int) -> dict[str, Any]:
        """Request i as the emulated ingress reads it (JSON)."""
        return {"id": int(i), "refs": [float(x) for x in self.refs[i]]}


def request_plan(profile: Profile, workload: Workload, duration_s: float, seed: int, *,
                 block_s: float = BLOCK_S) -> RequestPlan:
    """The requests `Simulation(profile, workload, np.random.default_rng(seed))` serves in
    [0, duration_s): its streams (`rng.spawn(1 + stages)`: arrivals, then one per stage),
    its blocks of `block_s` and `StageModel.draw_refs` for the service times."""
    streams = np.random.default_rng(seed).spawn(1 + len(profile.models))
    arr_rng, svc_rngs = streams[0], streams[1:]
    times: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    attrs: dict[str, list[np.ndarray]] = {}
    t0 = 0.0
    while t0 <= duration_s:  # the simulator draws a block once it reaches its start
        arr = workload.sample(t0, t0 + block_s, arr_rng)
        n = len(arr.times)
        cols = [m.draw_refs(rng, n, arr.attrs)
                for m, rng in zip(profile.models, svc_rngs, strict=True)]
        times.append(np.asarray(arr.times, dtype=float))
        refs.append(np.column_stack(cols) if n else np.empty((0, len(cols))))
        for k, v in arr.attrs.items():
            attrs.setdefault(k, []).append(np.asarray(v))
        t0 += block_s
    all_t = np.concatenate(times) if times else np.empty(0)
    all_r = np.vstack(refs) if refs else np.empty((0, len(profile.models)))
    keep = all_t < duration_s
    return RequestPlan(all_t[keep], all_r[keep], tuple(profile.pipeline.stage_names),
                       float(duration_s),
                       {k: np.concatenate(v)[keep] for k, v in attrs.items()})


# -- one replica's service time ----------------------------------------------------------------
def service_time_s(model: StageModel, kind: StageKind, refs_s: Sequence[float], *,
                   cpu_m: float, mem_mb: float, rate: float = 1.0) -> float:
    """Seconds a replica with this allocation takes for a batch with these reference times:
    the simulator's `(sum(refs) + batch overhead) * factor(allocation)`."""
    ref = float(refs_s[0]) if len(refs_s) == 1 else float(sum(refs_s))
    return (ref + model.batch_overhead_s) * model.factor(kind, cpu_m, mem_mb, rate)


def oom_killed(model: StageModel, mem_mb: float) -> bool:
    """Whether the model says a replica with `mem_mb` cannot hold its working set."""
    return model.memory_effect(mem_mb)[1]


# -- the controller's view of an emulated app --------------------------------------------------
def controller_profile(profile: str, time_scale: float, *, replicas_max: int,
                       ingress: str = "ingress", ingress_cpu_m: int = 1) -> dict[str, Any]:
    """The profile (a shipped name or a YAML path) as a SAIR controller attached to its
    emulated app should read it, as a YAML mapping: the SLA time-scaled, every stage's
    replicas capped at `replicas_max`, CPU and memory pinned to the initial values (replica
    moves only: a CPU change would be a rolling restart of sleeping replicas), and the
    app's ingress deployment as a pinned first stage. GPU stages are also capped at what
    the profile's cluster holds (its GPUs / `gpus_per_replica`). The ingress stage is
    needed because, with a profile, the backend hands Serve's ingress deployment to
    `ServeMetrics`, which takes only a profile stage as its ingress; it keeps one replica
    of `ingress_cpu_m` millicores, which the emulated ingress must then reserve
    (`num_cpus` = ingress_cpu_m / 1000) instead of 0. The `sim:` blocks are kept and unused."""
    import importlib.resources
    from pathlib import Path

    import yaml

    text = (Path(profile).read_text() if "/" in profile or profile.endswith(".yaml") else
            (importlib.resources.files("sair_ray.profiles") / f"{profile}.yaml").read_text())
    prof = replica_moves_only(yaml.safe_load(text), replicas_max=int(replicas_max))
    prof["sla_ms"] = float(prof["sla_ms"]) * float(time_scale)
    gpus = float((prof.get("cluster") or {}).get("gpus", 0))
    for st in prof["stages"]:
        if st.get("kind") == "gpu" and gpus > 0:
            # what the cluster can hold: the backend sizes the cluster from Ray's totals,
            # which on a partitioned_ray are every partition's together
            per = float(st.get("gpus_per_replica", 1)) or 1.0
            st["replicas_max"] = max(1, min(int(replicas_max), int(gpus // per + 1e-9)))
    prof["stages"].insert(0, {
        "name": ingress, "kind": "cpu", "replicas_min": 1, "replicas_max": 1,
        "cpu_m_min": ingress_cpu_m, "cpu_m_max": ingress_cpu_m, "mem_mb_min": 1024,
        "mem_mb_max": 1024,
        "initial": {"replicas": 1, "cpu_m": ingress_cpu_m, "mem_mb": 1024}})
    return dict(prof)


# -- a local Ray shaped like the profile's cluster ----------------------------------------------
def cluster_resources(profile: Profile) -> dict[str, Any]:
    """Logical resources of the profile's cluster as `ray start` / `ray.init` arguments:
    num_cpus and num_gpus (whole units; Ray needs integers there) and memory in bytes."""
    c = profile.pipeline.cluster
    return {"num_cpus": int(math.floor(c.cpus + 1e-9)), "num_gpus": int(math.floor(c.gpus + 1e-9)),
            "memory": int(c.memory_mb * MB)}


@contextlib.contextmanager
def emulation_env(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Environment for starting Ray processes for an emulation (`RAY_EMULATION_ENV`), restored
    afterwards. Must be in force when the head node starts."""
    env = {**RAY_EMULATION_ENV, **(extra or {})}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class EmulatedCluster:
    address: str
    dashboard: str              # host:port of the dashboard (Serve's REST API)
    resources: Mapping[str, Any]


@contextlib.contextmanager
def emulated_ray(profile: Profile, *, dashboard_port: int = 8265,
                 object_store_mb: int = 200, temp_dir: str | None = None,
                 env: Mapping[str, str] | None = None,
                 metrics_report_interval_ms: int | None = 2000) -> Iterator[EmulatedCluster]:
    """Start a local Ray (and connect to it) whose logical CPUs, GPUs and memory are the
    profile's cluster; on exit shut Serve and Ray down. The machine's real cores are not
    what limits the replicas (they sleep), the logical resources are.
    `metrics_report_interval_ms`: how often Ray's metrics agent publishes (Ray's default
    is 10 s; Serve's own metrics, which the controller may read, need finer)."""
    import ray

    res = cluster_resources(profile)
    kwargs: dict[str, Any] = {}
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    if metrics_report_interval_ms:
        kwargs["_system_config"] = {"metrics_report_interval_ms": int(metrics_report_interval_ms)}
    with emulation_env(env):
        ctx = ray.init(address="local", num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                       _memory=res["memory"], object_store_memory=object_store_mb * MB,
                       include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=dashboard_port, log_to_driver=False,
                       logging_level=logging.ERROR, **kwargs)
    try:
        dash = str(getattr(ctx, "dashboard_url", "") or f"127.0.0.1:{dashboard_port}")
        yield EmulatedCluster(ray.get_runtime_context().gcs_address, dash, res)
    finally:
        shutdown_ray()


def shutdown_ray(cluster: Any = None) -> None:
    """Shut down Serve, this process's Ray connection and then `cluster` (a
    `ray.cluster_utils.Cluster`, if any), each step even when an earlier one failed:
    cleanup must not hide the error that led to it."""
    import ray

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            from ray import serve

            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.shutdown()


# -- several emulated clusters side by side in one Ray ------------------------------------------
PARTITION_PREFIX = "sair_partition_"


def partition_resource(i: int) -> str:
    """The custom resource that only logical node `i` of a `partitioned_ray` carries."""
    return f"{PARTITION_PREFIX}{i}"


def pin_to_partition(config: Mapping[str, Any], i: int) -> dict[str, Any]:
    """A copy of the declarative Serve config `config` whose every deployment (ingress
    included) needs a sliver of partition `i`'s resource, so all its replicas land on that
    node and compete for that node's CPUs, GPUs and memory only."""
    import copy

    out = copy.deepcopy(dict(config))
    for app in out.get("applications", []):
        for d in app.get("deployments", []):
            opts = d.setdefault("ray_actor_options", {})
            opts["resources"] = {**(opts.get("resources") or {}), partition_resource(i): 0.001}
    return out


@dataclass(frozen=True)
class PartitionedCluster:
    address: str
    dashboard: str              # host:port of the dashboard (Serve's REST API)
    resources: Mapping[str, Any]  # of each partition: the profile's cluster
    partitions: int


@contextlib.contextmanager
def partitioned_ray(profile: Profile, partitions: int, *, dashboard_port: int = 8265,
                    object_store_mb: int = 100, env: Mapping[str, str] | None = None,
                    metrics_report_interval_ms: int = 2000) -> Iterator[PartitionedCluster]:
    """Start one local Ray (and connect to it): a head node with no CPUs or GPUs (the
    dashboard, Serve's controller and its one proxy: Serve configs deployed here should say
    `proxy_location: HeadOnly`) and `partitions` logical nodes, each with the profile's
    cluster as its logical CPUs, GPUs and memory plus its own `partition_resource(i)`. On
    exit Serve and Ray are shut down. Ray's temp dir is Ray's default (RAY_TMPDIR)."""
    import ray
    from ray.cluster_utils import Cluster

    if partitions < 1:
        raise ValueError(f"partitions must be >= 1 (got {partitions})")
    res = cluster_resources(profile)
    cluster = None
    try:
        with emulation_env(env):
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "num_gpus": 0, "include_dashboard": True,
                "dashboard_host": "127.0.0.1", "dashboard_port": int(dashboard_port),
                "object_store_memory": object_store_mb * MB,
                "_system_config": {"metrics_report_interval_ms":
                                   int(metrics_report_interval_ms)}})
            for i in range(partitions):
                cluster.add_node(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                                 memory=res["memory"], object_store_memory=object_store_mb * MB,
                                 resources={partition_resource(i): 1000.0})
            cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        yield PartitionedCluster(cluster.address, f"127.0.0.1:{dashboard_port}", res,
                                 partitions)
    finally:
        shutdown_ray(cluster)
