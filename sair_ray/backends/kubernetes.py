"""KubeRayBackend: SAIR actuating through the Kubernetes API instead of Serve's REST API.

On Kubernetes a KubeRay `RayService` (`ray.io/v1`) owns the Serve application: its
`spec.serveConfigV2` is a YAML *string* holding `applications[].deployments[]`, and KubeRay
re-deploys whatever that string says. Scaling a deployment any other way would be undone
by KubeRay, so this backend edits that string:

- `num_replicas` for replicas;
- `ray_actor_options.num_cpus` / `.memory` (bytes) for a CPU stage's size;
- `ray_actor_options.runtime_env.env_vars.CUDA_TB_RATE` for a GPU stage's rate ratio (the
  `cuda_tb` shim reads it when the replica starts; see docs/shim.md), only where that entry
  loads the shim itself (`LD_PRELOAD` in the same env_vars; docs/deploy.md).

Edits are minimal: only fields whose value changes are written, everything else in the
YAML (other applications, unknown keys, `user_config`, `http_options`...) is kept. Serve
replaces the code's whole `ray_actor_options` with the config's when the config has one, so
when SAIR has to create that mapping for a CPU stage it writes every resource it knows
(num_cpus and memory), never a partial one that would silently drop the code's.

Writes are JSON merge patches carrying the `resourceVersion` that was read: if anyone
(KubeRay, a user, `kubectl apply`) wrote in between, the apiserver answers 409 Conflict and
the edit is recomputed from a fresh read, so a concurrent change is never overwritten.

Stages that are not Ray Serve deployments can be plain Kubernetes `Deployment`s
(`apps/v1`): `spec.replicas` and the container's resource requests, in one strategic
merge patch with the same conflict rule.

Metrics do not come from Kubernetes: the backend takes a `MetricsSource`
(`sair_ray/backends/metrics.py`: the live Ray metrics client inside the cluster, or the
simulator for dry runs) and reads its windows against the allocation it reads from the
RayService, which is the allocation in force as far as KubeRay is concerned (the desired
state, as an HPA reads `spec.replicas`).

Every call to the Kubernetes API has a request timeout (`request_timeout_s`, 10 s by
default; `sair operator --request-timeout`): an apiserver that does not answer makes the
round fail with `KubernetesTimeout` naming the object and the call, instead of hanging
the operator. A backend keeps the last `PATCH_HISTORY` patches it sent (`patches`) and
counts them all (`patch_count`).

The `kubernetes` package is imported only by the classes that talk to a cluster, so the
serveConfigV2 logic and dry runs work without it.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import yaml

from sair_ray.backends.metrics import FollowsAllocation, MetricsSource, context_from_window
from sair_ray.types import ClusterResources, Context, PipelineSpec, StageAllocation, StageSpec

log = logging.getLogger(__name__)

RATE_ENV = "CUDA_TB_RATE"  # the cuda_tb shim's initial rate ratio (docs/shim.md)
MIB = 1024 * 1024
RAYSERVICE = ("ray.io", "v1", "rayservices")
DEFAULT_REQUEST_TIMEOUT_S = 10.0  # every Kubernetes API call's (sair operator --request-timeout)
PATCH_HISTORY = 100               # patches a backend keeps for status and dry runs


class KubernetesBackendError(RuntimeError):
    """A RayService/Deployment cannot be read or changed as SAIR needs."""


class ServeConfigError(KubernetesBackendError, ValueError):
    """serveConfigV2 is missing, malformed, or set up in a way SAIR must not override."""


class ConflictError(KubernetesBackendError):
    """Every attempt to write lost a race (409 Conflict) with another writer."""


class KubernetesUnavailable(KubernetesBackendError):
    """The Kubernetes API gave no HTTP answer (connection refused or reset)."""


class KubernetesTimeout(KubernetesUnavailable):
    """A Kubernetes API call got no answer within its request timeout."""


# -- quantities ---------------------------------------------------------------------------------
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}


def parse_quantity(q: str | int | float, what: str) -> float:
    """A Kubernetes quantity ("500m", "2", "1.5Gi", "512M") as a plain number."""
    if isinstance(q, int | float) and not isinstance(q, bool):
        return float(q)
    m = _QUANTITY.match(str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise KubernetesBackendError(f"{what}: {q!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# -- serveConfigV2 ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldChange:
    """One field SAIR changed, for logs, dry runs and the operator's status."""

    where: str          # "serve:<app>/<deployment>" or "deployment:<ns>/<name>/<container>"
    field: str          # dotted path inside that object
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.where} {self.field}: {self.old!r} -> {self.new!r}"


def _load_serve_config(text: Any, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ServeConfigError(f"{what}: spec.serveConfigV2 must be a YAML string, got "
                               f"{type(text).__name__}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ServeConfigError(f"{what}: spec.serveConfigV2 is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list):
        raise ServeConfigError(f"{what}: spec.serveConfigV2 has no 'applications' list")
    return doc


def _find_app(doc: dict[str, Any], app: str, what: str) -> dict[str, Any]:
    apps = [a for a in doc["applications"] if isinstance(a, dict)]
    for a in apps:
        if a.get("name") == app:
            return a
    names = ", ".join(repr(a.get("name")) for a in apps) or "none"
    raise ServeConfigError(f"{what}: serveConfigV2 has no application {app!r} "
                           f"(applications: {names})")


def _find_deployment(app_doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    deps = app_doc.get("deployments") or []
    if not isinstance(deps, list):
        raise ServeConfigError(f"application {app_doc.get('name')!r}: 'deployments' must be "
                               "a list")
    return next((d for d in deps if isinstance(d, dict) and d.get("name") == name), None)


def _check_not_autoscaled(dep: Mapping[str, Any], where: str) -> None:
    if dep.get("num_replicas") == "auto" or dep.get("autoscaling_config"):
        raise ServeConfigError(
            f"{where}: uses Serve's own autoscaling (num_replicas: auto or "
            "autoscaling_config); two autoscalers would fight over it. Remove it and set "
            "num_replicas to let SAIR scale this deployment")


def _deployment_allocation(dep: Mapping[str, Any] | None, spec: StageSpec,
                           where: str) -> StageAllocation:
    """The allocation a deployment entry declares; fields it does not set are taken from
    the stage's initial allocation (what the Serve app's code is expected to declare)."""
    init = spec.initial
    rate_default = init.rate if spec.is_gpu else 1.0
    if dep is None:
        return replace(init, rate=rate_default)
    _check_not_autoscaled(dep, where)
    opts = dep.get("ray_actor_options") or {}
    try:
        replicas = int(dep.get("num_replicas", init.replicas))
        cpu_m = (round(float(opts["num_cpus"]) * 1000) if "num_cpus" in opts
                 else init.cpu_m)
        mem_mb = round(float(opts["memory"]) / MIB) if "memory" in opts else init.mem_mb
        env = ((opts.get("runtime_env") or {}).get("env_vars") or {})
        rate = float(env[RATE_ENV]) if spec.is_gpu and RATE_ENV in env else rate_default
    except (TypeError, ValueError) as e:
        raise ServeConfigError(f"{where}: unreadable replica or resource field: {e}") from None
    return StageAllocation(replicas, cpu_m, mem_mb, rate)


def _shim_configured(dep: Mapping[str, Any]) -> bool:
    """Whether serveConfigV2 itself loads the cuda_tb shim into this deployment.

    Serve replaces the code's whole ray_actor_options (LD_PRELOAD included) by the
    config's, so a rate written into a config entry that does not also name the shim would
    switch the shim off. The rate is written only where the entry carries LD_PRELOAD in its
    own runtime_env (its env_vars are what CUDA_TB_RATE joins)."""
    opts = dep.get("ray_actor_options")
    if not isinstance(opts, Mapping):
        return False
    env = ((opts.get("runtime_env") or {}).get("env_vars") or {})
    return "LD_PRELOAD" in env


@dataclass(frozen=True)
class ServeTarget:
    """Where one stage lives in a serveConfigV2: application and deployment name."""

    app: str
    deployment: str


def read_serve_allocation(serve_config: Any, pipeline: PipelineSpec,
                          targets: Mapping[str, ServeTarget], what: str = "RayService",
                          ) -> dict[str, StageAllocation]:
    """The allocation of each stage in `targets` that serveConfigV2 declares."""
    doc = _load_serve_config(serve_config, what)
    out = {}
    for stage, t in targets.items():
        where = f"{what} serve:{t.app}/{t.deployment}"
        dep = _find_deployment(_find_app(doc, t.app, what), t.deployment)
        out[stage] = _deployment_allocation(dep, pipeline.stage(stage), where)
    return out


def _fmt_num(x: float) -> int | float:
    """Integers as ints (2 not 2.0), others rounded: readable YAML, stable diffs."""
    return int(x) if float(x).is_integer() else round(x, 6)


def edit_serve_config(serve_config: Any, pipeline: PipelineSpec,
                      targets: Mapping[str, ServeTarget],
                      allocation: Mapping[str, StageAllocation], what: str = "RayService",
                      ) -> tuple[str, list[FieldChange]]:
    """serveConfigV2 with each stage moved to `allocation[stage]`, changing only the fields
    whose value differs. Returns the new YAML string and the changes ([] = nothing to do,
    and the input string is returned untouched)."""
    doc = _load_serve_config(serve_config, what)
    changes: list[FieldChange] = []
    for stage, target in allocation.items():
        if stage not in targets:
            continue
        t, spec = targets[stage], pipeline.stage(stage)
        where = f"serve:{t.app}/{t.deployment}"
        app_doc = _find_app(doc, t.app, what)
        dep = _find_deployment(app_doc, t.deployment)
        current = _deployment_allocation(dep, spec, f"{what} {where}")
        new_entry = dep is None
        if dep is None:
            dep = {"name": t.deployment}
        before = len(changes)

        def put(path: tuple[str, ...], value: Any, old: Any, d: dict[str, Any] = dep,
                w: str = where) -> None:
            node = d
            for key in path[:-1]:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
            node[path[-1]] = value
            changes.append(FieldChange(w, ".".join(path), old, value))

        if target.replicas != current.replicas:
            put(("num_replicas",), int(target.replicas), dep.get("num_replicas"))
        # GPU stages keep their CPU/memory (docs/algorithm.md §6 gives them no resource action).
        cpu_changes = target.cpu_m != current.cpu_m or target.mem_mb != current.mem_mb
        if cpu_changes and not spec.is_gpu:
            opts = dep.get("ray_actor_options")
            if not isinstance(opts, dict) or not opts:
                # Serve would replace the code's ray_actor_options by ours: write them whole.
                put(("ray_actor_options", "num_cpus"), _fmt_num(target.cpu_m / 1000), None)
                put(("ray_actor_options", "memory"), int(target.mem_mb) * MIB, None)
            else:
                if target.cpu_m != current.cpu_m:
                    put(("ray_actor_options", "num_cpus"), _fmt_num(target.cpu_m / 1000),
                        opts.get("num_cpus"))
                if target.mem_mb != current.mem_mb:
                    put(("ray_actor_options", "memory"), int(target.mem_mb) * MIB,
                        opts.get("memory"))
        if spec.is_gpu and not math.isclose(target.rate, current.rate, abs_tol=1e-9):
            if _shim_configured(dep):
                env = dep["ray_actor_options"]["runtime_env"].get("env_vars") or {}
                put(("ray_actor_options", "runtime_env", "env_vars", RATE_ENV),
                    f"{round(target.rate, 6):g}", env.get(RATE_ENV))
            else:
                log.warning(
                    "%s %s: GPU rate %.2f not applied: the deployment's serveConfigV2 entry "
                    "does not load the cuda_tb shim (ray_actor_options.runtime_env.env_vars."
                    "LD_PRELOAD); see docs/deploy.md", what, where, target.rate)
        if new_entry and len(changes) > before:
            if not isinstance(app_doc.get("deployments"), list):
                app_doc["deployments"] = []
            app_doc["deployments"].append(dep)
    if not changes:
        return serve_config, []
    return yaml.dump(doc, Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True), changes


class _IndentedDumper(yaml.SafeDumper):
    """Block lists indented under their key, as serveConfigV2 is usually written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


# -- where the objects live ---------------------------------------------------------------------
class ObjectStore(Protocol):
    """One Kubernetes object: read it, and patch it (the body carries resourceVersion)."""

    @property
    def ref(self) -> str:
        """`<kind>/<namespace>/<name>`, for messages."""
        ...

    def get(self) -> dict[str, Any]: ...

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply `body`; raise ConflictError on a stale resourceVersion (409)."""
        ...


def _api_error(e: Exception, ref: str, verb: str) -> Exception:
    status = getattr(e, "status", None)
    if status == 409:
        return ConflictError(f"{ref}: {verb} conflicted (409): {getattr(e, 'reason', e)}")
    body = getattr(e, "body", "") or ""
    hint = {401: "unauthenticated (check the kubeconfig / service-account token)",
            403: "forbidden (apply deploy/rbac.yaml so the service account may do this)",
            404: "not found (check the name and namespace)"}.get(status or 0, "")
    return KubernetesBackendError(
        f"{ref}: {verb} failed with HTTP {status} {getattr(e, 'reason', '')}"
        f"{' - ' + hint if hint else ''} {body[:300]}".rstrip())


def _timed_out(e: BaseException | None) -> bool:
    """Whether `e` (or what it wraps: urllib3's MaxRetryError.reason, a cause) is a
    timeout."""
    from urllib3.exceptions import TimeoutError as Urllib3Timeout  # the client's transport

    for _ in range(5):
        if e is None:
            return False
        if isinstance(e, TimeoutError | Urllib3Timeout):
            return True
        e = getattr(e, "reason", None) if isinstance(getattr(e, "reason", None),
                                                      BaseException) else e.__cause__
    return False


def transport_error(e: Exception, ref: str, verb: str,
                    timeout_s: float) -> KubernetesUnavailable | None:
    """A call that got no HTTP answer (timeout, connection refused) as a readable error;
    None if `e` is something else."""
    from urllib3.exceptions import HTTPError as Urllib3Error  # the client's transport

    if not isinstance(e, OSError | Urllib3Error):
        return None
    if _timed_out(e):
        return KubernetesTimeout(f"{ref}: {verb} timed out: the Kubernetes API did not "
                                 f"answer within {timeout_s:g} s")
    return KubernetesUnavailable(f"{ref}: {verb} failed: the Kubernetes API is unreachable "
                                 f"({type(e).__name__}: {e})"[:500])


class KubeCustomObject:
    """A namespaced custom object through `kubernetes.client.CustomObjectsApi`; every call
    times out after `request_timeout_s`."""

    def __init__(self, api: Any, group: str, version: str, plural: str, namespace: str,
                 name: str, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self.api, self.group, self.version, self.plural = api, group, version, plural
        self.namespace, self.name = namespace, name
        self.request_timeout_s = request_timeout_s

    @property
    def ref(self) -> str:
        return f"{self.plural}.{self.group}/{self.namespace}/{self.name}"

    def get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, self.name,
                _request_timeout=self.request_timeout_s)
        except ApiException as e:
            raise _api_error(e, self.ref, "get") from None
        except Exception as e:
            raise _no_answer(e, self.ref, "get", self.request_timeout_s) from None

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.patch_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, self.name, body,
                _content_type="application/merge-patch+json",
                _request_timeout=self.request_timeout_s)
        except ApiException as e:
            raise _api_error(e, self.ref, "patch") from None
        except Exception as e:
            raise _no_answer(e, self.ref, "patch", self.request_timeout_s) from None


def _no_answer(e: Exception, ref: str, verb: str, timeout_s: float) -> Exception:
    """`transport_error(e)`, or `e` itself when it is not a transport failure."""
    return transport_error(e, ref, verb, timeout_s) or e


class KubeDeployment:
    """An `apps/v1` Deployment through `kubernetes.client.AppsV1Api` (raw dicts); every
    call times out after `request_timeout_s`."""

    def __init__(self, api: Any, namespace: str, name: str,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.request_timeout_s = request_timeout_s

    @property
    def ref(self) -> str:
        return f"deployments.apps/{self.namespace}/{self.name}"

    def get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.read_namespaced_deployment(
                self.name, self.namespace, _preload_content=False,
                _request_timeout=self.request_timeout_s)
            return _json(resp)
        except ApiException as e:
            raise _api_error(e, self.ref, "get") from None
        except Exception as e:
            raise _no_answer(e, self.ref, "get", self.request_timeout_s) from None

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.patch_namespaced_deployment(
                self.name, self.namespace, body, _preload_content=False,
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=self.request_timeout_s)
            return _json(resp)
        except ApiException as e:
            raise _api_error(e, self.ref, "patch") from None
        except Exception as e:
            raise _no_answer(e, self.ref, "patch", self.request_timeout_s) from None


def _json(resp: Any) -> dict[str, Any]:
    import json

    return json.loads(resp.data)


class InMemoryObject:
    """An object held in memory, patched with RFC 7386 merge semantics: what `sair operator
    --dry-run` acts on, so a dry run computes exactly the patches a live run would send."""

    def __init__(self, obj: Mapping[str, Any], ref: str | None = None) -> None:
        self.obj = copy.deepcopy(dict(obj))
        self._ref = ref
        meta = self.obj.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        self._version = 1000  # versions this object hands out after the first patch
        self.patches: list[dict[str, Any]] = []

    @property
    def ref(self) -> str:
        if self._ref:
            return self._ref
        meta = self.obj["metadata"]
        return f"{self.obj.get('kind', 'object')}/{meta.get('namespace', 'default')}/" \
               f"{meta.get('name')}"

    def get(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != self.obj["metadata"]["resourceVersion"]:
            raise ConflictError(f"{self.ref}: stale resourceVersion {rv}")
        self.patches.append(copy.deepcopy(body))
        self.obj = merge_patch(self.obj, body)
        self._version += 1
        self.obj["metadata"]["resourceVersion"] = f"{self._version}"
        return self.get()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass(frozen=True)
class PatchRecord:
    """One write that reached the API (or would have, in a dry run)."""

    object: str
    body: dict[str, Any]
    changes: tuple[FieldChange, ...]
    attempts: int


def patch_with_retry(store: ObjectStore,
                     make_patch: Callable[[dict[str, Any]],
                                          tuple[dict[str, Any], list[FieldChange]] | None],
                     max_attempts: int = 5) -> PatchRecord | None:
    """Read, compute the patch from what was read, write it with that resourceVersion; on
    409 read again and recompute, up to `max_attempts` times. `make_patch` returns None
    when the object already is as wanted (nothing is written)."""
    for attempt in range(1, max_attempts + 1):
        obj = store.get()
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        made = make_patch(obj)
        if made is None:
            return None
        body, changes = made
        body = {"metadata": {"resourceVersion": rv}, **body}
        try:
            store.patch(body)
        except ConflictError:
            log.info("%s changed under us (attempt %d/%d); re-reading", store.ref, attempt,
                     max_attempts)
            continue
        return PatchRecord(store.ref, body, tuple(changes), attempt)
    raise ConflictError(f"{store.ref}: still conflicting after {max_attempts} attempts; "
                        "another writer keeps changing it")


# -- plain Deployments ------------------------------------------------------------------------
@dataclass(frozen=True)
class DeploymentTarget:
    """A stage served by a plain Kubernetes Deployment: the object and its container."""

    store: ObjectStore
    container: str


def _container(obj: Mapping[str, Any], name: str, ref: str) -> dict[str, Any]:
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers") or []
    for c in containers:
        if c.get("name") == name:
            return c
    names = ", ".join(repr(c.get("name")) for c in containers) or "none"
    raise KubernetesBackendError(f"{ref}: no container {name!r} (containers: {names})")


def read_deployment_allocation(obj: Mapping[str, Any], spec: StageSpec, container: str,
                               ref: str) -> StageAllocation:
    c = _container(obj, container, ref)
    req = (c.get("resources") or {}).get("requests") or {}
    replicas = (obj.get("spec") or {}).get("replicas")
    return StageAllocation(
        replicas=spec.initial.replicas if replicas is None else int(replicas),
        cpu_m=round(parse_quantity(req["cpu"], f"{ref} cpu") * 1000) if "cpu" in req
        else spec.initial.cpu_m,
        mem_mb=round(parse_quantity(req["memory"], f"{ref} memory") / MIB)
        if "memory" in req else spec.initial.mem_mb)


def deployment_patch(obj: Mapping[str, Any], spec: StageSpec, container: str, ref: str,
                     target: StageAllocation) -> tuple[dict[str, Any], list[FieldChange]] | None:
    """Strategic merge patch moving a Deployment to `target` (None if already there).
    A limit below the new request is raised to it (the apiserver refuses limit < request)."""
    cur = read_deployment_allocation(obj, spec, container, ref)
    where = f"deployment:{ref.split('/', 1)[1]}/{container}"
    changes: list[FieldChange] = []
    body: dict[str, Any] = {}
    if target.replicas != cur.replicas:
        body.setdefault("spec", {})["replicas"] = int(target.replicas)
        changes.append(FieldChange(where, "spec.replicas", cur.replicas, target.replicas))
    resources: dict[str, Any] = {}
    limits = (_container(obj, container, ref).get("resources") or {}).get("limits") or {}
    for key, old, new, qty, scale in (("cpu", cur.cpu_m, target.cpu_m, f"{target.cpu_m}m",
                                       1000),
                                      ("memory", cur.mem_mb, target.mem_mb,
                                       f"{target.mem_mb}Mi", 1 / MIB)):
        if new == old:
            continue
        resources.setdefault("requests", {})[key] = qty
        changes.append(FieldChange(where, f"resources.requests.{key}", old, qty))
        if key in limits and parse_quantity(limits[key], f"{ref} limit") * scale < new:
            resources.setdefault("limits", {})[key] = qty
            changes.append(FieldChange(where, f"resources.limits.{key}", limits[key], qty))
    if resources:
        body.setdefault("spec", {})["template"] = {"spec": {"containers": [
            {"name": container, "resources": resources}]}}
    return (body, changes) if changes else None


# -- the backend ----------------------------------------------------------------------------------
@dataclass
class KubeRayBackend:
    """The Backend port over a KubeRay RayService (and optional plain Deployments).

    `serve` maps stage -> ServeTarget for stages that are Serve deployments in
    `rayservice`; `deployments` maps stage -> DeploymentTarget for the others. Every stage
    of the pipeline must be in exactly one of them. `patches` holds the last
    `PATCH_HISTORY` writes, `patch_count` counts every one.
    """

    pipeline_spec: PipelineSpec
    rayservice: ObjectStore | None
    metrics: MetricsSource | None
    serve: Mapping[str, ServeTarget] = field(default_factory=dict)
    deployments: Mapping[str, DeploymentTarget] = field(default_factory=dict)
    max_attempts: int = 5
    patches: deque[PatchRecord] = field(
        default_factory=lambda: deque(maxlen=PATCH_HISTORY))
    patch_count: int = 0
    _last_alloc: dict[str, StageAllocation] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        stages = set(self.pipeline_spec.stage_names)
        both = set(self.serve) & set(self.deployments)
        unknown = (set(self.serve) | set(self.deployments)) - stages
        missing = stages - set(self.serve) - set(self.deployments)
        if both:
            raise KubernetesBackendError(f"stages {sorted(both)} are mapped to both a Serve "
                                         "deployment and a Kubernetes Deployment")
        if unknown:
            raise KubernetesBackendError(f"stages {sorted(unknown)} are not in pipeline "
                                         f"{self.pipeline_spec.name!r}")
        if missing:
            raise KubernetesBackendError(f"stages {sorted(missing)} of pipeline "
                                         f"{self.pipeline_spec.name!r} have no Serve "
                                         "deployment or Kubernetes Deployment")
        if self.serve and self.rayservice is None:
            raise KubernetesBackendError("Serve stages need a RayService")

    @property
    def pipeline(self) -> PipelineSpec:
        return self.pipeline_spec

    def allocation(self) -> dict[str, StageAllocation]:
        """The allocation the cluster's objects declare now (one GET per object)."""
        alloc: dict[str, StageAllocation] = {}
        if self.serve:
            assert self.rayservice is not None
            obj = self.rayservice.get()
            alloc.update(read_serve_allocation((obj.get("spec") or {}).get("serveConfigV2"),
                                               self.pipeline_spec, self.serve,
                                               self.rayservice.ref))
        for stage, d in self.deployments.items():
            alloc[stage] = read_deployment_allocation(
                d.store.get(), self.pipeline_spec.stage(stage), d.container, d.store.ref)
        return alloc

    def observe(self, start: float, end: float) -> Context:
        if self.metrics is None:
            raise KubernetesBackendError("no metrics source: the backend can act but not observe")
        alloc = self.allocation()
        self._last_alloc = alloc
        return context_from_window(self.metrics.window(start, end), self.pipeline_spec, alloc)

    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        serve_targets = {s: a for s, a in target.items() if s in self.serve}
        if serve_targets:
            assert self.rayservice is not None
            store = self.rayservice

            def make(obj: dict[str, Any]) -> tuple[dict[str, Any], list[FieldChange]] | None:
                text = (obj.get("spec") or {}).get("serveConfigV2")
                new, changes = edit_serve_config(text, self.pipeline_spec, self.serve,
                                                 serve_targets, store.ref)
                return ({"spec": {"serveConfigV2": new}}, changes) if changes else None

            self._record(patch_with_retry(store, make, self.max_attempts))
        for stage, alloc in target.items():
            d = self.deployments.get(stage)
            if d is None:
                continue
            spec = self.pipeline_spec.stage(stage)

            def make_dep(obj: dict[str, Any], d: DeploymentTarget = d, spec: StageSpec = spec,
                         alloc: StageAllocation = alloc,
                         ) -> tuple[dict[str, Any], list[FieldChange]] | None:
                return deployment_patch(obj, spec, d.container, d.store.ref, alloc)

            self._record(patch_with_retry(d.store, make_dep, self.max_attempts))
        self._last_alloc = None
        if isinstance(self.metrics, FollowsAllocation):
            self.metrics.allocation_changed(target, now)

    def _record(self, rec: PatchRecord | None) -> None:
        if rec is not None:
            log.info("patched %s (attempt %d): %s", rec.object, rec.attempts,
                     "; ".join(str(c) for c in rec.changes))
            self.patches.append(rec)
            self.patch_count += 1

    def free_resources(self) -> ClusterResources:
        """The pipeline's cluster capacity minus what its stages declare (KubeRay schedules
        Serve replicas inside the Ray cluster, whose size the pipeline spec states)."""
        alloc = self._last_alloc or self.allocation()
        c = self.pipeline_spec.cluster
        cpus = sum(a.replicas * a.cpu_m for a in alloc.values()) / 1000
        mem = sum(a.replicas * a.mem_mb for a in alloc.values())
        gpus = sum(a.replicas * s.gpus_per_replica
                   for s in self.pipeline_spec.stages if s.is_gpu
                   for a in [alloc[s.name]])
        return ClusterResources(cpus=max(0.0, c.cpus - cpus),
                                memory_mb=max(0.0, c.memory_mb - mem),
                                gpus=max(0.0, c.gpus - gpus))
