"""`sair operator --dry-run`: the patches the operator would send, without a cluster.

It reads a RayService and a PipelineAutoscaler from YAML files (by default the samples in
deploy/samples/), holds the RayService in memory, observes a simulator of the pipeline
(`spec.metrics.profile` or `--profile`) and runs the autoscaler's controller for a few
rounds in virtual time. The patches are computed by exactly the code a live operator
runs (serveConfigV2 edit, resourceVersion, merge-patch body); only the transport differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sair_ray.backends.kubernetes import (
    InMemoryObject,
    KubernetesBackendError,
    ObjectStore,
    PatchRecord,
)
from sair_ray.operator.metrics import MetricsSourceError
from sair_ray.operator.runner import RunnerError, build_runner
from sair_ray.operator.spec import KIND, AutoscalerSpec, AutoscalerSpecError


class DryRunError(ValueError):
    """The dry run's inputs are unusable; the message names the file or field."""


# An LLM policy would call the manifest's LM endpoint, usually a service inside the
# cluster; the dry run decides with this baseline instead unless asked for the LLM.
STAND_IN_POLICY = "hpa"


def dry_run_policy(manifest_policy: str, requested: str | None) -> tuple[str, str]:
    """The policy a dry run uses, and a note saying why when it is not the manifest's."""
    from sair_ray import registry

    if requested:
        return requested, ""
    if manifest_policy in registry.SAIR_POLICIES:
        return STAND_IN_POLICY, (
            f"policy {manifest_policy!r} calls its LM endpoint, which a dry run does not "
            f"use; deciding with {STAND_IN_POLICY!r} instead (--policy {manifest_policy} "
            "calls it)")
    return manifest_policy, ""


@dataclass(frozen=True)
class DryRunRound:
    round: int
    time: float
    source: str
    arrival_rps: float
    p99_ms: float
    action: Mapping[str, Any]
    error: str
    patches: tuple[PatchRecord, ...]


@dataclass(frozen=True)
class DryRunResult:
    spec: AutoscalerSpec
    policy: str
    note: str
    rounds: list[DryRunRound]
    rayservice: InMemoryObject


def load_manifest(path: Path, kind: str) -> dict[str, Any]:
    """The single object of `kind` in a (possibly multi-document) YAML file."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except OSError as e:
        raise DryRunError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise DryRunError(f"{path}: not valid YAML: {e}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    if len(found) != 1:
        raise DryRunError(f"{path}: expected exactly one {kind}, found {len(found)}")
    return found[0]


def _no_plain_deployments(namespace: str, name: str) -> ObjectStore:
    raise DryRunError(f"the dry run holds only the RayService; stage Deployment "
                      f"{namespace}/{name} (kubernetesDeployment) cannot be simulated")


def dry_run(rayservice: Path, autoscaler: Path, *, rounds: int = 5,
            policy: str | None = None, profile: str | None = None) -> DryRunResult:
    rs = load_manifest(rayservice, "RayService")
    pa = load_manifest(autoscaler, KIND)
    try:
        spec = AutoscalerSpec.from_object(pa)
    except AutoscalerSpecError as e:
        raise DryRunError(f"{autoscaler}: {e}") from None
    rs_name = (rs.get("metadata") or {}).get("name")
    if rs_name != spec.rayservice_name:
        raise DryRunError(f"{autoscaler} names RayService {spec.rayservice_name!r} but "
                          f"{rayservice} holds {rs_name!r}")
    profile = profile or spec.metrics.profile
    if profile is None:
        raise DryRunError(f"{autoscaler}: the dry run simulates the pipeline's load; set "
                          "spec.metrics.profile or pass --profile")
    rs_ns = (rs.get("metadata") or {}).get("namespace") or spec.rayservice_namespace
    store = InMemoryObject(rs, ref=f"rayservices.ray.io/{rs_ns}/{rs_name}")
    policy, note = dry_run_policy(spec.policy.name, policy)
    try:
        runner = build_runner(spec, now=0.0, rayservice=store,
                              deployment_store=_no_plain_deployments, policy_name=policy,
                              profile=profile)
    except (RunnerError, MetricsSourceError, KubernetesBackendError) as e:
        raise DryRunError(str(e)) from None
    out = []
    try:
        for i in range(rounds):
            now = (i + 1) * runner.interval
            d = runner.tick(now)
            out.append(DryRunRound(
                round=i + 1, time=now, source=d.source if d else "error",
                arrival_rps=float(d.context.arrival_rate) if d else 0.0,
                p99_ms=float(d.context.p99_ms) if d else float("nan"),
                action=d.action.to_dict() if d else {},
                error=(d.error if d else runner.last_error),
                patches=tuple(runner.new_patches) if d else ()))
    finally:
        runner.close()
    return DryRunResult(spec, policy, note, out, store)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as `|` blocks, as they appear in manifests."""


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_LiteralDumper.add_representer(str, _str)


def render_patch(p: PatchRecord) -> str:
    """A patch as `kubectl patch --type merge` would take it, in YAML."""
    return yaml.dump(p.body, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False)
