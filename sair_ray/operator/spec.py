"""The `PipelineAutoscaler` custom resource: its schema as SAIR reads it.

`deploy/crd.yaml` is the OpenAPI schema the apiserver enforces; this module turns one
object into an `AutoscalerSpec` and re-checks what the schema cannot (a stage's kind and
limits, the SAIRConfig overrides), with errors that name the offending field, e.g.
`spec.stages[1].replicas.max`.

    apiVersion: sair-ray.io/v1alpha1
    kind: PipelineAutoscaler
    spec:
      rayService: {name: imgcls}            # namespace defaults to the autoscaler's
      application: image_classification     # the Serve application in serveConfigV2
      slaMs: 1000
      cluster: {cpus: 64, memoryMb: 262144, gpus: 2}
      stages:
        - {name: preprocess, kind: cpu, replicas: {min: 1, max: 8}}
        - {name: inference, kind: gpu, gpusPerReplica: 1}
        - {name: postprocess, kubernetesDeployment: {name: post, container: app}}
      policy: {name: sair, backend: vllm, url: "http://policy-llm:8000/v1", model: ...}
      metrics: {source: prometheus, address: prom, timeoutSeconds: 10}   # or source: ray
      config: {loop: {decision_interval_s: 30}, validator: {replicas_max: 8}}
      suspend: false

A PipelineAutoscaler is written by a tenant, and the operator acts with its own service
account and environment, so what reaches outside the resource's namespace is taken from
the operator's allow-list (`OperatorTrust`, from `sair operator`'s flags), never from the
resource:

- `spec.rayService.namespace` other than the autoscaler's own is refused unless the
  operator allows that namespace (`--allow-cross-namespace NS`, or `*`);
- `spec.policy.url` (and `spec.config.policy.url`) must name one of the operator's
  policy endpoints (`--policy-endpoint NAME=URL`), by its name or its URL; the API key
  sent there is read from the environment variable the operator pairs with that endpoint
  (`--policy-api-key-env NAME=VAR`), never from one the resource names
  (`spec.config.policy.api_key_env` is refused unless it is that same variable), and no
  key at all without an endpoint; without an endpoint `policy.model` (a model file on the
  operator's disk for the embedded llama.cpp) is refused too;
- `spec.metrics.address` must name one of the operator's metrics addresses
  (`--metrics-address NAME=ADDRESS`), by name or value; left out, the metrics come from
  the RayService's own head service;
- `spec.rayService.name` and `.namespace` must be DNS-1123 labels (they make up the
  default metrics address).

The refusal is an `AutoscalerSpecError` naming the field, which the operator writes into
the resource's `.status.error`. `from_object(obj)` without a trust checks none of this:
for `sair operator --dry-run`, which reaches no cluster, endpoint or metrics address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sair_ray.config import ConfigError, SAIRConfig
from sair_ray.types import (
    ClusterResources,
    PipelineSpec,
    SpecError,
    StageAllocation,
    StageKind,
    StageSpec,
)

GROUP = "sair-ray.io"
VERSION = "v1alpha1"
PLURAL = "pipelineautoscalers"
KIND = "PipelineAutoscaler"
METRICS_SOURCES = ("ray", "prometheus", "simulator")


class AutoscalerSpecError(ValueError):
    """A PipelineAutoscaler object is invalid; the message names the object and field."""


ANY_NAMESPACE = "*"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")   # an allow-list entry's name
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _endpoint_url(url: str) -> str:
    """A policy URL as `sair_ray.policy.lm.resolve` will use it (so that two spellings of
    one endpoint compare equal)."""
    u = url.strip().rstrip("/")
    return u if u.endswith("/v1") else u + "/v1"


@dataclass(frozen=True)
class PolicyEndpoint:
    """An LLM endpoint the operator lets PipelineAutoscalers use, with the environment
    variable (of the operator) holding its API key ("" = none is sent)."""

    name: str
    url: str
    api_key_env: str = ""


@dataclass(frozen=True)
class OperatorTrust:
    """What a PipelineAutoscaler may name beyond its own namespace: the operator's
    allow-lists. The default allows nothing (same-namespace RayService, no LLM endpoint
    reached over the network, metrics from the RayService's head only)."""

    cross_namespaces: frozenset[str] = frozenset()       # RayService namespaces; "*": any
    endpoints: Mapping[str, PolicyEndpoint] = field(default_factory=dict)   # by name
    metrics_addresses: Mapping[str, str] = field(default_factory=dict)      # name -> address

    def allows_namespace(self, namespace: str) -> bool:
        return ANY_NAMESPACE in self.cross_namespaces or namespace in self.cross_namespaces

    def endpoint(self, name_or_url: str) -> PolicyEndpoint | None:
        """The allowed endpoint named `name_or_url`, or whose URL it is; None if none."""
        if name_or_url in self.endpoints:
            return self.endpoints[name_or_url]
        want = _endpoint_url(name_or_url)
        return next((e for e in self.endpoints.values() if _endpoint_url(e.url) == want),
                    None)

    def metrics_address(self, name_or_address: str) -> str | None:
        if name_or_address in self.metrics_addresses:
            return self.metrics_addresses[name_or_address]
        want = name_or_address.strip()
        return want if want in self.metrics_addresses.values() else None

    @classmethod
    def from_flags(cls, *, cross_namespaces: Iterable[str] = (),
                   endpoints: Iterable[str] = (), api_key_envs: Iterable[str] = (),
                   metrics_addresses: Iterable[str] = ()) -> OperatorTrust:
        """From `sair operator`'s flags: namespaces, `NAME=URL` endpoints, `NAME=VAR` API
        key variables of those endpoints and `NAME=ADDRESS` metrics addresses. ValueError
        names a malformed or dangling entry."""
        namespaces = frozenset(n.strip() for n in cross_namespaces)
        for n in namespaces:
            if n != ANY_NAMESPACE and not _DNS_LABEL.match(n):
                raise ValueError(f"--allow-cross-namespace {n!r}: not a namespace name (or *)")
        urls = _pairs(endpoints, "--policy-endpoint", "NAME=URL")
        for name, url in urls.items():
            if not re.match(r"^https?://[^\s/?#]+", url):
                raise ValueError(f"--policy-endpoint {name}={url}: not an http(s) URL")
        keys = _pairs(api_key_envs, "--policy-api-key-env", "NAME=VARIABLE")
        for name, var in keys.items():
            if name not in urls:
                raise ValueError(f"--policy-api-key-env {name}={var}: no --policy-endpoint "
                                 f"named {name!r}")
            if not _ENV.match(var):
                raise ValueError(f"--policy-api-key-env {name}={var}: not a variable name")
        return cls(namespaces,
                   {n: PolicyEndpoint(n, u, keys.get(n, "")) for n, u in urls.items()},
                   _pairs(metrics_addresses, "--metrics-address", "NAME=ADDRESS"))


def _pairs(items: Iterable[str], flag: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _NAME.match(name) or not value:
            raise ValueError(f"{flag} {item!r}: expected {form}")
        if name in out:
            raise ValueError(f"{flag}: {name!r} given twice")
        out[name] = value
    return out


@dataclass(frozen=True)
class PlainDeployment:
    """A stage served by a Kubernetes Deployment instead of a Serve deployment."""

    name: str
    container: str


@dataclass(frozen=True)
class StageBinding:
    """Where a pipeline stage is actuated: a Serve deployment or a plain Deployment."""

    stage: str
    serve_deployment: str | None
    plain: PlainDeployment | None


@dataclass(frozen=True)
class PolicySpec:
    name: str = "sair"


@dataclass(frozen=True)
class MetricsSpec:
    source: str = "ray"
    profile: str | None = None     # simulator profile modelling the pipeline
    address: str | None = None     # Ray cluster of the live metrics (None: the RayService's)
    timeout_s: float = 10.0        # a metrics read slower than this fails the round


@dataclass(frozen=True)
class AutoscalerSpec:
    namespace: str
    name: str
    generation: int
    rayservice_namespace: str
    rayservice_name: str
    application: str
    pipeline: PipelineSpec
    bindings: tuple[StageBinding, ...]
    policy: PolicySpec
    metrics: MetricsSpec
    config: SAIRConfig
    suspend: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any],
                    trust: OperatorTrust | None = None) -> AutoscalerSpec:
        """Read `obj`, checking what it names against the operator's `trust` (see the
        module docstring); None checks nothing (dry runs only)."""
        return _parse(obj, trust)


def _get(m: Mapping[str, Any], key: str, path: str, typ: type | tuple[type, ...],
         default: Any = ..., what: str = "") -> Any:
    if key not in m or m[key] is None:
        if default is ...:
            raise AutoscalerSpecError(f"{what}{path}.{key}: required")
        return default
    v = m[key]
    if isinstance(v, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise AutoscalerSpecError(f"{what}{path}.{key}: expected {_tname(typ)}, got {v!r}")
    if not isinstance(v, typ):
        raise AutoscalerSpecError(f"{what}{path}.{key}: expected {_tname(typ)}, got {v!r}")
    return v


def _tname(typ: type | tuple[type, ...]) -> str:
    ts = typ if isinstance(typ, tuple) else (typ,)
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "true or false"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in ts))


_NUM = (int, float)


def _range(m: Mapping[str, Any], key: str, path: str, what: str) -> tuple[Any, Any]:
    r = _get(m, key, path, dict, {}, what)
    p = f"{path}.{key}"
    return (_get(r, "min", p, int, None, what), _get(r, "max", p, int, None, what))


def _stage(s: Any, i: int, what: str) -> tuple[StageSpec, StageBinding]:
    path = f"spec.stages[{i}]"
    if not isinstance(s, Mapping):
        raise AutoscalerSpecError(f"{what}{path}: expected a mapping, got {s!r}")
    name = _get(s, "name", path, str, what=what)
    kind = _get(s, "kind", path, str, "cpu", what)
    if kind not in ("cpu", "gpu"):
        raise AutoscalerSpecError(f"{what}{path}.kind: expected 'cpu' or 'gpu', got {kind!r}")
    gpu = kind == "gpu"
    r_min, r_max = _range(s, "replicas", path, what)
    cpu_min, cpu_max = _range(s, "cpuM", path, what)
    mem_min, mem_max = _range(s, "memMb", path, what)
    init = _get(s, "initial", path, dict, {}, what)
    ip = f"{path}.initial"
    default_init = StageAllocation(1, 2000, 4096, 1.0) if gpu else StageAllocation(1, 1000, 1024)
    initial = StageAllocation(
        replicas=_get(init, "replicas", ip, int, default_init.replicas, what),
        cpu_m=_get(init, "cpuM", ip, int, default_init.cpu_m, what),
        mem_mb=_get(init, "memMb", ip, int, default_init.mem_mb, what),
        rate=float(_get(init, "rate", ip, _NUM, 1.0, what)) if gpu else 1.0)
    kw: dict[str, Any] = {"name": name, "kind": StageKind(kind), "initial": initial,
                          "replicas_min": r_min, "replicas_max": r_max}
    for key, v in (("cpu_m_min", cpu_min), ("cpu_m_max", cpu_max), ("mem_mb_min", mem_min),
                   ("mem_mb_max", mem_max)):
        if v is not None:
            kw[key] = v
    if gpu:
        kw["gpus_per_replica"] = float(_get(s, "gpusPerReplica", path, _NUM, 1.0, what))
    try:
        spec = StageSpec(**kw)
    except SpecError as e:
        raise AutoscalerSpecError(f"{what}{path}: {e}") from None
    plain_obj = _get(s, "kubernetesDeployment", path, dict, None, what)
    serve_dep = _get(s, "deployment", path, str, None, what)
    if plain_obj is not None and serve_dep is not None:
        raise AutoscalerSpecError(f"{what}{path}: set either deployment (a Serve deployment) "
                                  "or kubernetesDeployment, not both")
    plain = None
    if plain_obj is not None:
        pp = f"{path}.kubernetesDeployment"
        plain = PlainDeployment(_get(plain_obj, "name", pp, str, what=what),
                                _get(plain_obj, "container", pp, str, what=what))
        if gpu:
            raise AutoscalerSpecError(f"{what}{path}: a GPU stage's rate is set through the "
                                      "Serve deployment; kubernetesDeployment is for CPU stages")
    binding = StageBinding(name, None if plain else (serve_dep or name), plain)
    return spec, binding


def _parse(obj: Mapping[str, Any], trust: OperatorTrust | None = None) -> AutoscalerSpec:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    name = meta.get("name")
    if not name:
        raise AutoscalerSpecError("PipelineAutoscaler without metadata.name")
    what = f"PipelineAutoscaler {ns}/{name}: "
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise AutoscalerSpecError(f"{what}spec: required mapping")
    rs = _get(spec, "rayService", "spec", dict, what=what)
    rs_name = _get(rs, "name", "spec.rayService", str, what=what)
    rs_ns = _get(rs, "namespace", "spec.rayService", str, ns, what)
    if trust is not None:
        _check_rayservice(rs_name, rs_ns, ns, trust, what)
    app = _get(spec, "application", "spec", str, what=what)
    sla = _get(spec, "slaMs", "spec", _NUM, what=what)
    cl = _get(spec, "cluster", "spec", dict, {}, what)
    default_cluster = ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=2)
    cluster = ClusterResources(
        cpus=float(_get(cl, "cpus", "spec.cluster", _NUM, default_cluster.cpus, what)),
        memory_mb=float(_get(cl, "memoryMb", "spec.cluster", _NUM, default_cluster.memory_mb,
                             what)),
        gpus=float(_get(cl, "gpus", "spec.cluster", _NUM, default_cluster.gpus, what)))
    raw_stages = _get(spec, "stages", "spec", list, what=what)
    if not raw_stages:
        raise AutoscalerSpecError(f"{what}spec.stages: needs at least one stage")
    parsed = [_stage(s, i, what) for i, s in enumerate(raw_stages)]
    try:
        pipeline = PipelineSpec(name=app, stages=tuple(p[0] for p in parsed), sla_ms=sla,
                                cluster=cluster)
    except SpecError as e:
        raise AutoscalerSpecError(f"{what}spec: {e}") from None

    pol = _get(spec, "policy", "spec", dict, {}, what)
    policy_name = _get(pol, "name", "spec.policy", str, "sair", what)
    overrides = dict(_get(spec, "config", "spec", dict, {}, what))
    lm = {k: _get(pol, k, "spec.policy", str, None, what) for k in ("backend", "url", "model")}
    lm_set = {k: v for k, v in lm.items() if v is not None}
    if lm_set:
        overrides["policy"] = {**(overrides.get("policy") or {}), **lm_set}
    try:
        cfg = SAIRConfig.from_dict(overrides)
    except ConfigError as e:
        raise AutoscalerSpecError(f"{what}spec.config.{e}") from None
    if trust is not None:
        cfg = _trusted_policy(cfg, overrides, trust, set(lm_set), what)

    met = _get(spec, "metrics", "spec", dict, {}, what)
    source = _get(met, "source", "spec.metrics", str, "ray", what)
    if source not in METRICS_SOURCES:
        raise AutoscalerSpecError(f"{what}spec.metrics.source: expected one of "
                                  f"{', '.join(METRICS_SOURCES)}, got {source!r}")
    profile = _get(met, "profile", "spec.metrics", str, None, what)
    if source == "simulator" and profile is None:
        raise AutoscalerSpecError(f"{what}spec.metrics.profile: required when source is "
                                  "'simulator'")
    address = _get(met, "address", "spec.metrics", str, None, what)
    if trust is not None and address is not None:
        allowed = trust.metrics_address(address)
        if allowed is None:
            names = ", ".join(sorted(trust.metrics_addresses)) or "none"
            raise AutoscalerSpecError(
                f"{what}spec.metrics.address: {address!r} is not a metrics address this "
                f"operator allows (allowed, by name or address: {names}; the operator's "
                "--metrics-address); leave it out to read the RayService's own head")
        address = allowed
    # (a dry run, without a trust, reads the simulator and resolves no address)
    if source == "prometheus" and trust is not None and (
            address is None or not re.match(r"^https?://[^\s/?#]+", address)):
        raise AutoscalerSpecError(
            f"{what}spec.metrics.address: source 'prometheus' reads Ray Serve's metrics "
            "from a Prometheus server: name one the operator allows (an http(s) URL given "
            f"to the operator as --metrics-address NAME=URL), got {address!r}")
    timeout_s = float(_get(met, "timeoutSeconds", "spec.metrics", _NUM, 10.0, what))
    if not timeout_s > 0:
        raise AutoscalerSpecError(f"{what}spec.metrics.timeoutSeconds: must be > 0")
    generation = int(meta.get("generation") or 0)
    return AutoscalerSpec(
        namespace=ns, name=name, generation=generation, rayservice_namespace=rs_ns,
        rayservice_name=rs_name, application=app, pipeline=pipeline,
        bindings=tuple(p[1] for p in parsed), policy=PolicySpec(policy_name),
        metrics=MetricsSpec(source, profile, address, timeout_s), config=cfg,
        suspend=bool(_get(spec, "suspend", "spec", bool, False, what)))


def _check_rayservice(name: str, namespace: str, own: str, trust: OperatorTrust,
                      what: str) -> None:
    for key, v in (("name", name), ("namespace", namespace)):
        if not _DNS_LABEL.match(v):
            raise AutoscalerSpecError(f"{what}spec.rayService.{key}: {v!r} is not a "
                                      "Kubernetes name (a DNS-1123 label)")
    if namespace != own and not trust.allows_namespace(namespace):
        raise AutoscalerSpecError(
            f"{what}spec.rayService.namespace: {namespace!r} is not this "
            f"PipelineAutoscaler's namespace ({own!r}), and the operator does not allow "
            f"RayServices in {namespace!r} to be named from another namespace (an operator "
            f"started with --allow-cross-namespace {namespace} does)")


def _trusted_policy(cfg: SAIRConfig, overrides: Mapping[str, Any], trust: OperatorTrust,
                    in_policy: set[str], what: str) -> SAIRConfig:
    """`cfg` with the policy endpoint and API-key variable the operator allows: the URL
    the resource names must be an allowed endpoint (by name or URL), and the key variable
    is that endpoint's, whatever the resource says. `in_policy`: the keys the resource set
    in `spec.policy` rather than `spec.config.policy` (for the field in an error)."""

    def field_of(key: str) -> str:
        return f"spec.policy.{key}" if key in in_policy else f"spec.config.policy.{key}"

    pol = cfg.policy
    ep = None
    if pol.url:
        ep = trust.endpoint(pol.url)
        if ep is None:
            names = ", ".join(sorted(trust.endpoints)) or "none"
            raise AutoscalerSpecError(
                f"{what}{field_of('url')}: {pol.url!r} is not a policy endpoint this operator "
                f"allows (allowed, by name or URL: {names}; the operator's "
                "--policy-endpoint)")
    if ep is None and pol.model:
        raise AutoscalerSpecError(
            f"{what}{field_of('model')}: {pol.model!r} would be a model file on the "
            "operator's disk (no policy endpoint is named); the embedded model is the "
            "operator's to choose, so leave model out or name a --policy-endpoint")
    want_env = ep.api_key_env if ep is not None else ""
    raw = overrides.get("policy")
    asked = raw.get("api_key_env") if isinstance(raw, Mapping) else None
    if asked is not None and asked != want_env:
        raise AutoscalerSpecError(
            f"{what}spec.config.policy.api_key_env: the API key's variable is the "
            "operator's to choose (--policy-api-key-env NAME=VAR pairs one with each "
            "endpoint); a PipelineAutoscaler may not name one")
    return cfg.replace(**{"policy.url": ep.url if ep is not None else "",
                          "policy.api_key_env": want_env})
