"""The SAIR loop (docs/algorithm.md §1): one `tick(now)` per decision round, backend-agnostic.

observe -> reward the previous action -> remember -> retrieve -> probe or ask the policy
-> validate -> act -> log. Time comes from the caller, so the same code runs in virtual
time on the simulator (`run_virtual`) and in real time on Ray Serve. Baselines run
through this same loop with learning switched off, so every comparison shares it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from sair_ray.backends.base import Backend
from sair_ray.bottleneck import analyse
from sair_ray.config import SAIRConfig
from sair_ray.cost import CostModel
from sair_ray.decision import Decision, Recalled
from sair_ray.decision_log import DecisionLog
from sair_ray.embedding import phi
from sair_ray.eviction import enforce_cap
from sair_ray.exploration import EpsilonSchedule, probe
from sair_ray.learning import Learner
from sair_ray.memory import ExperienceMemory
from sair_ray.pareto import BucketedFrontiers
from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest
from sair_ray.retrieval import Retriever
from sair_ray.reward import Outcome, RewardBreakdown, RewardModel, capacity_added
from sair_ray.types import Action, Context, Experience
from sair_ray.validator import Cooldowns, Validator

log = logging.getLogger(__name__)

# earlier contexts handed to policies that keep no state of their own: 20 minutes at the
# default 30 s interval, twice the sizing's scale-down window (policy/sizing.py)
HISTORY = 40


@dataclass
class _Pending:
    """The previous round, waiting for its outcome to be rewarded."""

    round: int
    context: Context
    phi: np.ndarray
    action: Action
    source: str = ""


@dataclass
class Counters:
    rounds: int = 0
    probes: int = 0
    policy_calls: int = 0
    policy_failures: int = 0
    noops: int = 0
    clamped: int = 0
    stored: int = 0
    memory_failures: int = 0
    evicted: int = 0
    reward_sum: float = 0.0   # running totals: a long-lived controller keeps no per-round list
    rewarded: int = 0
    probe_usd: float = 0.0    # what probes added to the bill over their round ($; < 0: saved)
    probe_misses: int = 0     # probe rounds whose window missed the SLA
    learned: int = 0          # rounds whose proposal the learner corrected (docs/algorithm.md §10)

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.rewarded if self.rewarded else float("nan")


class _PerfClock(Protocol):
    def __call__(self) -> float: ...


class Controller:
    def __init__(self, backend: Backend, policy: Policy, cfg: SAIRConfig, *,
                 memory: ExperienceMemory | None = None, log_path: str | None = None,
                 explore: bool = True, learn: bool = True,
                 perf_clock: _PerfClock = time.perf_counter) -> None:
        self.backend = backend
        self.policy = policy
        self.cfg = cfg
        self.pipeline = backend.pipeline
        self.memory = memory
        self.explore = explore
        self.learn = learn and memory is not None
        self.rng = np.random.default_rng(cfg.seed)
        self.costs = CostModel(self.pipeline, cfg.cost)
        self.c_max = self.costs.max_rate(cfg.validator)
        self.reward_model = RewardModel(cfg.reward, sla_ms=self.pipeline.sla_ms, c_max=self.c_max)
        self.validator = Validator(self.pipeline, cfg.validator)
        self.epsilon = EpsilonSchedule(cfg.exploration)
        self.retriever = Retriever(memory, cfg.retrieval, self.rng) if memory is not None else None
        effective = cfg.reward.cost_model == "effective"
        # docs/algorithm.md §10: off with the episodes (retrieval.K = 0, the no_icl ablation)
        self.learner = (Learner(self.pipeline, cfg.learning, cfg.validator,
                                cfg.loop.decision_interval_s,
                                lambda a: self.costs.rate(a, effective=effective))
                        if (self.learn and cfg.learning.enabled and cfg.retrieval.K > 0
                            and cfg.retrieval.selector != "none") else None)
        self.log = DecisionLog(log_path, max_bytes=cfg.decision_log.max_bytes,
                               max_files=cfg.decision_log.max_files)
        self.counters = Counters()
        self.lambda_ref = 1.0
        self.last_action_at: float | None = None
        self.history: list[Context] = []
        self._pending: _Pending | None = None
        # The latest reward with its docs/algorithm.md §3 terms, for status displays and metrics.
        self.last_reward: RewardBreakdown | None = None
        self._perf = perf_clock

    # -- one round ----------------------------------------------------------------------
    def tick(self, now: float) -> Decision:
        t: dict[str, float] = {}
        c = self.counters
        round_no = c.rounds
        c.rounds += 1

        start = now - self.cfg.loop.decision_interval_s
        if self.last_action_at is not None:
            start = max(start, min(self.last_action_at + self.cfg.loop.settle_s, now))
        s = self._perf()
        ctx = self.backend.observe(start, now)
        effective = self.cfg.reward.cost_model == "effective"
        ctx = replace(ctx, cost_rate=self.costs.rate(ctx.allocation, effective=effective))
        self.lambda_ref = max(self.lambda_ref, ctx.arrival_rate)
        phi_t = phi(ctx, self.pipeline, self.cfg.validator, lambda_ref=self.lambda_ref,
                    c_max=self.c_max)
        t["observe"] = self._ms(s)

        s = self._perf()
        pending = self._pending
        if pending is not None:
            self._reward_previous(ctx)
        t["reward"] = self._ms(s)

        prev_ctx = self.history[-1] if self.history else None
        report = analyse(ctx, self.pipeline, prev_ctx)
        free = self.backend.free_resources()
        if self.learner is not None:
            self.learner.observe(pending.context if pending else None,
                                 pending.action if pending else None, ctx, report)

        def resolve(proposal: object) -> dict[str, Any]:
            return self.validator.validate(proposal, ctx.allocation, now=now, free=free).targets

        s = self._perf()
        episodes = self.retriever.select(phi_t) if self.retriever is not None else []
        t["retrieve"] = self._ms(s)

        epsilon = self.epsilon.epsilon   # before the draw decays it
        s = self._perf()
        probe_prop = None
        if self.explore and self.epsilon.draw(self.rng):
            if self.learner is not None and self.cfg.learning.directed_probes:
                # §10: probe where the memory is uncertain; nothing uncertain, no probe
                probe_prop = self.learner.probe(ctx, resolve, self.history)
            else:
                probe_prop = probe(self.pipeline, ctx.allocation, self.cfg.validator,
                                   self.rng, safe=self.cfg.exploration.safe)
        if probe_prop is not None:
            c.probes += 1
            source, rationale = "probe", "forced exploration probe"
            reply = PolicyReply(proposal=probe_prop)
        else:
            if self.learner is not None:
                _offer_hints(self.policy, self.learner.hints(ctx))
            reply = self._ask_policy(PolicyRequest(
                now=now, context=ctx, pipeline=self.pipeline,
                free=free, bottleneck=report, episodes=episodes,
                history=tuple(self.history)))
            source, rationale = f"policy:{self.policy.name}", reply.rationale
            if self.learner is not None and not reply.error:
                proposal, note = self.learner.correct(ctx, reply.proposal, resolve,
                                                      self.history)
                if note:
                    c.learned += 1
                    rationale = f"{rationale} [learned: {note}]".strip()
                    reply = replace(reply, proposal=proposal)
        t["decide"] = self._ms(s)

        s = self._perf()
        validated = self.validator.validate(reply.proposal, ctx.allocation, now=now, free=free)
        c.clamped += bool(validated.clamps)
        if validated.action.is_noop:
            c.noops += 1
        else:
            self.backend.apply(validated.targets, now)
            self.validator.commit(validated.action, now)
            self.last_action_at = now
        t["act"] = self._ms(s)

        decision = Decision(
            round=round_no, time=now, app=self.pipeline.name, source=source, context=ctx,
            action=validated.action, targets=validated.targets, epsilon=epsilon,
            bottleneck=report, retrieved=tuple(Recalled.of(e) for e in episodes),
            prompt_chars=reply.prompt_chars, raw_reply=reply.raw, proposal=reply.proposal,
            clamps=validated.clamps, rationale=rationale, timings_ms=t, error=reply.error)
        if source == "probe":
            c.probe_usd += (self.costs.rate(validated.targets, effective=effective)
                            - ctx.cost_rate) * self.cfg.loop.decision_interval_s / 3600
        self._pending = _Pending(round_no, ctx, phi_t, validated.action, source)
        self.history = (self.history + [ctx])[-HISTORY:]
        self.log.write("decision", decision.to_record())
        return decision

    def _ask_policy(self, request: PolicyRequest) -> PolicyReply:
        self.counters.policy_calls += 1
        try:
            reply = self.policy.decide(request)
        except Exception as e:  # a failing policy is a no-op round, never a crash
            log.warning("policy %s failed: %r; no-op this round", self.policy.name, e)
            reply = PolicyReply(proposal=None, error=f"policy failed: {e!r}")
        if reply.error:
            self.counters.policy_failures += 1
        return reply

    def _reward_previous(self, ctx: Context) -> None:
        p = self._pending
        assert p is not None
        # l_{t-1}, c_{t-1}: what the round that chose the action saw before acting.
        rb = self.reward_model.compute(
            Outcome(ctx.p99_ms, ctx.cost_rate, ctx.arrival_rate),
            Outcome(p.context.p99_ms, p.context.cost_rate, p.context.arrival_rate),
            v_prev=p.context.violation,
            up_sum=capacity_added(p.action, self.cfg.validator),
            n_stages=len(self.pipeline.stages))
        self.last_reward = rb
        if p.source == "probe" and (ctx.p99_ms > ctx.sla_ms or ctx.drops > 0):
            self.counters.probe_misses += 1
        self.counters.reward_sum += rb.total
        self.counters.rewarded += 1
        stored = False
        if self.learn and self.memory is not None:
            exp = Experience(id=uuid.uuid4().hex, time=p.context.time, app=self.pipeline.name,
                             phi=p.phi.tolist(), context=p.context.to_dict(),
                             action=p.action.to_dict(), reward=rb.total,
                             latency_ms=ctx.p99_ms, cost_rate=ctx.cost_rate)
            try:
                stored = self.memory.remember(exp, self.cfg.reward)
                if stored:
                    self.counters.evicted += enforce_cap(self.memory,
                                                         self.cfg.memory.max_experiences)
            except (OSError, ValueError) as e:  # disk full, bad vector: the loop goes on
                log.error("memory write failed, experience %s not stored: %r", exp.id, e)
                self.counters.memory_failures += 1
            self.counters.stored += stored
        self.log.write("reward", {"round": p.round, "reward": {**rb.to_dict(), "stored": stored}})

    def _ms(self, start: float) -> float:
        return round((self._perf() - start) * 1000, 3)

    # -- persistence of what is not in memory -------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"round": self.counters.rounds, "epsilon": self.epsilon.epsilon,
                "lambda_ref": self.lambda_ref, "last_action_at": self.last_action_at,
                "frontiers": self.reward_model.frontiers.state(),
                "cooldowns": self.validator.cooldowns.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.counters.rounds = int(state["round"])
        self.epsilon.epsilon = float(state["epsilon"])
        self.lambda_ref = float(state["lambda_ref"])
        self.last_action_at = state["last_action_at"]
        self.reward_model.frontiers = BucketedFrontiers.from_state(state["frontiers"])
        self.validator.cooldowns = Cooldowns.from_dict(state["cooldowns"])

    # -- what a host tells the controller between rounds --------------------------------
    def hold(self, stages: Iterable[str], now: float) -> None:
        """Stages someone else just changed (a user's redeploy) are held: their scale-up
        and scale-down cooldowns start now, as if this controller had made the change, so
        the next rounds do not undo it right away."""
        cd = self.validator.cooldowns
        for stage in stages:
            cd.last_up[stage] = now
            cd.last_down[stage] = now

    def resume_interrupted(self, round_no: int, at: float, action: Action,
                           targets: Mapping[str, Any]) -> bool:
        """Settle round `round_no`, which a crash cut off after it began applying `action`
        (to `targets`) at `at`, and before its state was saved; False if the restored state
        already covers that round. The action may have reached the pipeline, so it counts
        as applied: its cooldowns start at `at` and the round number is not reused, so the
        controller neither repeats it nor stacks another step on it at once. Its outcome is
        not rewarded (it was never acknowledged). The decision log gets an `interrupted`
        record, since the round's own decision line was never written."""
        if round_no < self.counters.rounds:
            return False
        self.validator.commit(action, at)
        self.last_action_at = at
        self.counters.rounds = round_no + 1
        self.log.write("interrupted", {"round": round_no, "time": at,
                                       "action": action.to_dict(), "targets": dict(targets)})
        return True

    def note(self, kind: str, record: Mapping[str, Any]) -> None:
        """An event of the host's (a failed round, a backend event) in the decision log."""
        self.log.write(kind, dict(record))

    def close(self) -> None:
        """Close what the controller made: its decision log. Memory and policy belong to
        whoever built them (`sair_ray.session.Session` closes all three)."""
        self.log.close()


def _offer_hints(policy: object, hints: object) -> None:
    """Hand the learner's hints (docs/algorithm.md §10) to a policy that shows them (the
    LLM policy's prompt, `learned`), through a fallback wrapper too."""
    for p in (policy, getattr(policy, "primary", None)):
        if p is not None and hasattr(p, "learned"):
            p.learned = hints


class _Advancing(Protocol):
    def advance_to(self, t: float) -> None: ...


def run_virtual(controller: Controller, backend: _Advancing, *, until: float,
                start: float = 0.0) -> list[Decision]:
    """Drive a controller in virtual time: advance the backend, tick, repeat."""
    step = controller.cfg.loop.decision_interval_s
    out = []
    now = start + step
    while now <= until + 1e-9:
        backend.advance_to(now)
        out.append(controller.tick(now))
        now += step
    return out
