"""RayServeBackend: the Backend port on a live Ray Serve application.

Where each part comes from (docs/live.md has the full table):

- **pipeline**: the app's profile (a user YAML, or `sair_ray/profiles/<app>.yaml` for an
  app named like a shipped one; only its pipeline part is needed), else discovered from
  Serve (`sair_ray/discovery.py`: stages are the deployments, in the deployment graph's
  order, with the SLA from `pipeline.sla_ms`). Stage names are Serve deployment names. The
  cluster size comes from `ray.cluster_resources()`.
- **observe**: per-stage and end-to-end metrics from a `MetricsSource`
  (`sair_ray/backends/metrics.py`; `pipeline.metrics` picks it: the app's StageMeter
  actor through `sair_ray.observe.MetricsClient`, or Serve's own metrics through
  `sair_ray.backends.serve_metrics.ServeMetrics`); replica targets and `ray_actor_options` (CPU,
  memory, GPUs) from the dashboard's Serve REST API (`GET /api/serve/applications/`),
  read once per round and shared by `sync`, `observe` and `apply`; GPU rate from each GPU
  replica's cuda_tb shim socket.
- **apply**: replica counts through Serve's external-scaler API
  (`POST /api/v1/applications/{app}/deployments/{dep}/scale`); CPU and memory through a
  redeploy of the app's declarative config with new `ray_actor_options` (a rolling
  restart); GPU rate through the shim sockets (`SET rate`).

The backend never sleeps and never reads a clock: `observe` and `apply` get their times
from the controller. Ray is imported inside the methods that need it, so this module can
be imported (and its pure helpers tested) without a Ray cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sair_ray import net
from sair_ray.backends.gpu_rate import GpuRates, ReplicaShim
from sair_ray.backends.metrics import (
    MetricsSource,
    WallWindows,
    coarse_sla_reading,
    context_from_window,
)
from sair_ray.config import PipelineConfig
from sair_ray.discovery import DiscoveryError, discover_pipeline, ingress_of, parse_stage_list
from sair_ray.profiles import Profile, ProfileError, list_profiles, load_pipeline
from sair_ray.types import (
    ClusterResources,
    Context,
    PipelineSpec,
    StageAllocation,
    StageKind,
)

log = logging.getLogger(__name__)

MB = 1024 * 1024
SHIM_SOCKET_ENV = "CUDA_TB_SOCKET"
DEFAULT_NUM_CPUS = 1.0  # what a Serve replica reserves when ray_actor_options sets no num_cpus
_DEPLOY_KEYS = ("proxy_location", "http_options", "grpc_options", "logging_config",
                "target_capacity")


class ServeSetupError(ValueError):
    """The application cannot be driven by SAIR as deployed; the message says how to fix it."""


class ServeAdminError(RuntimeError):
    """The dashboard's Serve REST API refused a request or could not be reached."""


class DashboardUnreachable(ServeAdminError):
    """No HTTP answer at all (connection refused or reset, timeout, DNS): every further
    request would fail the same way, and a request in flight may or may not have been
    carried out."""


# -- the dashboard REST API ---------------------------------------------------------------
class ServeAdmin:
    """Minimal client of the Serve REST API on the Ray dashboard (stdlib HTTP only). The
    Ray token (clusters with token authentication) goes only over https or to this
    machine, and never along a redirect to another host (`sair_ray.net`)."""

    # A config PUT makes the dashboard validate and hand the whole config to the Serve
    # controller; on 2 busy cores that took over 10 s. A round is 30 s, so wait up to 30.
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        if "://" not in url:
            url = f"http://{url}"
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"ServeAdmin({self.url!r})"

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **_ray_auth_headers()})
        try:
            with net.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read().decode() or "null"
        except net.InsecureURL as e:   # the Ray token, in clear text to another host
            raise ServeAdminError(f"{e} (the Ray auth token)") from None
        except urllib.error.HTTPError as e:
            detail = _excerpt(e.read().decode(errors="replace"))
            raise ServeAdminError(f"{method} {self.url}{path} -> HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DashboardUnreachable(f"cannot reach the Ray dashboard at {self.url} "
                                       f"({method} {path}): {reason}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def details(self) -> dict[str, Any]:
        """Serve instance details: every application, deployment and replica."""
        out = self._request("GET", "/api/serve/applications/")
        if not isinstance(out, dict):
            raise ServeAdminError(f"unexpected reply from {self.url}/api/serve/applications/")
        return out

    def scale(self, app: str, deployment: str, replicas: int) -> None:
        """Set a deployment's target replica count (Serve's external-scaler API)."""
        path = (f"/api/v1/applications/{urllib.parse.quote(app, safe='')}/deployments/"
                f"{urllib.parse.quote(deployment, safe='')}/scale")
        self._request("POST", path, {"target_num_replicas": int(replicas)})

    def deploy(self, config: Mapping[str, Any]) -> None:
        """Apply a whole declarative Serve config (every declaratively deployed app)."""
        self._request("PUT", "/api/serve/applications/", dict(config))


def _excerpt(text: str, head: int = 300, tail: int = 1200) -> str:
    """An error body short enough for a message: its start (what failed) and its end (a
    dashboard's Python traceback ends with the cause, which a cut after the start loses)."""
    text = text.strip()
    if len(text) <= head + tail + 20:
        return text
    return f"{text[:head]} [... {len(text) - head - tail} characters ...] {text[-tail:]}"


def _ray_auth_headers() -> dict[str, str]:
    """The dashboard's bearer token when the cluster uses Ray token authentication (the
    default for clusters started by `ray.init()` since Ray 2.5x); {} otherwise or when Ray
    is not importable. Ray reads the token from RAY_AUTH_TOKEN or ~/.ray/auth_token."""
    try:
        from ray._private.authentication.http_token_authentication import (
            get_auth_headers_if_auth_enabled,
        )

        return dict(get_auth_headers_if_auth_enabled({}))
    except Exception:  # no Ray, or an API change: talk to the dashboard without a token
        return {}


def discover_dashboard_url() -> str:
    """The dashboard address of the Ray cluster this process is connected to."""
    from ray._private.services import get_webui_url_from_internal_kv

    url = get_webui_url_from_internal_kv()
    if not url:
        raise ServeAdminError("this Ray cluster runs no dashboard (start Ray with "
                              "include_dashboard=True) and no dashboard URL was given; SAIR "
                              "needs the dashboard's Serve REST API to scale deployments")
    return url


# -- what the REST API says about one deployment ----------------------------------------------
@dataclass(frozen=True)
class DeploymentView:
    """One deployment as the Serve REST API reports it."""

    name: str
    target_replicas: int
    running_replicas: int
    num_cpus: float
    memory_mb: float | None      # None: the deployment reserves no memory in Ray
    num_gpus: float
    pids: tuple[int, ...]        # processes of RUNNING replicas
    shim_socket: str | None      # CUDA_TB_SOCKET template, if the replicas load the shim
    shims: tuple[ReplicaShim, ...]   # RUNNING replicas' shim sockets (with the shim)
    actor_options: Mapping[str, Any]
    status: str

    @classmethod
    def from_details(cls, d: Mapping[str, Any]) -> DeploymentView:
        opts = dict(d.get("deployment_config", {}).get("ray_actor_options") or {})
        env = ((opts.get("runtime_env") or {}).get("env_vars") or {})
        running = [r for r in d.get("replicas", []) if r.get("state") == "RUNNING"]
        memory = opts.get("memory")
        return cls(
            name=d["name"], target_replicas=int(d.get("target_num_replicas", 0)),
            running_replicas=len(running),
            num_cpus=float(opts.get("num_cpus", DEFAULT_NUM_CPUS)),
            memory_mb=float(memory) / MB if memory else None,
            num_gpus=float(opts.get("num_gpus") or 0.0),
            pids=tuple(int(r["pid"]) for r in running if r.get("pid")),
            shim_socket=env.get(SHIM_SOCKET_ENV) or None,
            shims=tuple(ReplicaShim.of(running, env[SHIM_SOCKET_ENV]))
            if env.get(SHIM_SOCKET_ENV) else (), actor_options=opts,
            status=str(d.get("status", "")))


@dataclass(frozen=True)
class AppView:
    """One Serve application: how it was deployed and its deployments."""

    name: str
    status: str
    declarative: bool
    external_scaler_enabled: bool
    deployments: Mapping[str, DeploymentView]
    deployed_config: Mapping[str, Any] | None   # the declarative config, None if imperative
    ingress: str | None = None                  # from Serve's deployment graph, if exposed

    @property
    def serve_native(self) -> bool:
        """Deployed with `autoscaling_policy: sair_ray.serve:SAIRPolicy`: Serve sets the
        replicas from SAIR's published plan (docs/live.md, Serve-native mode)."""
        from sair_ray.serve import POLICY_PATH

        pol = (self.deployed_config or {}).get("autoscaling_policy") or {}
        return isinstance(pol, Mapping) and pol.get("policy_function") == POLICY_PATH

    @classmethod
    def from_details(cls, details: Mapping[str, Any], app: str) -> AppView:
        apps = details.get("applications") or {}
        if app not in apps:
            have = ", ".join(sorted(apps)) or "none"
            raise ServeSetupError(f"no Serve application named {app!r} is running "
                                  f"(running applications: {have})")
        a = apps[app]
        return cls(
            name=app, status=str(a.get("status", "")),
            declarative=a.get("source") == "declarative",
            external_scaler_enabled=bool(a.get("external_scaler_enabled")),
            deployments={n: DeploymentView.from_details(d)
                         for n, d in (a.get("deployments") or {}).items()},
            deployed_config=a.get("deployed_app_config"), ingress=ingress_of(a))


def check_app(view: AppView, pipeline: PipelineSpec) -> None:
    """Refuse, with the fix in the message, an app SAIR cannot drive."""
    if not view.external_scaler_enabled and not view.serve_native:
        raise ServeSetupError(
            f"Serve application {view.name!r} was deployed without "
            "`external_scaler_enabled: true`, so its replica counts cannot be set from "
            "outside; redeploy it with that key in its application config (serve deploy / "
            "serve run <config.yaml>) or serve.run(..., external_scaler_enabled=True), or "
            "with `autoscaling_policy: {policy_function: sair_ray.serve:SAIRPolicy}` "
            "(Serve-native mode, docs/live.md)")
    missing = [s for s in pipeline.stage_names if s not in view.deployments]
    if missing:
        raise ServeSetupError(
            f"Serve application {view.name!r} has no deployment(s) {', '.join(missing)} "
            f"that profile {pipeline.name!r} names as stages; its deployments are "
            f"{', '.join(sorted(view.deployments))}. Stage names must equal deployment names "
            "(pass a profile whose stages match, or none: SAIR then reads the stages from "
            "Serve)")


# -- changes SAIR did not make ------------------------------------------------------------
@dataclass(frozen=True)
class ExternalChange:
    """A stage setting that changed without SAIR (e.g. a user's redeploy); SAIR adopts it."""

    time: float
    stage: str
    field: str
    expected: float
    observed: float
    # a GPU replica whose rate drifted from the stage's (e.g. it restarted at rate 1):
    # SAIR sets it back rather than adopting it
    replica: str = ""
    restored: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.replica:   # a stage-level change: the two replica fields say nothing
            del d["replica"], d["restored"]
        return d


@dataclass(frozen=True)
class ActuationError:
    time: float
    stage: str
    what: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_config_update(details: Mapping[str, Any], app: str,
                        changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The whole-cluster declarative Serve config with `changes` applied to `app`.

    `changes` maps deployment name -> {"num_replicas": n, "ray_actor_options": {...}}.
    A config PUT replaces every declaratively deployed app, so all of them are carried
    over unchanged; in `app` only the named deployments' entries change. A deployment's
    `ray_actor_options` override replaces the code's options as a whole, so callers pass
    the complete options (the effective ones with only num_cpus/memory changed).
    """
    apps = details.get("applications") or {}
    configs = []
    for name, a in apps.items():
        cfg = a.get("deployed_app_config")
        if a.get("source") != "declarative" or not cfg:
            continue
        cfg = json.loads(json.dumps(cfg))  # deep copy, plain JSON
        if name == app:
            entries = {d["name"]: d for d in cfg.setdefault("deployments", [])}
            for dep, fields in changes.items():
                entry = entries.get(dep)
                if entry is None:
                    entry = {"name": dep}
                    cfg["deployments"].append(entry)
                entry.update(json.loads(json.dumps(dict(fields))))
        configs.append(cfg)
    if app not in {c["name"] for c in configs}:
        raise ServeSetupError(f"Serve application {app!r} was deployed imperatively "
                              "(serve.run); SAIR can change CPU/memory only of apps deployed "
                              "from a config (serve deploy / serve run <config.yaml>)")
    out: dict[str, Any] = {k: details[k] for k in _DEPLOY_KEYS if details.get(k) is not None}
    out["applications"] = configs
    return out


# -- the backend ------------------------------------------------------------------------------
class RayServeBackend:
    """The Backend port on a running Serve application (see the module docstring).

    `profile`: a Profile, a path to a profile YAML, or None: the shipped profile named like
    the app if there is one, else the pipeline is discovered from Serve. `options`: the
    `pipeline:` section of the SAIR config (SLA, stage order, metrics source).
    `metrics`: a `MetricsSource` (default: chosen by `options.metrics`). `resources`:
    returns (total, available) Ray resources (default: `ray.cluster_resources()`,
    `ray.available_resources()`). `wall_offset`: added to a round's times to read the
    metrics, which the replicas stamp with the wall clock (a host on a
    `sair_ray.session.SteadyClock` passes its `wall_offset`).
    """

    def __init__(self, app: str, *, profile: Profile | str | Path | None = None,
                 options: PipelineConfig | None = None,
                 admin: ServeAdmin | None = None, dashboard_url: str | None = None,
                 metrics: MetricsSource | None = None,
                 resources: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]]
                 | None = None,
                 history: int = 200,
                 wall_offset: Callable[[], float] | None = None) -> None:
        self.app = app
        self._wall_offset = wall_offset
        self.options = options or PipelineConfig()
        self.admin = admin or ServeAdmin(dashboard_url or discover_dashboard_url())
        self._resources = resources or _ray_resources
        details = self.admin.details()
        view = AppView.from_details(details, app)
        base, self.pipeline_source = self._base_pipeline(profile, details)
        check_app(view, base)
        self._pipeline = self._live_pipeline(view, base)
        self._metrics = metrics
        # 'auto' fell back to Serve's metrics at this monotonic time (None: it did not)
        self._auto_serve_since: float | None = None
        self._rates: dict[str, float] = {}
        self.gpu = GpuRates(app)
        self._rates_read: dict[str, float] = {}   # stage -> time of its last shim read
        self._expected: dict[str, StageAllocation] | None = None
        self.external_changes: deque[ExternalChange] = deque(maxlen=history)
        self.actuation_errors: deque[ActuationError] = deque(maxlen=history)
        self._warned: set[str] = set()
        self._unconfirmed: set[str] = set()   # stages of an apply cut off by an outage
        self.last_view: AppView = view
        self._round_at: float | None = None   # the round whose dashboard read is last_view

    # -- Backend protocol ---------------------------------------------------------------
    @property
    def pipeline(self) -> PipelineSpec:
        return self._pipeline

    def observe(self, start: float, end: float) -> Context:
        view = self._view(end)
        allocation = self._allocation(view, end)
        self._detect_external(allocation, end)
        window = self.metrics.window(start, end)
        coarse = coarse_sla_reading(window, self._pipeline.sla_ms)
        if coarse and "coarse p99" not in self._warned:
            self._warned.add("coarse p99")
            log.warning("%s: %s", self.app, coarse)
        ctx = context_from_window(window, self._pipeline, allocation)
        # named after the Serve app (a user profile may carry another name), at round time
        return replace(ctx, app=self.app, time=end)

    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        """Move stages to `target`. A step the dashboard refuses is logged and recorded in
        `actuation_errors`, and the other stages go on; the next observation shows what
        actually happened.

        If the dashboard stops answering part-way, nothing more is tried (each further
        request would wait out the same failure) and `DashboardUnreachable` is raised, so
        the round fails as a whole rather than counting as an applied action. The stages
        not reached are recorded as actuation errors.
        """
        view = self._view(now)
        self._round_at = None  # what follows changes the app: the next round reads anew
        current = self._allocation(view, now)
        resources: dict[str, StageAllocation] = {}
        failed: set[str] = set()
        done: list[str] = []          # steps carried out, for the message if cut off
        complete: set[str] = set()    # stages all of whose steps were carried out
        try:
            for name, t in target.items():
                spec = self._pipeline.stage(name)
                cur = current[name]
                # Serve-native: replicas travel in the plan the live loop publishes
                if t.replicas != cur.replicas and not view.serve_native:
                    try:
                        self.admin.scale(self.app, name, t.replicas)
                        done.append(f"{name} replicas {cur.replicas}->{t.replicas}")
                        log.info("%s/%s: replicas %d -> %d", self.app, name, cur.replicas,
                                 t.replicas)
                    except DashboardUnreachable:
                        raise
                    except ServeAdminError as e:
                        self._error(now, name, "replicas", e)
                        failed.add(name)
                if not spec.is_gpu and (t.cpu_m != cur.cpu_m or t.mem_mb != cur.mem_mb):
                    resources[name] = t
                if spec.is_gpu and not math.isclose(t.rate, cur.rate):
                    self._set_rate(view.deployments[name], name, t.rate, now)
                    done.append(f"{name} rate {cur.rate:g}->{t.rate:g}")
                if name not in resources:
                    complete.add(name)
            if resources:
                if self._redeploy(view, resources, target, now):
                    done.append(f"{', '.join(resources)} CPU/memory")
                    complete.update(resources)
                else:
                    failed.update(resources)
        except DashboardUnreachable as e:
            missed = [n for n, t in target.items() if n in current and t != current[n]
                      and n not in complete and n not in failed]
            for name in missed:
                self._error(now, name, "apply", e)
            # The request that failed may still have been carried out (a timeout after
            # Serve acted), so assume nothing: the next observation compares against the
            # allocation before this call, and whatever did change is adopted like a
            # user's change (held for its cooldowns, not undone or repeated).
            self._expected = dict(current)
            self._unconfirmed = set(target)
            raise DashboardUnreachable(
                f"{e}; done before it: {', '.join(done) or 'nothing'}; not done: "
                f"{', '.join(missed) or 'nothing'}") from None
        # What the next observation should show; anything else changed outside SAIR.
        expected = dict(current)
        expected.update({n: t for n, t in target.items() if n in expected and n not in failed})
        self._expected = expected

    def free_resources(self) -> ClusterResources:
        _, avail = self._resources()
        return _cluster(avail)

    def sync(self, now: float) -> list[ExternalChange]:
        """Compare the deployed allocation with what SAIR last left, record differences in
        `external_changes` and adopt them; returns the new ones. The live loop calls this
        before each round so the round already treats a user's change as the status quo."""
        return self._detect_external(self._allocation(self._view(now), now), now)

    # -- parts --------------------------------------------------------------------------------
    # How often 'auto' looks again for the app's StageMeter actor after falling back to
    # Serve's metrics: an app that had served nothing yet at the first round has no metrics
    # actor then, and should not be held to the fallback for good.
    METER_RECHECK_S = 60.0

    @property
    def metrics(self) -> MetricsSource:
        if self._metrics is not None and self._auto_serve_since is not None and (
                time.monotonic() - self._auto_serve_since >= self.METER_RECHECK_S):
            self._metrics = self._meter_if_running()
        if self._metrics is None:
            source = self._metrics_source()
            self._metrics = (WallWindows(source, self._wall_offset)
                             if self._wall_offset is not None else source)
        return self._metrics

    def _meter_if_running(self) -> MetricsSource | None:
        """Looked again in 'auto' mode: None (build the app's meter source) when its
        StageMeter actor runs now, else the Serve-metrics source kept, for another while."""
        from sair_ray.observe import MetricsClient, MetricsUnavailable

        try:
            MetricsClient(self.app)
        except MetricsUnavailable:
            self._auto_serve_since = time.monotonic()
            return self._metrics
        log.info("%s: the app's metrics actor is running now; reading it instead of "
                 "Serve's metrics", self.app)
        self._auto_serve_since = None
        return None

    def _metrics_source(self) -> MetricsSource:
        """`pipeline.metrics`: the app's StageMeter actor ('meter'), Serve's own metrics
        ('serve'), or the first if the app runs it ('auto')."""
        from sair_ray.observe import MetricsClient, MetricsUnavailable

        kind = self.options.metrics
        if kind in ("auto", "meter"):
            try:
                return MetricsClient(self.app)
            except MetricsUnavailable:
                if kind == "meter":
                    raise
                self._auto_serve_since = time.monotonic()
        from sair_ray.backends.serve_metrics import serve_metrics_source

        ingress = self.last_view.ingress
        return serve_metrics_source(   # (a profile may leave the ingress out of its stages)
            self.app, self._pipeline.stage_names,
            ingress if ingress in self._pipeline.stage_names else None,
            prometheus_url=self.options.prometheus_url or None,
            gpu_stages=tuple(s.name for s in self._pipeline.stages if s.is_gpu))

    def _base_pipeline(self, profile: Profile | str | Path | None,
                       details: Mapping[str, Any]) -> tuple[PipelineSpec, str]:
        """The pipeline before it is fitted to the deployment, and where it came from."""
        sla = self.options.sla_ms
        if profile is None and self.app in list_profiles():
            profile = self.app
        if profile is not None:
            spec, source = _load_pipeline(profile)
            if self.options.stages:
                raise ServeSetupError("pipeline.stages orders an app's deployments when it "
                                      "has no profile; with a profile, its stages are the "
                                      "order (remove one of the two)")
            return (replace(spec, sla_ms=sla) if sla > 0 else spec), source
        total, _ = self._resources()
        try:
            spec = discover_pipeline(details["applications"][self.app], app=self.app,
                                     sla_ms=sla, cluster=_cluster(total),
                                     stages=parse_stage_list(self.options.stages))
        except DiscoveryError as e:
            raise ServeSetupError(str(e)) from None
        return spec, "discovered from Serve"

    def _view(self, now: float) -> AppView:
        """The app as the dashboard reports it, read once per round: `sync`, `observe` and
        `apply` of the round at `now` share one read of the Serve details. (A CPU/memory
        redeploy reads them again right before its config PUT, which replaces every app's
        config and so must start from the latest.)"""
        if self._round_at == now:
            return self.last_view
        view = AppView.from_details(self.admin.details(), self.app)
        self.last_view, self._round_at = view, now
        return view

    def _live_pipeline(self, view: AppView, base: PipelineSpec) -> PipelineSpec:
        """The pipeline adjusted to how the app is really deployed."""
        total, _ = self._resources()
        stages = []
        for spec in base.stages:
            d = view.deployments[spec.name]
            if spec.is_gpu and d.num_gpus <= 0:
                # No GPU reserved: the stage runs on CPU here, so it is a CPU stage (CPU and
                # memory actions, CPU cost) rather than a GPU stage with a rate to move.
                log.warning("%s/%s: profile says GPU but the deployment reserves no GPU; "
                            "treating it as a CPU stage", self.app, spec.name)
                spec = replace(spec, kind=StageKind.CPU,
                               initial=replace(spec.initial, rate=1.0))
            elif spec.is_gpu:
                spec = replace(spec, gpus_per_replica=d.num_gpus)
                if not d.shim_socket:
                    # Nothing can move the rate: every proposed change would fail to
                    # actuate and still start the stage's cooldown (blocking the
                    # replica scale-downs behind it), so the rate is pinned at 1.0.
                    log.warning("%s/%s: replicas do not load the cuda_tb shim (no %s in "
                                "their runtime_env): the GPU rate stays at 1.0 and SAIR "
                                "moves replicas only", self.app, spec.name, SHIM_SOCKET_ENV)
                    spec = replace(spec, rate_pinned=1.0,
                                   initial=replace(spec.initial, rate=1.0))
            if not view.declarative and not spec.is_gpu:
                # An imperatively deployed app cannot be redeployed from here: pin CPU and
                # memory to what it has, so SAIR only moves replicas.
                cpu_m = round(d.num_cpus * 1000)
                mem = round(d.memory_mb) if d.memory_mb else spec.initial.mem_mb
                log.warning("%s was deployed with serve.run (imperative): SAIR scales "
                            "replicas of %s but cannot change its CPU/memory", self.app,
                            spec.name)
                spec = replace(spec, cpu_m_min=max(1, cpu_m), cpu_m_max=max(1, cpu_m),
                               mem_mb_min=mem, mem_mb_max=mem,
                               initial=replace(spec.initial, cpu_m=max(1, cpu_m), mem_mb=mem))
            stages.append(spec)
        return replace(base, stages=tuple(stages), cluster=_cluster(total))

    def _allocation(self, view: AppView, now: float) -> dict[str, StageAllocation]:
        out = {}
        for spec in self._pipeline.stages:
            d = view.deployments.get(spec.name)
            if d is None:
                raise ServeSetupError(f"deployment {spec.name!r} of app {self.app!r} "
                                      "disappeared (was the app redeployed without it?)")
            mem = round(d.memory_mb) if d.memory_mb else spec.initial.mem_mb
            rate = self._rate(d, now) if spec.is_gpu else 1.0
            out[spec.name] = StageAllocation(d.target_replicas, round(d.num_cpus * 1000), mem,
                                             rate)
        return out

    def _rate(self, d: DeploymentView, now: float) -> float:
        """The stage's GPU rate: the one SAIR last set (or, before it set one, the one most
        replicas run at), read from every replica's shim once per round wherever it runs
        (`sair_ray.backends.gpu_rate`). A replica off that rate (restarted at 1.0, or set
        by someone else) is set back to it and the drift recorded. 1.0 without a shim."""
        want = self._rates.get(d.name)
        if not d.shims or self._rates_read.get(d.name) == now:
            return want if want is not None else 1.0
        self._rates_read[d.name] = now
        got = self.gpu.get(d.name, d.shims)
        rates = {r: v for r, v in got.items() if isinstance(v, float)}
        for r, err in got.items():
            if isinstance(err, str):
                log.warning("%s/%s: cannot read the GPU rate of replica %s: %s", self.app,
                            d.name, r, err)
        if not rates:
            return want if want is not None else 1.0
        if want is None:
            want = Counter(rates.values()).most_common(1)[0][0]
            self._rates[d.name] = want
            return want
        drifted = [s for s in d.shims if s.replica in rates
                   and not math.isclose(rates[s.replica], want, abs_tol=1e-6)]
        if drifted:
            fixed = self.gpu.set(d.name, drifted, want)
            for s in drifted:
                ok = isinstance(fixed.get(s.replica), float)
                log.warning("%s/%s: replica %s ran at GPU rate %g, not %g; %s", self.app,
                            d.name, s.replica, rates[s.replica], want,
                            "set back" if ok else f"could not set it back: {fixed.get(s.replica)}")
                self.external_changes.append(ExternalChange(
                    now, d.name, "rate", want, rates[s.replica], replica=s.replica,
                    restored=ok))
        return want

    def _detect_external(self, allocation: Mapping[str, StageAllocation],
                         now: float) -> list[ExternalChange]:
        new = []
        if self._expected is not None:
            for name, seen in allocation.items():
                exp = self._expected.get(name)
                if exp is None:
                    continue
                for field in ("replicas", "cpu_m", "mem_mb"):
                    if field == "replicas" and self.last_view.serve_native:
                        continue  # Serve itself moves them (the plan, or its fallback)
                    e, o = getattr(exp, field), getattr(seen, field)
                    if e != o:
                        ch = ExternalChange(now, name, field, e, o)
                        self.external_changes.append(ch)
                        new.append(ch)
                        if name in self._unconfirmed:
                            log.warning("%s/%s: %s is %s after an apply the dashboard cut "
                                        "off (was %s); adopting it", self.app, name, field,
                                        o, e)
                        else:
                            log.warning("%s/%s: %s changed outside SAIR (%s -> %s); "
                                        "adopting it", self.app, name, field, e, o)
        self._expected = dict(allocation)
        self._unconfirmed = set()
        return new

    def _redeploy(self, view: AppView, resources: Mapping[str, StageAllocation],
                  target: Mapping[str, StageAllocation], now: float) -> bool:
        changes = {}
        for name, t in resources.items():
            d = view.deployments[name]
            opts = json.loads(json.dumps(dict(d.actor_options)))
            opts["num_cpus"] = t.cpu_m / 1000
            if d.memory_mb is not None or t.mem_mb != self._nominal_mem(name):
                opts["memory"] = int(t.mem_mb) * MB
            # num_replicas too: a changed deployment config resets the target to it. Not in
            # Serve-native mode: its deployments autoscale (Serve refuses num_replicas there)
            changes[name] = ({"ray_actor_options": opts} if view.serve_native else
                             {"num_replicas": target[name].replicas,
                              "ray_actor_options": opts})
        try:
            with _serve_config_lock(f"sair-controller:{self.app}"):
                self.admin.deploy(self._config_update(changes))
            log.info("%s: redeployed %s with new CPU/memory (rolling restart)", self.app,
                     ", ".join(changes))
            return True
        except DashboardUnreachable:
            raise
        except (ServeAdminError, ServeSetupError, TimeoutError) as e:
            for name in changes:
                self._error(now, name, "resources", e)
            return False

    def _config_update(self, changes: Mapping[str, Mapping[str, Any]],
                       attempts: int = 3) -> dict[str, Any]:
        """The whole-cluster config with `changes`, built from a read of the Serve details
        that a second read right before the write confirms: every app's config and deploy
        time unchanged. A config PUT replaces every declarative app, so a change someone
        made in between (a `serve deploy`, another app's controller) would be undone, or an
        app just deployed removed; if the details keep changing, the write is not made."""
        details = self.admin.details()
        for _ in range(attempts):
            config = build_config_update(details, self.app, changes)
            latest = self.admin.details()
            if config_fingerprint(latest) == config_fingerprint(details):
                return config
            log.info("%s: the Serve config changed while SAIR prepared a redeploy; "
                     "rebuilding it from the new one", self.app)
            details = latest
        raise ServeAdminError("the Serve config kept changing while SAIR prepared a "
                              f"CPU/memory redeploy of {self.app!r} ({attempts} reads); "
                              "not writing it this round")

    def _nominal_mem(self, name: str) -> int:
        return self._pipeline.stage(name).initial.mem_mb

    def _set_rate(self, d: DeploymentView, name: str, rate: float, now: float) -> None:
        if not d.shim_socket:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s/%s: replicas do not load the cuda_tb shim (no %s in their "
                            "runtime_env), so the GPU rate cannot be set", self.app, name,
                            SHIM_SOCKET_ENV)
            self._error(now, name, "rate", ServeSetupError("no cuda_tb shim"))
            return
        got = self.gpu.set(name, d.shims, rate)
        failed = [f"replica {r}: {v}" for r, v in got.items() if isinstance(v, str)]
        if failed:
            self._error(now, name, "rate", RuntimeError("; ".join(failed)))
        if len(failed) < len(got):
            self._rates[name] = rate

    def _error(self, now: float, stage: str, what: str, e: Exception) -> None:
        log.error("%s/%s: could not change %s: %s", self.app, stage, what, e)
        self.actuation_errors.append(ActuationError(now, stage, what, str(e)))


def config_fingerprint(details: Mapping[str, Any]) -> dict[str, Any]:
    """What a whole-config write must not overwrite: per app, how it was deployed, when,
    and with which config; plus the cluster-wide keys the write carries over."""
    apps = details.get("applications") or {}
    return {"apps": {n: (a.get("source"), a.get("last_deployed_time_s"),
                         json.dumps(a.get("deployed_app_config"), sort_keys=True))
                     for n, a in apps.items()},
            **{k: json.dumps(details.get(k), sort_keys=True) for k in _DEPLOY_KEYS}}


@contextlib.contextmanager
def _serve_config_lock(owner: str) -> Iterator[None]:
    """Serialise whole-config writes of every SAIR controller on the cluster
    (`sair_ray.cluster_lock`); no lock without a Ray connection (nothing else to race)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        yield
        return
    from sair_ray.cluster_lock import cluster_lock

    with cluster_lock("serve-config", owner):
        yield


def _load_pipeline(profile: Profile | str | Path) -> tuple[PipelineSpec, str]:
    if isinstance(profile, Profile):
        return profile.pipeline, f"profile {profile.source or profile.name}"
    try:
        return load_pipeline(profile), f"profile {profile}"
    except ProfileError as e:
        raise ServeSetupError(str(e)) from None


def _cluster(r: Mapping[str, float]) -> ClusterResources:
    return ClusterResources(cpus=float(r.get("CPU", 0.0)),
                            memory_mb=float(r.get("memory", 0.0)) / MB,
                            gpus=float(r.get("GPU", 0.0)))


def _ray_resources() -> tuple[Mapping[str, float], Mapping[str, float]]:
    import ray

    return ray.cluster_resources(), ray.available_resources()
