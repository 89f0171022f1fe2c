"""Any profile as a real Ray Serve application whose replicas emulate the profile's stage
model ("emulated compute", docs/emulation.md).

    HTTP POST /<app> {"id": 7, "refs": [0.061, 0.005, 0.003]}
        -> EmulatedIngress --handle--> stage 1 --handle--> stage 2 --> ...

Real: Serve's proxy, the ingress and one deployment per profile stage (named like the
stage), replicas as Ray actor processes placed on the cluster's *logical* resources
(`sair_ray.emulate.emulated_ray`), the per-handle router (power of two choices, FIFO
pending queue), `max_ongoing_requests`, `max_queued_requests`, the external-scaler API,
config redeploys (rolling restarts), graceful draining.

Emulated: the work. A stage replica holds one slot (`max_ongoing_requests` = the model's
batch size, 1 without batching, like the simulator's one request per replica) for
`(sum of refs + batch overhead) * factor(its allocation)` seconds, an `asyncio.sleep`
(`sair_ray.emulate.service_time_s`, i.e. `StageModel.factor`: its Ray CPU allocation vs
`ref_cpu_m`, its GPU rate, its memory slowdown); its constructor sleeps the cold start; a
replica whose memory is below the model's OOM ratio fails its request and exits (Serve
restarts it). Requests carry their reference times (`refs`, seconds, per stage, as
`sair_ray.emulate.request_plan` draws them for the simulator); a request without them gets
them drawn in the ingress from the same models.

`build_app(profile, time_scale)` returns the Application; `app_builder` is the
`import_path` for serve configs; `emulated_config(profile, ...)` writes such a config
(external scaler or Serve's autoscaler) for `PUT /api/serve/applications/`.
The ingress keeps a record of every request (arrival, per-stage enqueue/start/end and
replica, completion); `GET /<app>?records=<from>` returns them from index `from`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from sair_ray.emulate import EMULATED, MB, oom_killed, scale_profile, service_time_s
from sair_ray.profiles import Profile, load_profile, profile_from_dict
from sair_ray.sim.model import StageModel
from sair_ray.types import StageAllocation, StageKind

INGRESS = "ingress"
INGRESS_CAPACITY = 10_000      # Serve max_ongoing_requests of the ingress: never the limit
REQUEST_TIMEOUT_S = 300.0
# Serve's replica health check gives up after 30 s (its default) x 3 misses. Emulation packs a
# large cluster's replicas onto a few cores, where a burst of replica processes starting can
# starve every event loop for that long; Serve would then restart replicas that are only
# waiting out service times and lose their requests, measuring the machine, not the
# autoscaler. Set here as deployment defaults, so a serve config can still override them.
HEALTH_CHECK_TIMEOUT_S = 120.0
REPO = Path(__file__).resolve().parents[1]


class _Emulator:
    """The waiting part of a stage replica: greedy batching (a free replica takes up to
    `batch_max` waiting requests at once, the simulator's rule), one batch at a time."""

    def __init__(self, model: StageModel, kind: StageKind, cpu_m: float, mem_mb: float,
                 rate: float) -> None:
        self.model, self.kind = model, kind
        self.cpu_m, self.mem_mb, self.rate = cpu_m, mem_mb, rate
        self.waiting: deque[tuple[float, asyncio.Future[dict[str, Any]]]] = deque()
        self.busy = False

    async def submit(self, ref_s: float) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((ref_s, fut))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self.waiting:
                n = min(self.model.batch_max, len(self.waiting))
                batch = [self.waiting.popleft() for _ in range(n)]
                start = time.time()
                dur = service_time_s(self.model, self.kind, [r for r, _ in batch],
                                     cpu_m=self.cpu_m, mem_mb=self.mem_mb, rate=self.rate)
                await asyncio.sleep(dur)
                end = time.time()
                oom = oom_killed(self.model, self.mem_mb)
                for _, fut in batch:
                    if fut.done():
                        continue
                    if oom:
                        fut.set_exception(MemoryError("emulated OOM kill: the replica's "
                                                      "memory is below the model's OOM ratio"))
                    else:
                        fut.set_result({"start": start, "end": end, "batch": n})
                if oom:  # the kernel would have killed the process: Serve restarts it
                    asyncio.get_running_loop().call_later(0.05, os._exit, 137)
                    return
        finally:
            self.busy = False


@serve.deployment(max_ongoing_requests=1, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S)
class EmulatedStage:
    """One profile stage: waits out the model's service time for its allocation."""

    def __init__(self, app: str, stage: str, kind: str, model: StageModel,
                 nominal_mem_mb: float, rate: float = 1.0) -> None:
        import ray

        res = ray.get_runtime_context().get_assigned_resources()
        self.stage = stage
        self.replica = f"{stage}#{uuid.uuid4().hex[:6]}"
        cpu_m = float(res.get("CPU", 0.0)) * 1000.0
        mem_b = float(res.get("memory", 0.0))
        mem_mb = mem_b / MB if mem_b > 0 else float(nominal_mem_mb)
        self.model = model
        self.emu = _Emulator(model, StageKind(kind), cpu_m if cpu_m > 0 else model.ref_cpu_m,
                             mem_mb, rate)
        self.configured = False
        self.born = _process_start()
        self.ready_at = math.nan
        self.cold_sleep_s = 0.0

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """`user_config`: `rate` (the GPU rate, applied to batches started from now on; the
        simulator also stretches work in flight) and `cold_start` (bool). Serve calls this
        once while the replica starts (it is not RUNNING before it returns), and again on a
        user_config change. On that first call, with `cold_start` on, the replica waits
        until the model's cold start has passed since its process started: the profile's
        cold start is the whole time to serve, Serve's own start-up (process, imports)
        included, as far as it does not exceed it. Initial replicas are deployed with
        `cold_start: false` (the simulator's initial replicas are warm), then the config is
        switched on, which only reconfigures running replicas."""
        if "rate" in user_config:
            self.emu.rate = float(user_config["rate"])
        if not self.configured:
            self.configured = True
            if user_config.get("cold_start", True):
                self.cold_sleep_s = max(0.0, self.model.cold_start_s - (time.time() - self.born))
                await asyncio.sleep(self.cold_sleep_s)
            self.ready_at = time.time()

    async def __call__(self, ref_s: float) -> dict[str, Any]:
        out = await self.emu.submit(float(ref_s))
        out["replica"] = self.replica
        return out

    def info(self) -> dict[str, Any]:
        e = self.emu
        return {"replica": self.replica, "cpu_m": e.cpu_m, "mem_mb": e.mem_mb, "rate": e.rate,
                "born": self.born, "ready_at": self.ready_at, "cold_sleep_s": self.cold_sleep_s}


def _process_start() -> float:
    """When this process started (wall clock): a replica's start-up began then."""
    now = time.time()
    try:
        import psutil

        born = float(psutil.Process().create_time())
    except Exception:
        return now
    # an older process is a reused Ray worker, not a start-up in progress
    return born if now - born < 60.0 else now


@serve.deployment(max_ongoing_requests=INGRESS_CAPACITY, ray_actor_options={"num_cpus": 0},
                  health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S)
class EmulatedIngress:
    """HTTP entry: chains the stage handles (awaiting each, to time every hop), records
    every request. POST body: {"id": int, "refs": [s per stage]} (both optional).
    Answers 200 {"id", "label": "emulated compute", "latency_s"}; 503 when a stage's router
    queue is full (`max_queued_requests`: the simulator's queue_max, a drop); 500 when a
    stage failed (an emulated OOM kill)."""

    def __init__(self, app: str, stages: Sequence[str], handles: Sequence[DeploymentHandle],
                 models: Sequence[StageModel], seed: int = 0) -> None:
        self.app = app
        self.stages = list(stages)
        self.handles = list(handles)
        self.models = list(models)
        self.rng = np.random.default_rng(seed)
        # (id, arrival, done, status, [(enq, start, end, replica, batch) per stage reached])
        self.records: list[list[Any]] = []

    def _refs(self, body: Mapping[str, Any]) -> list[float]:
        refs = body.get("refs")
        if isinstance(refs, list) and len(refs) == len(self.stages):
            return [float(x) for x in refs]
        attrs = {k: np.asarray([v], dtype=float) for k, v in (body.get("attrs") or {}).items()}
        return [float(m.draw_refs(self.rng, 1, attrs)[0]) for m in self.models]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            since = request.query_params.get("records")
            if since is not None:
                return JSONResponse({"label": EMULATED, "records": self.records[int(since):]})
            return JSONResponse({"app": self.app, "stages": self.stages, "label": EMULATED})
        arrival = time.time()
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            refs = self._refs(body)
        except (ValueError, TypeError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, status_code=400)
        rid = body.get("id", -1)
        hops: list[list[Any]] = []
        rec: list[Any] = [rid, arrival, None, "ok", hops]
        self.records.append(rec)
        status, out = 200, {"id": rid, "label": EMULATED}
        try:
            for handle, ref in zip(self.handles, refs, strict=True):
                enq = time.time()
                r = await handle.remote(ref)
                hops.append([enq, r["start"], r["end"], r["replica"], r["batch"]])
        except Exception as e:  # a full router queue (BackPressureError) or a failed stage
            drop = "BackPressure" in type(e).__name__ or "BackPressure" in str(e)[:200]
            rec[3] = "drop" if drop else "error"
            status, out = (503 if drop else 500), {"id": rid, "error": type(e).__name__}
        rec[2] = time.time()
        out["latency_s"] = rec[2] - arrival
        return JSONResponse(out, status_code=status)


# -- building -------------------------------------------------------------------------------
def _profile(profile: Profile | str | Mapping[str, Any]) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return profile_from_dict(dict(profile), source="<emulated app args>")
    return load_profile(profile)


def actor_options(profile: Profile, stage: str, allocation: StageAllocation | None = None, *,
                  reserve_memory: bool = True) -> dict[str, Any]:
    """Ray actor options of a stage replica: the allocation's CPUs and memory, the
    profile's GPUs per replica for GPU stages (logical GPUs of the emulated cluster)."""
    spec = profile.pipeline.stage(stage)
    a = allocation or spec.initial
    opts: dict[str, Any] = {"num_cpus": a.cpu_m / 1000}
    if reserve_memory:
        opts["memory"] = int(a.mem_mb) * MB
    if spec.kind is StageKind.GPU and profile.pipeline.cluster.gpus > 0:
        opts["num_gpus"] = spec.gpus_per_replica
    return opts


def build_app(profile: Profile | str | Mapping[str, Any], time_scale: float = 1.0, *,
              cold_start_scale: float | None = None, seed: int = 0,
              replicas: Mapping[str, int] | None = None, reserve_memory: bool = True,
              name: str | None = None, cold_start: bool = True) -> serve.Application:
    """The Serve application emulating `profile` (a Profile, a shipped name, a YAML path or
    the profile's YAML as a dict) with its durations stretched by `time_scale`
    (`sair_ray.emulate.scale_profile`). Stage deployments carry the profile's initial
    allocation (override per deployment in the serve config), `max_ongoing_requests` =
    the model's batch size and `max_queued_requests` = the stage's `queue_max`."""
    prof = scale_profile(_profile(profile), time_scale, cold_start_scale)
    app = name or prof.name
    replicas = dict(replicas or {})
    handles, names, models = [], [], []
    for spec, model in zip(prof.pipeline.stages, prof.models, strict=True):
        init = spec.initial
        handles.append(EmulatedStage.options(  # type: ignore[attr-defined]
            name=spec.name, num_replicas=int(replicas.get(spec.name, init.replicas)),
            max_ongoing_requests=model.batch_max, max_queued_requests=spec.queue_max,
            ray_actor_options=actor_options(prof, spec.name, reserve_memory=reserve_memory),
            user_config={"rate": init.rate, "cold_start": cold_start},
        ).bind(app, spec.name, spec.kind.value, model, init.mem_mb, init.rate))
        names.append(spec.name)
        models.append(model)
    return EmulatedIngress.options(name=INGRESS).bind(  # type: ignore[attr-defined]
        app, names, handles, models, seed)


BUILD_ARGS = ("profile", "time_scale", "cold_start_scale", "seed", "replicas",
              "reserve_memory", "name")


def app_builder(args: Mapping[str, Any]) -> serve.Application:
    """Serve config entry point (`import_path: serve_apps.emulated:app_builder`); `args`:
    profile (name, path or YAML dict; required), time_scale, cold_start_scale, seed,
    replicas, reserve_memory, name."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for the emulated app; allowed: "
                         f"{list(BUILD_ARGS)}")
    if "profile" not in args:
        raise ValueError("the emulated app needs args.profile (a shipped profile name, a "
                         "profile YAML path or the profile as a mapping)")
    return build_app(args["profile"], float(args.get("time_scale", 1.0)),
                     cold_start_scale=args.get("cold_start_scale"),
                     seed=int(args.get("seed", 0)), replicas=args.get("replicas"),
                     reserve_memory=bool(args.get("reserve_memory", True)),
                     name=args.get("name"))


def emulated_config(profile: Profile | str | os.PathLike[str] | Mapping[str, Any], *,
                    time_scale: float = 1.0,
                    cold_start_scale: float | None = None, name: str | None = None,
                    http_port: int = 8000, http_host: str = "127.0.0.1",
                    allocation: Mapping[str, StageAllocation] | None = None,
                    external_scaler: bool = True,
                    autoscaling: Mapping[str, Any] | None = None,
                    seed: int = 0, env: Mapping[str, str] | None = None,
                    reserve_memory: bool = True, cold_start: bool = True) -> dict[str, Any]:
    """A declarative Serve config (for `PUT /api/serve/applications/`, `serve deploy`)
    running `profile` emulated. `profile` travels in `args` as given: a shipped name or a
    YAML path (as a string), or the profile's YAML mapping.

    Replica counts: with `external_scaler=True` (SAIR, the threshold rule, a fidelity
    schedule) each stage gets `num_replicas` from `allocation` (default: the profile's
    initial allocation) and the app `external_scaler_enabled: true`; with `autoscaling` (a
    Serve `autoscaling_config`, e.g. `{min_replicas: 1, max_replicas: 8}`) every stage gets
    it (`initial_replicas` defaulting to the allocation) and the external scaler is off.
    Every stage's `ray_actor_options` come from the allocation (CPUs, memory, logical GPUs),
    so a CPU/memory redeploy of this config is a rolling restart with the new values.
    `cold_start=False` starts replicas warm (for the initial deployment: redeploy the same
    config with `cold_start=True`, which only reconfigures the running replicas, before
    the run; see `EmulatedStage.reconfigure`)."""
    if isinstance(profile, Profile):
        raise TypeError("emulated_config needs the profile as a name, a path or its YAML "
                        "mapping (it travels in the config's args), not a Profile object")
    prof = _profile(os.fspath(profile) if isinstance(profile, os.PathLike) else profile)
    app = name or prof.name
    alloc = dict(prof.pipeline.initial_allocation())
    alloc.update(allocation or {})
    spec: Any = os.fspath(profile) if isinstance(profile, os.PathLike) else profile
    args: dict[str, Any] = {"profile": spec if isinstance(spec, str) else dict(spec),
                            "time_scale": float(time_scale), "seed": int(seed),
                            "reserve_memory": bool(reserve_memory), "name": app}
    if cold_start_scale is not None:
        args["cold_start_scale"] = float(cold_start_scale)
    deployments: list[dict[str, Any]] = [{"name": INGRESS, "num_replicas": 1}]
    for spec in prof.pipeline.stages:
        a = alloc[spec.name]
        d: dict[str, Any] = {"name": spec.name, "ray_actor_options": actor_options(
            prof, spec.name, a, reserve_memory=reserve_memory)}
        if autoscaling is not None:
            auto = {"initial_replicas": a.replicas, **dict(autoscaling)}
            auto.setdefault("min_replicas", min(1, a.replicas))
            d["autoscaling_config"] = auto
        else:
            d["num_replicas"] = a.replicas
        d["user_config"] = {"rate": a.rate if spec.kind is StageKind.GPU else 1.0,
                            "cold_start": bool(cold_start)}
        deployments.append(d)
    env_vars = {"PYTHONPATH": _pythonpath(), **dict(env or {})}
    return {"http_options": {"host": http_host, "port": int(http_port)},
            "applications": [{
                "name": app, "route_prefix": f"/{app}",
                "import_path": "serve_apps.emulated:app_builder", "args": args,
                "external_scaler_enabled": bool(external_scaler and autoscaling is None),
                "runtime_env": {"env_vars": env_vars},
                "deployments": deployments}]}


def _pythonpath() -> str:
    parts = [str(REPO)]
    with contextlib.suppress(KeyError):
        parts += [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))
