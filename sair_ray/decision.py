"""The decision record: everything one round did, typed (docs/algorithm.md §1 step 6).

The controller builds one `Decision` per round from what it already holds: the observed
`Context`, the bottleneck report, the episodes it retrieved, the policy's raw proposal, and
the validator's verdict (the `Action`, the `targets` it leads to and the `Clamp`s on the
way). Readers (metrics, status displays, the bench) use these fields as they are; nothing
re-derives what the validator knew.

Dicts exist only at the decision log's edge: `to_record()` is the `decision` line written
to `decisions.jsonl`, `from_record()` reads one back (a merged record, `DecisionLog.merged`,
brings its reward along). The targets are not written: a record's targets are its action
applied to the allocation its context observed, which is how the validator made them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from sair_ray.bottleneck import BottleneckReport
from sair_ray.reward import RewardBreakdown
from sair_ray.types import Action, Allocation, Context
from sair_ray.validator import Clamp

if TYPE_CHECKING:
    from sair_ray.retrieval import Retrieved

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# record fields that hold names or text, never a number
_TEXT = frozenset({"app", "name", "kind", "stage", "stages", "label", "reason", "id"})


@dataclass(frozen=True)
class Recalled:
    """One retrieved episode as the round used it, its scores to 4 decimals."""

    id: str
    reward: float
    similarity: float
    surprisal: float
    gain: float

    @classmethod
    def of(cls, r: Retrieved) -> Recalled:
        return cls(r.experience.id, round(r.experience.reward, 4), round(r.similarity, 4),
                   round(r.surprisal, 4), round(r.gain, 4))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Decision:
    """One round: what was seen, asked, proposed, validated and done, and how long it took.

    `source` is "probe" (a forced exploration step, docs/algorithm.md §5) or
    "policy:<name>". `reward` stays None until the next round sees the outcome; the
    controller logs it then as a separate `reward` line (`from_record` of a merged record
    fills it in)."""

    round: int
    time: float
    app: str
    source: str
    context: Context
    action: Action
    targets: Allocation
    epsilon: float = 0.0
    bottleneck: BottleneckReport | None = None
    retrieved: tuple[Recalled, ...] = ()
    prompt_chars: int = 0
    raw_reply: str = ""
    proposal: Any = None               # the policy's (or probe's) raw targets, unvalidated
    clamps: tuple[Clamp, ...] = ()
    rationale: str = ""
    reward: RewardBreakdown | None = None
    reward_stored: bool = False        # whether the rewarded experience went into memory
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def probed(self) -> bool:
        return self.source == "probe"

    @property
    def policy_name(self) -> str | None:
        """The policy asked this round; None for a probe."""
        return self.source.removeprefix("policy:") if self.source.startswith("policy:") \
            else None

    @property
    def acted(self) -> bool:
        return not self.action.is_noop

    # -- the decision log's edge ----------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The `decision` line of the log (without its "kind"), in the log's field order."""
        b = self.bottleneck
        reward = None if self.reward is None else {**self.reward.to_dict(),
                                                   "stored": self.reward_stored}
        return {
            "round": self.round, "time": self.time, "app": self.app, "source": self.source,
            "context": self.context.to_dict(), "epsilon": self.epsilon,
            "bottleneck": {} if b is None else b.to_dict(),
            "retrieved": [r.to_dict() for r in self.retrieved],
            "prompt_chars": self.prompt_chars, "raw_reply": self.raw_reply,
            "proposal": self.proposal, "action": self.action.to_dict(),
            "clamps": [c.to_dict() for c in self.clamps], "rationale": self.rationale,
            "reward": reward, "timings_ms": dict(self.timings_ms), "error": self.error,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Decision:
        """A decision from its log record (or a merged one, reward attached). Non-finite
        numbers, which the log writes as strings, come back as floats."""
        ctx = Context.from_dict(_finite_back(rec["context"]))
        action = Action.from_dict(rec.get("action") or {})
        b = rec.get("bottleneck") or None
        r = rec.get("reward")
        reward = None
        if isinstance(r, Mapping):
            r = _finite_back(r)
            terms = {f.name: r[f.name] for f in fields(RewardBreakdown)}
            reward = RewardBreakdown(**{**terms, "z": tuple(terms["z"])})
        return cls(
            round=int(rec["round"]), time=float(rec["time"]), app=str(rec["app"]),
            source=str(rec["source"]), context=ctx, action=action,
            targets=action.apply(ctx.allocation), epsilon=float(rec.get("epsilon", 0.0)),
            bottleneck=None if b is None else BottleneckReport.from_dict(_finite_back(b)),
            retrieved=tuple(Recalled(**_finite_back(e)) for e in rec.get("retrieved") or ()),
            prompt_chars=int(rec.get("prompt_chars", 0)),
            raw_reply=str(rec.get("raw_reply", "")), proposal=rec.get("proposal"),
            clamps=tuple(Clamp(**c) for c in rec.get("clamps") or ()),
            rationale=str(rec.get("rationale", "")), reward=reward,
            reward_stored=bool(isinstance(r, Mapping) and r.get("stored")),
            timings_ms=dict(rec.get("timings_ms") or {}), error=str(rec.get("error", "")))


def _finite_back(x: Any, key: str = "") -> Any:
    """Undo the log's "nan"/"inf" strings for non-finite floats (names, which may spell
    "nan" too, are left alone)."""
    if isinstance(x, str):
        return x if key in _TEXT else _NON_FINITE.get(x, x)
    if isinstance(x, Mapping):
        return {k: _finite_back(v, k) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_back(v, key) for v in x]
    return x
