"""What the four pipeline apps share: the instrumented stage deployment, the HTTP ingress
and the application builder.

Shape of every app (the Serve application name is the profile name, each stage deployment
is named after its profile stage, so one `PipelineSpec` describes both):

    HTTP POST /<app>  ->  Ingress  --handle-->  stage 1 --> stage 2 --> stage 3
                          (JSON in/out,          (each a `Stage` deployment running one
                           end-to-end metrics)    pipeline step under a StageMeter)

A stage's Serve `max_ongoing_requests` is its in-replica queue capacity; its
`concurrency` (default 1) is how many requests compute at once. Requests beyond that wait
inside the replica, where `StageMeter` measures their queueing delay (sair_ray.observe).
Resources come from the profile's `initial` allocation; inference stages get `num_gpus`
when the cluster has a GPU (override with the builder argument `device: cpu|gpu`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from sair_ray.observe import INGRESS, StageMeter, ensure_aggregator

log = logging.getLogger(__name__)

STAGE_QUEUE_CAPACITY = 100    # Serve max_ongoing_requests of a stage replica
INGRESS_CAPACITY = 1000       # Serve max_ongoing_requests of the ingress replica
REQUEST_TIMEOUT_S = 60.0      # a request not answered by then gets a 504, never silence


class BadRequest(ValueError):
    """The client's JSON is not a valid request for this app (answered with HTTP 400)."""


def limit_torch_threads() -> None:
    """One intra-op thread per replica: replicas, not threads, are the unit SAIR scales,
    and on a small machine oversubscribed BLAS threads thrash."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (it may only be set once)
        pass


StepFactory = Callable[[], Callable[[Any], Any]]


@serve.deployment(max_ongoing_requests=STAGE_QUEUE_CAPACITY)
class Stage:
    """One pipeline step: `factory()` builds the step function (loading its model) once
    per replica; each request runs it in a worker thread under the stage's meter."""

    # Serve awaits an async constructor; mypy requires __init__ to return None.
    async def __init__(self, app: str, stage: str,  # type: ignore[misc]
                       factory: StepFactory, concurrency: int = 1) -> None:
        limit_torch_threads()
        self.step = factory()
        self.meter = _started_meter(app, stage, concurrency)
        self.meter.gpu_probe = _shim_probe()

    async def __call__(self, payload: Any) -> Any:
        self.meter.start()
        async with self.meter.slot():
            return await asyncio.to_thread(self.step, payload)

    async def ready(self) -> str:
        """Cheap call that starts the meter, so idle replicas are reported too."""
        self.meter.start()
        return self.meter.replica


@serve.deployment(max_ongoing_requests=INGRESS_CAPACITY, ray_actor_options={"num_cpus": 0})
class Ingress:
    """HTTP entry: validates the JSON body, chains the stage handles, answers JSON.

    POST: 200 {"app", "result"}; 400 {"error"} for a bad body; 500 {"error"} when a stage
    fails; 504 {"error"} after `timeout_s`. GET: {"app", "stages"}, not metered. Every POST
    is recorded by the ingress meter (end-to-end latency and errors in sair_ray.observe)."""

    # Serve awaits an async constructor; mypy requires __init__ to return None.
    async def __init__(self, app: str,  # type: ignore[misc]
                       validate: Callable[[Any], Any],
                       stages: Sequence[DeploymentHandle], stage_names: Sequence[str],
                       timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.app = _serve_app_name(app)
        self.validate = validate
        self.stages = list(stages)
        self.stage_names = list(stage_names)
        self.timeout_s = timeout_s
        self.meter = _started_meter(app, INGRESS, None)
        if os.environ.get("SAIR_ATTACH") == "1":
            # opt-in (runtime_env env_vars in the serve config): bring SAIR up with the app.
            # Never raises and does not wait: the controller retries until the app is ready.
            from sair_ray.live import ensure_attached

            ensure_attached(self.app)

    async def __call__(self, request: Request) -> JSONResponse:
        self.meter.start()
        if request.method == "GET":  # a description, not pipeline traffic: not metered
            return JSONResponse({"app": self.app, "stages": self.stage_names})
        async with self.meter.slot() as outcome:
            status, body = await self._handle(request)
            outcome.ok = status == 200
        return JSONResponse(body, status_code=status)

    async def _handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        try:
            payload = self.validate(json.loads(await request.body() or b"null"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return 400, {"error": f"body is not JSON: {e}"}
        except BadRequest as e:
            return 400, {"error": str(e)}
        try:
            return 200, {"app": self.app,
                         "result": await asyncio.wait_for(self.run(payload), self.timeout_s)}
        except TimeoutError:
            return 504, {"error": f"no answer from the pipeline within {self.timeout_s:g} s"}
        except Exception as e:  # a stage raised: say which error, keep serving
            log.warning("request to %s failed: %s", self.app, e)
            return 500, {"error": _first_line(e)}

    async def run(self, payload: Any) -> Any:
        # Chained handle calls: Serve passes each result straight to the next stage, so
        # intermediate tensors never travel through the ingress.
        response: Any = payload
        for handle in self.stages:
            response = handle.remote(response)
        return await response


def _started_meter(app: str, stage: str, concurrency: int | None) -> StageMeter:
    """A meter reporting from now on (idle replicas count too), with the app's metrics
    actor created up front so readers find it as soon as the app is deployed."""
    name = _serve_app_name(app)
    ensure_aggregator(name)
    meter = StageMeter(name, stage, concurrency=concurrency)
    meter.start()
    return meter


def _shim_probe() -> Callable[[], float | None] | None:
    """Cumulative GPU active seconds from this replica's cuda_tb shim, when it is loaded
    (CUDA_TB_SOCKET set by `cuda_tb.runtime_env`); None otherwise."""
    template = os.environ.get("CUDA_TB_SOCKET")
    if not template:
        return None
    from cuda_tb import ShimClient, ShimError

    client = ShimClient(template.replace("%p", str(os.getpid())).replace("%%", "%"),
                        timeout=0.5)

    def probe() -> float | None:
        try:
            return float(client.stats()["gpu_active_ns"]) / 1e9
        except (ShimError, OSError, KeyError, ValueError):
            return None  # shim not up yet (no CUDA call made) or gone: no sample

    return probe


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # Ray wraps stage exceptions; the last line names the original error.
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:500]


def _serve_app_name(default: str) -> str:
    """The Serve application this replica belongs to (names the metrics actor), or the
    profile name outside a replica."""
    try:
        return serve.get_replica_context().app_name or default
    except Exception:
        return default


# ---- building an application ------------------------------------------------------------


@dataclass(frozen=True)
class StageDef:
    """One step of a pipeline: its factory and whether it is the model (GPU) stage."""

    name: str
    factory: StepFactory
    gpu: bool = False
    concurrency: int = 1


@dataclass(frozen=True)
class PipelineDef:
    app: str
    stages: tuple[StageDef, ...]
    validate: Callable[[Any], Any]
    extra_env: Mapping[str, str] = field(default_factory=dict)


BUILD_ARGS = ("device", "timeout_s", "replicas", "gpu_shim", "shim_dir", "reserve_memory")
SHIM_DIR = "/tmp/sair-gpu"


def build(defn: PipelineDef, args: Mapping[str, Any] | None = None) -> serve.Application:
    """The Serve application for `defn`. `args` (from a serve config's `args:` or Python):
    device: auto|cpu|gpu (auto: GPU if the Ray cluster, or else torch, sees one);
    timeout_s: per-request answer deadline; replicas: {stage: n} initial counts;
    gpu_shim (default true): load the cuda_tb rate limiter into GPU replicas, with its
    sockets in shim_dir (default /tmp/sair-gpu), so SAIR can set their GPU rate;
    reserve_memory (default true): ask Ray for the profile's memory per replica (false
    leaves memory unreserved, for small machines hosting several apps)."""
    from sair_ray.profiles import load_profile

    args = dict(args or {})
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for app {defn.app!r}; "
                         f"allowed: {list(BUILD_ARGS)}")
    use_gpu = _use_gpu(str(args.get("device", "auto")), defn.app)
    replicas = dict(args.get("replicas") or {})
    names = [s.name for s in defn.stages]
    bad = sorted(set(replicas) - set(names))
    if bad:
        raise ValueError(f"replicas given for unknown stage(s) {bad} of app {defn.app!r}; "
                         f"stages: {names}")
    spec = {s.name: s for s in load_profile(defn.app).pipeline.stages}
    handles = []
    for sd in defn.stages:
        init = spec[sd.name].initial
        opts: dict[str, Any] = {"num_cpus": init.cpu_m / 1000}
        if args.get("reserve_memory", True):
            opts["memory"] = init.mem_mb * 1024 * 1024
        env = dict(defn.extra_env)
        if sd.gpu and use_gpu:
            opts["num_gpus"] = spec[sd.name].gpus_per_replica
            if args.get("gpu_shim", True):
                import cuda_tb

                env.update(cuda_tb.runtime_env(str(args.get("shim_dir", SHIM_DIR)))
                           ["env_vars"])
        if env:
            opts["runtime_env"] = {"env_vars": env}
        n = int(replicas.get(sd.name, init.replicas))
        if n < 1:
            raise ValueError(f"replicas of stage {sd.name!r} must be >= 1, got {n}")
        # @serve.deployment made Stage and Ingress Deployments; mypy ignores what a class
        # decorator returns, so it still sees the classes.
        handles.append(Stage.options(  # type: ignore[attr-defined]
            name=sd.name, num_replicas=n, ray_actor_options=opts)
            .bind(defn.app, sd.name, sd.factory, sd.concurrency))
    return Ingress.options(name="ingress").bind(  # type: ignore[attr-defined]
        defn.app, defn.validate, handles, names,
        float(args.get("timeout_s", REQUEST_TIMEOUT_S)))


def _use_gpu(device: str, app: str) -> bool:
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device for app {app!r} must be auto, cpu or gpu, got {device!r}")
    if device != "auto":
        return device == "gpu"
    if os.environ.get("SAIR_APPS_DEVICE") in ("cpu", "gpu"):
        return os.environ["SAIR_APPS_DEVICE"] == "gpu"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def torch_device() -> str:
    """Inside a replica: cuda if Ray gave it a GPU, else cpu."""
    import ray
    import torch

    gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def deploy(defn: PipelineDef, args: Mapping[str, Any] | None = None, *,
           blocking: bool = False) -> DeploymentHandle:
    """`serve.run` with the conventions SAIR expects: application name = profile name,
    route prefix `/<app>`, external scaler enabled (replica counts belong to SAIR)."""
    return serve.run(build(defn, args), name=defn.app, route_prefix=f"/{defn.app}",
                     external_scaler_enabled=True, blocking=blocking)


def entrypoints(d: PipelineDef) -> tuple[Callable[..., Any], Callable[..., Any], Any]:
    """An app module's three entry points: `build_app` (application builder for serve
    configs, `import_path: serve_apps.<app>:build_app`), `run` (deploy under SAIR's
    conventions: name, route, external scaler; returns the handle) and `app` (the bound
    application, for `serve run serve_apps.<app>:app`)."""

    def build_app(args: dict[str, Any] | None = None) -> Any:
        return build(d, args)

    def run(args: dict[str, Any] | None = None) -> Any:
        return deploy(d, args)

    return build_app, run, build_app()
