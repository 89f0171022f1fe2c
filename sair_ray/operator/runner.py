"""One PipelineAutoscaler at work: its KubeRayBackend, its policy, its Controller, its clock.

`build_runner` wires an `AutoscalerSpec` to the objects it acts on (given as
`ObjectStore`s, so the same wiring serves the Kubernetes API and a dry run) and returns a
`ResourceRunner` whose `tick(now)` is one round of its controller `Session`. The runner
keeps its own schedule (a `RoundTimer`); the operator loop decides when to call it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sair_ray import registry
from sair_ray.backends.kubernetes import (
    DeploymentTarget,
    KubeRayBackend,
    KubernetesUnavailable,
    ObjectStore,
    PatchRecord,
    ServeTarget,
)
from sair_ray.backends.metrics import MetricsSource, WallWindows
from sair_ray.controller import Controller
from sair_ray.decision import Decision
from sair_ray.files import ControllerFiles, path_component
from sair_ray.operator.metrics import RayMetrics, ServePrometheusMetrics, SimulatedMetrics
from sair_ray.operator.spec import AutoscalerSpec
from sair_ray.session import RoundTimer, Session

log = logging.getLogger(__name__)


class RunnerError(RuntimeError):
    """A PipelineAutoscaler cannot be started (policy, metrics or objects unavailable)."""


def policy_of(spec: AutoscalerSpec, name: str | None = None) -> registry.PolicyInfo:
    """The registry's entry of the policy named in the spec (or `name`)."""
    try:
        return registry.get_live(name or spec.policy.name)
    except registry.PolicyError as e:
        raise RunnerError(str(e)) from None


def make_metrics(spec: AutoscalerSpec, *, start: float, allocation: Mapping[str, Any],
                 profile: str | None = None) -> MetricsSource:
    """The spec's metrics source; `profile` forces the simulator with that profile."""
    if profile is not None or spec.metrics.source == "simulator":
        return SimulatedMetrics(profile or spec.metrics.profile or "", spec.pipeline.stage_names,
                                start=start, allocation=allocation, seed=spec.config.seed)
    if spec.metrics.source == "prometheus":
        assert spec.metrics.address is not None  # the spec refuses prometheus without one
        return ServePrometheusMetrics(
            spec.application, {b.stage: b.serve_deployment for b in spec.bindings
                               if b.serve_deployment is not None},
            url=spec.metrics.address, timeout_s=spec.metrics.timeout_s)
    address = spec.metrics.address or (
        f"ray://{spec.rayservice_name}-head-svc.{spec.rayservice_namespace}.svc:10001")
    return RayMetrics(spec.application, spec.pipeline, address=address,
                      timeout_s=spec.metrics.timeout_s)


def make_backend(spec: AutoscalerSpec, rayservice: ObjectStore | None,
                 deployment_store: Callable[[str, str], ObjectStore],
                 metrics: MetricsSource | None = None) -> KubeRayBackend:
    """`deployment_store(namespace, name)` opens a plain Deployment of a CPU stage."""
    serve = {b.stage: ServeTarget(spec.application, b.serve_deployment)
             for b in spec.bindings if b.serve_deployment is not None}
    plain = {b.stage: DeploymentTarget(deployment_store(spec.namespace, b.plain.name),
                                       b.plain.container)
             for b in spec.bindings if b.plain is not None}
    return KubeRayBackend(spec.pipeline, rayservice if serve else None, metrics, serve=serve,
                          deployments=plain)


@dataclass
class ResourceRunner:
    """A controller session bound to one PipelineAutoscaler, ticking every interval."""

    spec: AutoscalerSpec
    backend: KubeRayBackend
    session: Session
    timer: RoundTimer
    last: Decision | None = None
    last_error: str = ""
    rounds_failed: int = 0
    patches_seen: int = 0
    new_patches: list[PatchRecord] = field(default_factory=list)

    @property
    def controller(self) -> Controller:
        return self.session.controller

    @property
    def interval(self) -> float:
        return self.timer.interval

    @property
    def next_at(self) -> float:
        return self.timer.next_at

    def due(self, now: float) -> bool:
        return not self.spec.suspend and self.timer.due(now)

    def tick(self, now: float) -> Decision | None:
        """One round. Errors (API down, conflicts that never settle) are logged and kept
        for the status; the next round is scheduled either way."""
        self.timer.advance(now)
        d: Decision | None = None
        try:
            d = self.session.tick(now)  # saved: a restarted operator resumes from here
            self.last, self.last_error = d, ""
        except Exception as e:  # one bad round must not stop the operator
            self.rounds_failed += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if isinstance(e, KubernetesUnavailable):  # a timeout: the message says it all
                log.warning("%s/%s: round failed: %s", *self.spec.key, self.last_error)
            else:
                log.exception("%s/%s: round failed", *self.spec.key)
        # the patches that landed in this round (even a failed one), of those still kept
        fresh = min(self.backend.patch_count - self.patches_seen, len(self.backend.patches))
        self.new_patches = list(self.backend.patches)[-fresh:] if fresh > 0 else []
        self.patches_seen = self.backend.patch_count
        return d

    def status(self, now_iso: str) -> dict[str, Any]:
        """The `.status` the operator writes back to the PipelineAutoscaler."""
        c = self.controller.counters
        st: dict[str, Any] = {"observedGeneration": self.spec.generation,
                              "rounds": c.rounds, "roundsFailed": self.rounds_failed,
                              "lastRoundTime": now_iso, "error": self.last_error}
        if self.last is not None:
            st["lastSource"] = self.last.source
            st["lastAction"] = self.last.action.to_dict()
            p99 = self.last.context.p99_ms
            # JSON has no NaN (no request finished in the window): report it as unknown.
            st["p99Ms"] = p99 if isinstance(p99, int | float) and math.isfinite(p99) else None
        if self.new_patches:
            st["lastPatch"] = [str(ch) for p in self.new_patches for ch in p.changes]
        return st

    def close(self) -> None:
        self.session.close()


def build_runner(spec: AutoscalerSpec, *, now: float, rayservice: ObjectStore | None,
                 deployment_store: Callable[[str, str], ObjectStore],
                 data_dir: Path | None = None, policy_name: str | None = None,
                 profile: str | None = None,
                 wall_offset: Callable[[], float] | None = None) -> ResourceRunner:
    """Everything one PipelineAutoscaler needs. With a `data_dir`, the controller's state
    and decision log live in `resource_dir(data_dir, ns, name)` and SAIR's policies learn
    into its `memory/`; a rebuilt or restarted runner resumes from them. `wall_offset`:
    the operator's `SteadyClock.wall_offset`, so that live metrics (stamped with the wall
    clock) are read at the right times after the system clock has stepped."""
    info = policy_of(spec, policy_name)
    try:
        policy = info.build(spec.config, spec.pipeline)
    except (ValueError, ImportError) as e:
        raise RunnerError(f"policy {policy_name or spec.policy.name!r}: {e}") from None
    backend = make_backend(spec, rayservice, deployment_store)
    # A simulator starts from what the cluster declares, so both agree from round one.
    metrics = make_metrics(spec, start=now, allocation=backend.allocation(), profile=profile)
    if wall_offset is not None and not isinstance(metrics, SimulatedMetrics):
        metrics = WallWindows(metrics, wall_offset)   # the simulator keeps the round times
    backend.metrics = metrics
    files = (ControllerFiles.in_dir(resource_dir(data_dir, *spec.key))
             if data_dir is not None else ControllerFiles())
    session = Session(backend, policy, spec.config, learns=info.learns,
                      files=files,
                      meta={"resource": "/".join(spec.key), "policy": info.name})
    dl = spec.config.decision_log
    session.controller.log.set_rotation(dl.max_bytes, dl.max_files)
    return ResourceRunner(spec, backend, session,
                          RoundTimer.starting(now, spec.config.loop.decision_interval_s))


def resource_dir(data_dir: Path, namespace: str, name: str) -> Path:
    """`<data dir>/k8s/<namespace>/<name>/`, laid out as `ControllerFiles` says (each name
    one path component: `sair_ray.files.path_component`)."""
    return Path(data_dir) / "k8s" / path_component(namespace) / path_component(name)
