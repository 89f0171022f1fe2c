"""Operator mode: the `PipelineAutoscaler` custom resource and `sair operator`.

- `spec`: the resource's schema as SAIR reads it (deploy/crd.yaml is what the apiserver
  enforces), with errors naming the field;
- `runner`: one PipelineAutoscaler wired to a KubeRayBackend, a policy and a Controller;
- `loop`: the watch loop running one controller per resource;
- `metrics`: metrics sources (live Ray metrics, the simulator);
- `dry_run`: the patches the operator would send, computed without a cluster.
"""

from sair_ray.operator.spec import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AutoscalerSpec,
    AutoscalerSpecError,
)

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "AutoscalerSpec", "AutoscalerSpecError"]
