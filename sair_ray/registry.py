"""Every policy by name: how to build it, whether it learns, and where it may run.

The bench, the live controller, the operator and the CLI all ask this table; no other
module lists policy names. It imports both `sair_ray.policy` and `sair_ray.baselines` and
is imported by neither, so the two packages need no import cycle between them.

| name | learns | runs | policy |
|---|---|---|---|
| `sair` | yes | anywhere | the LLM policy (`policy.llm.LLMPolicy`), behind `policy.fallback` |
| `sair-retrieval` | yes | anywhere | the LLM replaced by "replay the best retrieved episode" |
| `static`, `hpa`, `vpa` | no | anywhere | baselines (`sair_ray.baselines`) |
| `threshold`, `ray_serve` | no | anywhere | baselines (`sair_ray.baselines`) |
| `oracle`, `model-oracle` | no | simulator | clairvoyant: M/G/c model of the future load |
| `hindsight-oracle` | no | simulator | clairvoyant: plays candidates on forks of the run |

A policy that learns runs the full SAIR loop (exploration probes, an experience memory);
the others run through the same controller with both switched off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sair_ray.baselines import HPA, VPA, Oracle, RayServeDefault, Static, Threshold
from sair_ray.config import SAIRConfig
from sair_ray.policy.base import Policy
from sair_ray.profiles import Profile
from sair_ray.types import PipelineSpec
from sair_ray.workloads import Workload


class PolicyError(ValueError):
    """An unknown policy name, or a policy asked for where it cannot run."""


# (config, pipeline, **params) -> Policy; params are the policy's own constructor options
Factory = Callable[..., Policy]


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    build: Factory
    learns: bool                  # SAIR methods: explore and remember; baselines do neither
    reads: tuple[str, ...] = ()   # simulator knowledge it takes: "profile", "workload"
    simulator_only: bool = False  # needs what only a simulator knows (the future workload)
    opt_in: bool = False          # left out of the default bench grid (slow to run)

    def check_runs_live(self) -> PolicyInfo:
        """This entry, or PolicyError if it can only run on the simulator."""
        if self.simulator_only:
            raise PolicyError(f"policy {self.name!r} is clairvoyant (it reads the future "
                              "workload) and exists only for simulator benchmarks")
        return self


def _sair(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
    from sair_ray.policy.fallback import WithFallback
    from sair_ray.policy.llm import LLMPolicy  # DSPy: imported only when the LLM is used

    llm = LLMPolicy(cfg, pipeline, **params)
    if cfg.policy.fallback == "hold":
        return llm
    return WithFallback(llm, make_policy(cfg.policy.fallback, cfg, pipeline=pipeline))


def _retrieval(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
    from sair_ray.policy.retrieval_only import RetrievalOnlyPolicy

    return RetrievalOnlyPolicy(cfg.validator, **params)


def _static(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
    return Static(**params)


def _bounded(cls: Callable[..., Policy]) -> Factory:
    """A baseline that plans within the validator's limits (given params override)."""
    def build(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
        return cls(**{"validator": cfg.validator} | params)
    return build


def _vpa(cfg: SAIRConfig, pipeline: PipelineSpec, *, profile: Profile | None = None,
         **params: Any) -> Policy:
    # A profile tells VPA each stage's memory working set, which it cannot measure.
    if profile is not None and "memory_need_mb" not in params:
        params["memory_need_mb"] = {s.name: m.mem_need_mb for s, m in zip(
            profile.pipeline.stages, profile.models, strict=True) if m.mem_need_mb > 0}
    return VPA(**{"validator": cfg.validator} | params)


def _oracle(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
    missing = [k for k in ("profile", "workload") if k not in params]
    if missing:
        raise PolicyError(f"the oracle baseline needs {' and '.join(missing)} "
                          "(it plans from the profile and the future workload)")
    defaults: dict[str, Any] = {"validator": cfg.validator, "prices": cfg.cost,
                                "seed": cfg.seed}
    return Oracle(**defaults | params)


def _hindsight(cfg: SAIRConfig, pipeline: PipelineSpec, **params: Any) -> Policy:
    from sair_ray.baselines.hindsight import HindsightOracle  # imports the simulator

    missing = [k for k in ("profile", "workload") if k not in params]
    if missing:
        raise PolicyError(f"the hindsight oracle needs {' and '.join(missing)} "
                          "(it replays the run's simulation)")
    # the seed is the bench's simulation seed: the shadow run must see the same requests
    defaults: dict[str, Any] = {"validator": cfg.validator, "prices": cfg.cost,
                                "seed": cfg.seed, "cost_model": cfg.reward.cost_model}
    return HindsightOracle(**defaults | params)


POLICIES: dict[str, PolicyInfo] = {p.name: p for p in (
    PolicyInfo("sair", _sair, learns=True),
    PolicyInfo("sair-retrieval", _retrieval, learns=True),
    PolicyInfo("static", _static, learns=False),
    PolicyInfo("hpa", _bounded(HPA), learns=False),
    PolicyInfo("vpa", _vpa, learns=False, reads=("profile",)),
    PolicyInfo("threshold", _bounded(Threshold), learns=False),
    PolicyInfo("ray_serve", _bounded(RayServeDefault), learns=False),
    PolicyInfo("oracle", _oracle, learns=False, reads=("profile", "workload"),
               simulator_only=True),
    # tens of simulated alternatives a round: ~1 s a round, so only when asked for
    PolicyInfo("hindsight-oracle", _hindsight, learns=False, reads=("profile", "workload"),
               simulator_only=True, opt_in=True),
)}
# `model-oracle` says what `oracle` is (a queueing model); `oracle` stays the name results
# and saved tables carry.
ALIASES = {"hpa-cpu": "hpa", "hpa_cpu": "hpa", "ray-serve": "ray_serve",
           "rayserve": "ray_serve", "model-oracle": "oracle", "model_oracle": "oracle",
           "hindsight_oracle": "hindsight-oracle", "hindsight": "hindsight-oracle"}

SAIR_POLICIES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if p.learns)
BASELINES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if not p.learns)
DEFAULT_BASELINES: tuple[str, ...] = tuple(n for n in BASELINES if not POLICIES[n].opt_in)
LIVE_POLICIES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if not p.simulator_only)


def get(name: str) -> PolicyInfo:
    """The entry of `name` (case and the usual aliases tolerated); PolicyError if unknown."""
    info = POLICIES.get(ALIASES.get(name.lower(), name.lower()))
    if info is None:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return info


def check_params(info: PolicyInfo, params: dict[str, Any]) -> None:
    """PolicyError unless the policy takes `params` as its own settings: a baseline's
    constructor options, checked by building it once (names and values); a SAIR policy
    takes its settings from the config, not from here."""
    if not params:
        return
    if info.learns:
        raise PolicyError(f"policy {info.name!r} takes its settings from the SAIR config, "
                          f"not as policy parameters (got {', '.join(sorted(params))})")
    try:
        # the baselines' factories read the config's validator only, not the pipeline
        info.build(SAIRConfig(), None, **params)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"policy {info.name!r}: bad parameters {params}: {e}") from None


def get_live(name: str) -> PolicyInfo:
    """The entry of `name` for a live host (Ray Serve, Kubernetes): no simulator-only ones."""
    try:
        return get(name).check_runs_live()
    except PolicyError:
        if name.lower() in POLICIES or name.lower() in ALIASES:
            raise
        raise PolicyError(f"unknown policy {name!r}; choose one of "
                          f"{', '.join(LIVE_POLICIES)}") from None


def make_policy(name: str, cfg: SAIRConfig, *, pipeline: PipelineSpec,
                profile: Profile | None = None, workload: Workload | None = None,
                **params: Any) -> Policy:
    """A policy by name. A simulator passes what it knows, the `profile` and the future
    `workload`; each policy takes what it `reads` of them. `params` go to its constructor:
    `endpoint`, `threads` for the LLM; a baseline's own settings. Baselines get the
    config's validator (and the oracle its prices and seed) unless `params` name theirs."""
    info = get(name)
    known = {"profile": profile, "workload": workload}
    return info.build(cfg, pipeline, **{k: known[k] for k in info.reads
                                        if known[k] is not None}, **params)


__all__ = ["ALIASES", "BASELINES", "DEFAULT_BASELINES", "LIVE_POLICIES", "POLICIES",
           "SAIR_POLICIES", "PolicyError", "PolicyInfo", "check_params", "get", "get_live",
           "make_policy"]
