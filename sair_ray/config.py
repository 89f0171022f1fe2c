"""SAIRConfig: every constant of docs/algorithm.md §1-§9, with its default, range and meaning.

The config is a tree of frozen dataclasses. Each field carries its allowed range and a
one-line help text in its metadata; `from_dict` checks every key against them, so an
unknown key, a wrong type or an out-of-range value is an error that names the key
(`reward.w_L`) and what is allowed. The same metadata generates the docs' configuration
reference, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class _Validated:
    """Checks and coerces every field on construction, so direct construction is as safe
    as loading from YAML. `_key` is the section's dotted prefix in error messages."""

    _key: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            key = f"{self._key}.{f.name}" if self._key else f.name
            value = _coerce(getattr(self, f.name), hints[f.name], key, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Constraints between fields of one section."""


def _opt(default: Any, help: str, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None, lo_open: bool = False) -> Any:
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LoopConfig(_Validated):
    """docs/algorithm.md §1: the decision loop."""

    _key = "loop"

    decision_interval_s: float = _opt(30.0, "Seconds between decision rounds.", 1, 3600)
    settle_s: float = _opt(
        10.0, "Seconds after an action before its measurement window starts.", 0, 3600)


@dataclass(frozen=True)
class RewardConfig(_Validated):
    """docs/algorithm.md §3: reward, Pareto shaping, proactive bonus, positive-only memory
    filter."""

    _key = "reward"

    w_L: float = _opt(0.7, "Latency weight (Pareto weight and reward weight).", 0, 1)
    w_C: float = _opt(0.3, "Cost weight; w_L + w_C must be 1.", 0, 1)
    kappa: float = _opt(1.0, "SLA penalty scale.", 0, 3)
    penalty: str = _opt("quadratic", "SLA penalty shape (ablation: linear).",
                        choices=("quadratic", "linear"))
    beta: float = _opt(0.2, "Proactive-bonus scale (ablation 'no bonus': 0).", 0, 1)
    reward_threshold: float = _opt(
        0.0, "Experiences with R above this are stored.", -3, 3)
    store_all: bool = _opt(False, "Store every experience (ablation), not only R > threshold.")
    global_frontier: bool = _opt(
        False, "One Pareto frontier for all loads instead of one per arrival-rate bucket.")
    bucket_base: float = _opt(
        1.25, "Arrival-rate bucket ratio: b = floor(log(lambda) / log(bucket_base)).",
        1, 100, lo_open=True)
    cost_model: str = _opt("effective", "Cost rate the reward sees (docs/algorithm.md §9).",
                           choices=("effective", "billable"))

    def _check(self) -> None:
        if not math.isclose(self.w_L + self.w_C, 1.0, abs_tol=1e-9):
            raise ConfigError(
                f"reward.w_L + reward.w_C must equal 1 (got {self.w_L} + {self.w_C}); the "
                "Pareto distance and the reward bounds assume weights that sum to 1")


@dataclass(frozen=True)
class RetrievalConfig(_Validated):
    """docs/algorithm.md §4: surprisal-based experience selection."""

    _key = "retrieval"

    K: int = _opt(15, "Experiences shown to the policy per round (0 = no ICL).", 0, 200)
    n_candidates: int = _opt(64, "FAISS nearest neighbours considered.", 1, 4096)
    loo_k: int = _opt(10, "Neighbours used for the leave-one-out reward estimate.", 1, 256)
    lambda_div: float = _opt(0.1, "Diversity regularisation of the greedy selection.", 0, 10)
    selector: str = _opt("surprisal", "Selection rule (ablations: similarity, random, none).",
                         choices=("surprisal", "similarity", "random", "none"))

    def _check(self) -> None:
        if self.K > self.n_candidates:
            raise ConfigError(f"retrieval.K ({self.K}) must be <= "
                              f"retrieval.n_candidates ({self.n_candidates})")


@dataclass(frozen=True)
class MemoryConfig(_Validated):
    """docs/algorithm.md §4: experience memory (Parquet + FAISS)."""

    _key = "memory"

    path: str = _opt("sair-data/memory", "Directory holding the memory of each app.")
    index_exact_max: int = _opt(
        100_000, "Exact IndexFlatL2 up to this many entries, HNSW beyond.", 1, 10**9)
    segment_rows: int = _opt(
        4096, "Journal rows compacted into one immutable Parquet segment.", 1, 10**7)
    fsync: bool = _opt(
        True, "fsync the journal on every add (survives power loss, not just a crash).")
    max_experiences: int = _opt(
        50_000, "Cap on stored experiences; above it the memory is compacted to 90 % of the "
        "cap, keeping Pareto-frontier and high-surprisal episodes.", 100, 10**9)


@dataclass(frozen=True)
class ExplorationConfig(_Validated):
    """docs/algorithm.md §5: epsilon-greedy forced probes."""

    _key = "exploration"

    epsilon_0: float = _opt(0.15, "Initial probe probability.", 0, 1)
    epsilon_decay: float = _opt(0.95, "Per-round decay factor.", 0, 1)
    epsilon_min: float = _opt(0.05, "Floor of the probe probability.", 0, 1)
    safe: bool = _opt(False, "Probes only add capacity and never resize a stage's only "
                      "replica (a restart); a production guard, docs/algorithm.md §5 probes both "
                      "ways.")

    def _check(self) -> None:
        if self.epsilon_min > self.epsilon_0:
            raise ConfigError(f"exploration.epsilon_min ({self.epsilon_min}) must be <= "
                              f"exploration.epsilon_0 ({self.epsilon_0})")


@dataclass(frozen=True)
class PolicyConfig(_Validated):
    """docs/algorithm.md §6: the policy LLM."""

    _key = "policy"

    temperature: float = _opt(1.0, "Sampling temperature.", 0, 2)
    llm_timeout_s: float = _opt(20.0, "A reply later than this is a no-op.", 0.1, 600)
    backend: str = _opt("llamacpp", "LM backend.", choices=("llamacpp", "vllm", "openai"))
    model: str = _opt("", "Model name or path ('' = the backend's default).")
    url: str = _opt("", "OpenAI-compatible endpoint for the 'vllm' and 'openai' backends.")
    api_key_env: str = _opt("OPENAI_API_KEY", "Environment variable holding the API key.")
    decoding: str = _opt("candidates", "'candidates': the reply must be one of the round's "
                         "candidate actions (schema-constrained; suits small models); "
                         "'free': any action in the docs/algorithm.md §6 schema.",
                         choices=("candidates", "free"))
    prompt_episodes: int = _opt(0, "Retrieved episodes shown in the prompt (highest "
                                "selection gain first): 0 = auto (4 for the embedded "
                                "llama.cpp model, whose prompt time dominates; all K "
                                "otherwise).", 0, 1000)
    fallback: str = _opt("hold", "What a round does when the LLM fails (late, down, "
                         "unparseable reply): 'hold' keeps the current allocation; a "
                         "baseline name lets that rule decide the round instead.",
                         choices=("hold", "threshold", "hpa", "ray_serve", "static"))


@dataclass(frozen=True)
class ValidatorConfig(_Validated):
    """docs/algorithm.md §7: the action validator (paper Appendix D)."""

    _key = "validator"

    max_replica_step: int = _opt(2, "Max replica change per step.", 1, 64)
    max_cpu_step_m: int = _opt(500, "Max CPU change per step (millicores).", 1, 64_000)
    max_mem_step_mb: int = _opt(256, "Max memory change per step (MB).", 1, 1_048_576)
    max_rate_step: float = _opt(0.2, "Max GPU rate change per step.", 0.01, 1)
    rate_min: float = _opt(0.1, "Lowest GPU rate ratio.", 0.01, 1)
    rate_max: float = _opt(1.0, "Highest GPU rate ratio.", 0.01, 1)
    replicas_min: int = _opt(1, "Fewest replicas per stage.", 0, 1024)
    replicas_max: int = _opt(8, "Most replicas per stage.", 1, 1024)
    cooldown_up_s: float = _opt(60.0, "Cooldown between scale-ups of a stage.", 0, 86_400)
    cooldown_down_s: float = _opt(120.0, "Cooldown between scale-downs of a stage.", 0, 86_400)

    def _check(self) -> None:
        if self.replicas_min > self.replicas_max:
            raise ConfigError(f"validator.replicas_min ({self.replicas_min}) must be <= "
                              f"validator.replicas_max ({self.replicas_max})")
        if self.rate_min > self.rate_max:
            raise ConfigError(f"validator.rate_min ({self.rate_min}) must be <= "
                              f"validator.rate_max ({self.rate_max})")


@dataclass(frozen=True)
class CostConfig(_Validated):
    """docs/algorithm.md §9: prices (AWS on-demand, as in the paper)."""

    _key = "cost"

    gpu_per_h: float = _opt(3.06, "$ per GPU-hour (p3.2xlarge).", 0, 1000)
    cpu_core_per_h: float = _opt(0.024, "$ per vCPU-hour (half of m5.xlarge / 4).", 0, 1000)
    mem_gb_per_h: float = _opt(0.006, "$ per GB-hour (half of m5.xlarge / 16).", 0, 1000)


@dataclass(frozen=True)
class PipelineConfig(_Validated):
    """A live app without a profile: what SAIR cannot read from Serve (docs/own-app.md).
    Stages, their kinds and their current allocations are read from the app itself."""

    _key = "pipeline"

    sla_ms: float = _opt(0.0, "End-to-end p99 latency target (ms) of a live app; 0 = the "
                         "profile's. Required for an app without a profile.", 0, 3_600_000)
    stages: str = _opt("", "Stage order, comma-separated deployment names (e.g. "
                       "'Ingress,preprocess,infer'); '' = the app's deployment graph "
                       "(ingress first, then the deployments it calls).")
    metrics: str = _opt("auto", "Where live metrics come from: 'serve' = Ray Serve's own "
                        "Prometheus metrics (no code in the app); 'meter' = the app's "
                        "sair_ray.observe.StageMeter instrumentation; 'auto' = 'meter' if "
                        "the app runs it, else 'serve'.", choices=("auto", "serve", "meter"))
    prometheus_url: str = _opt("", "Read Serve's metrics from this Prometheus server "
                               "(e.g. http://prometheus:9090) instead of each Ray node's "
                               "metrics agent.")


@dataclass(frozen=True)
class DecisionLogConfig(_Validated):
    """Size rotation of the decision log (`decisions.jsonl`, sair_ray/decision_log.py)."""

    _key = "decision_log"

    max_mb: float = _opt(50.0, "Rotate decisions.jsonl before it passes this size (MB; "
                         "0: never rotate).", 0, 1_048_576)
    max_files: int = _opt(5, "Log files kept, the current one included (decisions.jsonl, "
                          ".1, .2, ...; the oldest is deleted).", 1, 1000)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


@dataclass(frozen=True)
class LearningConfig(_Validated):
    """Project extension, docs/algorithm.md §10: memory that corrects the rule (headroom,
    give-back, directed probes, periodic foresight). Switched off with the episodes when
    retrieval.K = 0 (the no_icl ablation)."""

    _key = "learning"

    enabled: bool = _opt(True, "Keep the outcome table and arrival series and correct the "
                         "policy's proposals with them (off: docs/algorithm.md §1-§9 only; "
                         "its effect: docs/benchmarks.md, 'Learning').")
    bucket_base: float = _opt(1.5, "Load level ratio of the outcome table: bucket = "
                              "floor(log(lambda) / log(bucket_base)).", 1, 100, lo_open=True)
    n_min: int = _opt(3, "Windows meeting the SLA before an allocation counts as known good "
                      "at a load (and rounds a directed probe is kept on trial).", 1, 1000)
    fail_max: float = _opt(0.05, "Share of missed windows above which an allocation or stage "
                           "level counts as failing at a load.", 0, 1)
    ok_margin: float = _opt(0.9, "A window counts as good when its p99 is at most this share "
                            "of the SLA and nothing was dropped.", 0.1, 1)
    min_saving: float = _opt(0.05, "Give back only for at least this relative cost saving.",
                             0, 1)
    headroom: bool = _opt(True, "Hold back a scale-down to a stage level that failed at this "
                          "load.")
    giveback: bool = _opt(True, "Propose the cheapest allocation known good at this load "
                          "when the load is steady.")
    directed_probes: bool = _opt(True, "Exploration rounds try the cheapest untried one-step "
                                 "reduction at this load (no probe when none is uncertain) "
                                 "instead of the §5 random step.")
    probe_slack: float = _opt(0.5, "Directed probes only while p99 is at most this share of "
                              "the SLA.", 0, 1)
    foresight: bool = _opt(False, "Recognise periodic load and pre-scale before a predicted "
                           "spike (off: no measurable gain on the shipped burst, whose spike "
                           "capacity the rule already keeps; docs/algorithm.md §10).")
    lead_s: float = _opt(120.0, "Pre-scale this long before a predicted spike (cover the "
                         "slowest cold start plus a round).", 0, 3600)
    spike_ratio: float = _opt(1.5, "A predicted rate at least this many times the current one "
                              "is a spike.", 1, 100)
    min_confidence: float = _opt(0.6, "Foresight acts only when the last period correlates "
                                 "with the learned profile at least this well.", 0, 1)
    history_rounds: int = _opt(480, "Arrival-rate rounds kept for period detection (480 = 4 "
                               "hours at 30 s).", 10, 100_000)
    steady_s: float = _opt(600.0, "Without a confident forecast, give back only if no higher "
                           "load level was seen this long.", 0, 86_400)


@dataclass(frozen=True)
class SAIRConfig(_Validated):
    """The whole configuration. `SAIRConfig()` is exactly the defaults of docs/algorithm.md."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    validator: ValidatorConfig = field(default_factory=ValidatorConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    seed: int = _opt(0, "Seed of every random choice (probes, sampling, ablation 'random').",
                     0, 2**63 - 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SAIRConfig:
        return _build(cls, data or {}, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SAIRConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SAIRConfig:
        """Copy with dotted-key overrides, validated: `cfg.replace(**{"reward.beta": 0})`."""
        data = self.to_dict()
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{dotted}: unknown key")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{dotted}: unknown key")
            node[leaf] = value
        return SAIRConfig.from_dict(data)


# Ablations named by docs/algorithm.md §3-§4, as dotted overrides of the defaults.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_icl": {"retrieval.K": 0, "retrieval.selector": "none"},
    "store_all": {"reward.store_all": True},
    "linear_penalty": {"reward.penalty": "linear"},
    "no_bonus": {"reward.beta": 0.0},
    "equal_weights": {"reward.w_L": 0.5, "reward.w_C": 0.5},
    "cost_focus": {"reward.w_L": 0.3, "reward.w_C": 0.7},
    "similarity_only": {"retrieval.selector": "similarity"},
    "random_retrieval": {"retrieval.selector": "random"},
    "global_frontier": {"reward.global_frontier": True},
    # not an ablation of §3-§4: the production guard on exploration, measured against §5
    "safe_exploration": {"exploration.safe": True},
    # project extension (docs/algorithm.md §10): SAIR without the learned corrections (§1-§9
    # only), with foresight, and with the §5 random probes instead of directed ones
    "no_learning": {"learning.enabled": False},
    "learning_foresight": {"learning.enabled": True, "learning.foresight": True},
    "learning_random_probes": {"learning.enabled": True, "learning.directed_probes": False},
}


def with_ablation(cfg: SAIRConfig, name: str) -> SAIRConfig:
    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    return cfg.replace(**ABLATIONS[name])


def _describe(meta: Mapping[str, Any], typ: type) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[typ]
    if lo is None or hi is None:  # _opt sets both bounds or neither
        return kind
    left = "(" if meta.get("lo_open") else "["
    return f"{kind} in {left}{_num(lo)}, {_num(hi)}]"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _coerce(value: Any, typ: type, key: str, meta: Mapping[str, Any]) -> Any:
    allowed = _describe(meta, typ)
    bad = ConfigError(f"{key}: expected {allowed}, got {value!r}")
    if typ is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if typ is str:
        if not isinstance(value, str):
            raise bad
        if meta.get("choices") and value not in meta["choices"]:
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if typ is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo) or value > hi):
        raise bad
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{prefix}{k}: unknown key; allowed keys here: "
                          f"{', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        typ = hints[name]
        key = prefix + name
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            value = _build(typ, value if value is not None else {}, key + ".")
        kwargs[name] = value
    return cls(**kwargs)


def iter_options(cls: type = SAIRConfig, prefix: str = "") -> typing.Iterator[
        tuple[str, Any, str, str]]:
    """(dotted key, default, allowed values, help) for every option, for docs and `sair config`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            yield from iter_options(typ, prefix + f.name + ".")
        else:
            yield (prefix + f.name, f.default, _describe(f.metadata, typ), f.metadata["help"])
