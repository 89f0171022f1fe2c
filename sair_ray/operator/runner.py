"""One PipelineAutoscaler at work: its KubeRayBackend, its policy, its Controller, its clock.

`build_runner` wires an `AutoscalerSpec` to the objects it acts on (given as
`ObjectStore`s, so the same wiring serves the Kubernetes API and a dry run) and returns a
`ResourceRunner` whose `tick(now)` is one SAIR round. The runner keeps its own schedule
(`next_at`); the operator loop decides when to call it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sair_ray.backends.kubernetes import (
    DeploymentTarget,
    KubeRayBackend,
    MetricsSource,
    ObjectStore,
    PatchRecord,
    ServeTarget,
)
from sair_ray.controller import Controller
from sair_ray.embedding import phi_dim
from sair_ray.live.paths import read_json, write_json_atomic
from sair_ray.operator.metrics import RayMetrics, SimulatedMetrics
from sair_ray.operator.spec import AutoscalerSpec
from sair_ray.policy.base import Policy
from sair_ray.types import Decision

log = logging.getLogger(__name__)


class RunnerError(RuntimeError):
    """A PipelineAutoscaler cannot be started (policy, metrics or objects unavailable)."""


def make_policy(spec: AutoscalerSpec, name: str | None = None) -> tuple[Policy, bool]:
    """The policy named in the spec (or `name`), and whether it learns: SAIR's policies
    explore and remember; baselines neither explore nor learn (as in `sair bench`)."""
    from sair_ray.policy import SAIR_POLICIES
    from sair_ray.policy import make_policy as make_named_policy

    name = name or spec.policy.name
    key = name.lower()
    if key == "oracle":
        raise RunnerError("policy 'oracle' is clairvoyant (it reads the future workload) and "
                          "exists only for simulator benchmarks")
    try:
        return make_named_policy(key, spec.config, pipeline=spec.pipeline), \
            key in SAIR_POLICIES
    except (ValueError, ImportError) as e:
        raise RunnerError(f"policy {name!r}: {e}") from None


def make_metrics(spec: AutoscalerSpec, *, start: float, allocation: Mapping[str, Any],
                 profile: str | None = None) -> MetricsSource:
    """The spec's metrics source; `profile` forces the simulator with that profile."""
    if profile is not None or spec.metrics.source == "simulator":
        return SimulatedMetrics(profile or spec.metrics.profile or "", spec.pipeline.stage_names,
                                start=start, allocation=allocation, seed=spec.config.seed)
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
    """A Controller bound to one PipelineAutoscaler, ticking every decision interval."""

    spec: AutoscalerSpec
    backend: KubeRayBackend
    controller: Controller
    next_at: float
    last: Decision | None = None
    last_error: str = ""
    patches_seen: int = 0
    new_patches: list[PatchRecord] = field(default_factory=list)
    state_path: Path | None = None

    @property
    def interval(self) -> float:
        return self.spec.config.loop.decision_interval_s

    def due(self, now: float) -> bool:
        return not self.spec.suspend and now >= self.next_at

    def tick(self, now: float) -> Decision | None:
        """One round. Errors (API down, conflicts that never settle) are logged and kept
        for the status; the next round is scheduled either way."""
        self.next_at += self.interval
        if self.next_at <= now:  # fell behind (slow API, long policy call): skip, no burst
            self.next_at = now + self.interval
        try:
            self.last = self.controller.tick(now)
            self.last_error = ""
        except Exception as e:  # one bad round must not stop the operator
            log.exception("%s/%s: round failed", *self.spec.key)
            self.last_error = f"{type(e).__name__}: {e}"
            self.new_patches = self.backend.patches[self.patches_seen:]  # any that landed
            self.patches_seen = len(self.backend.patches)
            return None
        self.new_patches = self.backend.patches[self.patches_seen:]
        self.patches_seen = len(self.backend.patches)
        if self.state_path is not None:  # a restarted operator resumes from here
            write_json_atomic(self.state_path, self.controller.state())
        return self.last

    def status(self, now_iso: str) -> dict[str, Any]:
        """The `.status` the operator writes back to the PipelineAutoscaler."""
        c = self.controller.counters
        st: dict[str, Any] = {"observedGeneration": self.spec.generation,
                              "rounds": c.rounds, "lastRoundTime": now_iso,
                              "error": self.last_error}
        if self.last is not None:
            st["lastSource"] = self.last.source
            st["lastAction"] = self.last.action
            p99 = self.last.context.get("p99_ms")
            # JSON has no NaN (no request finished in the window): report it as unknown.
            st["p99Ms"] = p99 if isinstance(p99, int | float) and math.isfinite(p99) else None
        if self.new_patches:
            st["lastPatch"] = [str(ch) for p in self.new_patches for ch in p.changes]
        return st

    def close(self) -> None:
        self.controller.close()
        if self.controller.memory is not None:
            self.controller.memory.close()


def build_runner(spec: AutoscalerSpec, *, now: float, rayservice: ObjectStore | None,
                 deployment_store: Callable[[str, str], ObjectStore],
                 data_dir: Path | None = None, policy_name: str | None = None,
                 profile: str | None = None) -> ResourceRunner:
    """Everything one PipelineAutoscaler needs. With a `data_dir`, the controller's state
    and decision log live in `resource_dir(data_dir, ns, name)` and SAIR's policies learn
    into its `memory/`; a rebuilt or restarted runner resumes from them."""
    policy, learns = make_policy(spec, policy_name)
    backend = make_backend(spec, rayservice, deployment_store)
    # A simulator starts from what the cluster declares, so both agree from round one.
    backend.metrics = make_metrics(spec, start=now, allocation=backend.allocation(),
                                   profile=profile)
    memory = None
    log_path = state_path = None
    if data_dir is not None:
        home = resource_dir(data_dir, *spec.key)
        log_path, state_path = str(home / "decisions.jsonl"), home / "state.json"
        if learns:
            from sair_ray.memory import ExperienceMemory

            memory = ExperienceMemory(home / "memory", phi_dim(len(spec.pipeline.stages)),
                                      spec.config.memory, loo_k=spec.config.retrieval.loo_k)
    controller = Controller(backend, policy, spec.config, memory=memory, log_path=log_path,
                            explore=learns, learn=learns)
    if state_path is not None:
        _restore(controller, state_path)
    return ResourceRunner(spec, backend, controller,
                          next_at=now + spec.config.loop.decision_interval_s,
                          state_path=state_path)


def resource_dir(data_dir: Path, namespace: str, name: str) -> Path:
    """`<data dir>/k8s/<namespace>/<name>/`: memory/, state.json, decisions.jsonl."""
    return Path(data_dir) / "k8s" / namespace / name


def _restore(controller: Controller, path: Path) -> None:
    """Resume epsilon, frontiers and cooldowns from the last run, if they still fit."""
    state = read_json(path)
    if state is None:
        return
    try:
        controller.restore(state)
    except (KeyError, TypeError, ValueError) as e:
        log.warning("%s: saved controller state unusable (%r); starting afresh", path, e)
