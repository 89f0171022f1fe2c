"""The controller of one live app, run in real time: backend + policy + memory + state.

`LiveLoop.round(now)` is one decision round: `Controller.tick(now)`, then the round's
side effects that only a live run has: external changes and actuation errors go to the
decision log, `Controller.state()` is saved atomically, and a summary joins the recent
decisions that `status()` / `decisions()` report. `LiveLoop.run(stop)` repeats it every
`loop.decision_interval_s` of wall-clock time until `stop` is set; it is the one place in
`sair_ray` (with the actor that hosts it) that waits on real time.

A round that fails (metrics actor not up yet, dashboard unreachable, app redeployed without
a stage) is logged and counted, never fatal: the next round tries again. The same holds
for setting up: an app that is still deploying is retried every round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.live.paths import app_data_dir, read_json, write_json_atomic
from sair_ray.metrics_export import make_exporter, safe_record
from sair_ray.policy import SAIR_POLICIES
from sair_ray.policy.base import Policy
from sair_ray.types import Action, Decision, PipelineSpec, StageAllocation, StageDelta

log = logging.getLogger(__name__)

STATE_VERSION = 1


class PolicyError(ValueError):
    """Unknown policy name."""


@dataclass(frozen=True)
class LiveOptions:
    """Everything needed to (re)build an app's live controller; plain values, so it crosses
    process boundaries (the detached actor is re-created from it after a crash)."""

    app: str
    config: Mapping[str, Any] = field(default_factory=dict)   # SAIRConfig.to_dict() or part
    policy: str = "sair"
    profile: str | None = None          # profile YAML path; None: the shipped profile = app
    data_dir: str | None = None         # base dir; None: $SAIR_DATA_DIR or ~/.local/share
    dashboard_url: str | None = None    # None: discovered from the Ray cluster

    def sair_config(self) -> SAIRConfig:
        return SAIRConfig.from_dict(dict(self.config))


def make_policy(name: str, cfg: SAIRConfig, pipeline: PipelineSpec) -> tuple[Policy, bool]:
    """(policy, learns): the named policy (`sair_ray.policy.make_policy`), and whether
    SAIR's memory and exploration apply. Baselines run as in `sair bench`: no exploration,
    no memory."""
    from sair_ray.policy import make_policy as build

    try:
        policy = build(name, cfg, pipeline=pipeline)
    except ValueError as e:
        raise PolicyError(str(e)) from None
    return policy, name in SAIR_POLICIES


def summarize(d: Decision) -> dict[str, Any]:
    """The parts of a decision a status display needs (the full record is in the log)."""
    ctx = d.context
    return {
        "round": d.round, "time": d.time, "source": d.source, "action": d.action,
        "rationale": d.rationale, "error": d.error, "clamps": len(d.clamps),
        "bottleneck": {k: d.bottleneck.get(k) for k in ("label", "stages", "reason")},
        "p99_ms": ctx.get("p99_ms"), "p50_ms": ctx.get("p50_ms"),
        "sla_ms": ctx.get("sla_ms"), "arrival_rate": ctx.get("arrival_rate"),
        "errors": ctx.get("errors"), "drops": ctx.get("drops"),
        "cost_rate": ctx.get("cost_rate"),
        "stages": {s["name"]: {k: s[k] for k in ("kind", "replicas", "cpu_m", "mem_mb", "rate",
                                                  "queue", "util", "p99_ms",
                                                  "queue_delay_ms", "throughput_rps")}
                   for s in ctx.get("stages", [])},
        "timings_ms": d.timings_ms,
    }


class LiveLoop:
    """One attached app. `backend_factory` builds the Backend (default: RayServeBackend);
    tests and the demo can pass their own. `clock` is wall-clock seconds."""

    def __init__(self, opts: LiveOptions, *,
                 backend_factory: Callable[[LiveOptions], Any] | None = None,
                 clock: Callable[[], float] = time.time, history: int = 200) -> None:
        self.opts = opts
        self.cfg = opts.sair_config()
        self.dir = app_data_dir(opts.app, opts.data_dir)
        self.clock = clock
        self._backend_factory = backend_factory or _ray_serve_backend
        self.backend: Any = None
        self.controller: Controller | None = None
        self.policy_name = opts.policy
        self.learns = False
        self.recent: deque[dict[str, Any]] = deque(maxlen=history)
        self.external: deque[dict[str, Any]] = deque(maxlen=history)
        self.actuation_errors: deque[dict[str, Any]] = deque(maxlen=history)
        self.rounds_ok = 0
        self.rounds_failed = 0
        self.last_error = ""
        self.restored_round: int | None = None
        self.interrupted_rounds = 0   # rounds a crash cut off mid-apply, found at restart
        self.started_at = clock()
        self.cpu_s = 0.0          # thread CPU time spent in rounds (policy included)
        self.decide_ms = 0.0      # wall time in the policy (the LLM, for SAIR)
        self._lock = threading.Lock()
        # SAIR's own Prometheus metrics (decisions, probes, clamps, reward, targets) through
        # Ray's metrics API, next to Serve's; a no-op outside a Ray process.
        self.metrics = make_exporter(opts.app)

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> bool:
        """Build backend, policy, memory and controller; False (and `last_error`) if the
        app is not ready yet. Resumes from state.json and the Parquet memory if present."""
        if self.controller is not None:
            return True
        try:
            backend = self._backend_factory(self.opts)
            policy, learns = make_policy(self.opts.policy, self.cfg, backend.pipeline)
        except PolicyError:
            raise
        except Exception as e:  # not deployed yet, dashboard down, ...: retried next round
            self.last_error = f"setup: {e}"
            log.warning("%s: not attached yet: %s", self.opts.app, e)
            return False
        memory = None
        if learns:
            from sair_ray.embedding import phi_dim
            from sair_ray.memory import ExperienceMemory

            memory = ExperienceMemory(self.dir / "memory", phi_dim(len(backend.pipeline.stages)),
                                      self.cfg.memory, loo_k=self.cfg.retrieval.loo_k)
        journaled = _JournaledBackend(backend, self.intent_path,
                                      lambda: self.controller.counters.rounds - 1
                                      if self.controller is not None else -1)
        ctl = Controller(journaled, policy, self.cfg, memory=memory,
                         log_path=str(self.dir / "decisions.jsonl"), explore=learns,
                         learn=learns)
        self._restore(ctl)
        self.backend, self.controller, self.learns = backend, ctl, learns
        self.policy_name = getattr(policy, "name", self.opts.policy)
        self.last_error = ""
        log.info("%s: attached (policy %s, memory %s, data %s)", self.opts.app,
                 self.policy_name, len(memory) if memory is not None else "off", self.dir)
        return True

    def _restore(self, ctl: Controller) -> None:
        saved = read_json(self.state_path)
        if saved:
            try:
                if saved.get("version") != STATE_VERSION:
                    raise ValueError(f"state version {saved.get('version')} != "
                                     f"{STATE_VERSION}")
                ctl.restore(saved["controller"])
                self.restored_round = ctl.counters.rounds
                log.info("%s: resumed at round %d from %s", self.opts.app,
                         ctl.counters.rounds, self.state_path)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("%s: ignoring unreadable %s (%s); starting fresh", self.opts.app,
                            self.state_path, e)
        self._resolve_interrupted(ctl)

    def _resolve_interrupted(self, ctl: Controller) -> None:
        """A previous run that died between applying an action and saving its state left
        the intent file behind. The action may have reached Serve, so it counts as applied:
        its cooldowns start at its round's time and the round number is not reused, so the
        resumed controller neither repeats it nor stacks another step on it at once. Its
        outcome is not rewarded (it was never acknowledged). The decision log gets an
        `interrupted` record, since the round's own decision line was never written."""
        intent = read_json(self.intent_path)
        if intent is None:
            return
        try:
            rnd, at = int(intent["round"]), float(intent["time"])
            before = {k: StageAllocation(**v) for k, v in intent["before"].items()}
            targets = {k: StageAllocation(**v) for k, v in intent["targets"].items()}
        except (KeyError, TypeError, ValueError) as e:
            log.warning("%s: ignoring unreadable %s (%s)", self.opts.app, self.intent_path, e)
            self.intent_path.unlink(missing_ok=True)
            return
        if rnd >= ctl.counters.rounds:  # not covered by the saved state
            action = Action({n: StageDelta(t.replicas - before[n].replicas,
                                           t.cpu_m - before[n].cpu_m,
                                           t.mem_mb - before[n].mem_mb,
                                           round(t.rate - before[n].rate, 6))
                             for n, t in targets.items() if n in before})
            ctl.validator.commit(action, at)
            ctl.last_action_at = at
            ctl.counters.rounds = rnd + 1
            ctl.log.write("interrupted", {"round": rnd, "time": at,
                                          "action": action.to_dict(),
                                          "targets": intent["targets"]})
            self.interrupted_rounds += 1
            log.warning("%s: round %d was cut off while applying %s; treating it as "
                        "applied", self.opts.app, rnd, action.to_dict())
            write_json_atomic(self.state_path, {"version": STATE_VERSION, "app": self.opts.app,
                                                "policy": self.policy_name, "saved_at": at,
                                                "controller": ctl.state()})
        self.intent_path.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def intent_path(self) -> Path:
        return self.dir / "applying.json"

    # -- rounds ---------------------------------------------------------------------------
    def round(self, now: float) -> Decision | None:
        """One decision round at wall-clock `now`; None if it could not run."""
        cpu0 = time.thread_time()
        attempted = self.controller.counters.rounds if self.controller is not None else 0
        try:
            if not self.setup():
                self.rounds_failed += 1
                return None
            assert self.controller is not None
            attempted = self.controller.counters.rounds
            self._adopt_external(now)
            d = self.controller.tick(now)
        except Exception as e:
            self.rounds_failed += 1
            self.last_error = f"round at {now:.0f}: {e!r}"
            log.exception("%s: round failed", self.opts.app)
            if self.controller is not None:
                # In the log too, so a gap in the decisions is explained next to them;
                # the backend's errors of the round (stages an outage cut off) follow it.
                self.controller.log.write("round_failed", {
                    "round": attempted, "time": now,
                    "error": f"{type(e).__name__}: {e}"[:1000]})
                self._drain_backend_events()
            # Whatever part of this round's action reached Serve, the next observation
            # adopts it (RayServeBackend.apply), so the intent is settled.
            self.intent_path.unlink(missing_ok=True)
            return None
        finally:
            self.cpu_s += time.thread_time() - cpu0
        self._drain_backend_events()
        safe_record(self.metrics, d, self.controller)
        write_json_atomic(self.state_path, {"version": STATE_VERSION, "app": self.opts.app,
                                            "policy": self.policy_name, "saved_at": now,
                                            "controller": self.controller.state()})
        self.intent_path.unlink(missing_ok=True)  # only now: the saved state covers it
        with self._lock:
            self.rounds_ok += 1
            self.decide_ms += d.timings_ms.get("decide", 0.0)
            self.recent.append(summarize(d))
        self.last_error = d.error
        return d

    def _adopt_external(self, now: float) -> None:
        """A stage someone else just changed (a user's redeploy) is held: its scale-up and
        scale-down cooldowns start now, as if SAIR had made the change, so the next rounds
        do not undo it right away."""
        sync = getattr(self.backend, "sync", None)
        if sync is None:
            return
        assert self.controller is not None
        cd = self.controller.validator.cooldowns
        for ch in sync(now):
            cd.last_up[ch.stage] = now
            cd.last_down[ch.stage] = now

    def _drain_backend_events(self) -> None:
        assert self.controller is not None
        for attr, kind, sink in (("external_changes", "external", self.external),
                                 ("actuation_errors", "actuation_error",
                                  self.actuation_errors)):
            events = getattr(self.backend, attr, None)
            while events:
                rec = events.popleft().to_dict()
                self.controller.log.write(kind, rec)
                sink.append(rec)

    def run(self, stop: threading.Event) -> None:
        """Round every `decision_interval_s` until `stop` is set (real time)."""
        interval = self.cfg.loop.decision_interval_s
        next_at = self.clock() + interval
        while not stop.wait(max(0.0, next_at - self.clock())):
            self.round(self.clock())
            next_at += interval
            if next_at < self.clock():  # a slow round: skip the missed slots, do not burst
                next_at = self.clock() + interval

    # -- reporting ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        wall = max(self.clock() - self.started_at, 1e-9)
        c = self.controller.counters if self.controller is not None else None
        mem = self.controller.memory if self.controller is not None else None
        with self._lock:
            last = self.recent[-1] if self.recent else None
        return {
            "app": self.opts.app, "policy": self.policy_name, "attached": c is not None,
            "data_dir": str(self.dir), "rounds": c.rounds if c else 0,
            "rounds_ok": self.rounds_ok, "rounds_failed": self.rounds_failed,
            "restored_round": self.restored_round,
            # rounds a crash cut off between applying and saving, treated as applied
            "interrupted_rounds": self.interrupted_rounds,
            "probes": c.probes if c else 0, "noops": c.noops if c else 0,
            "policy_failures": c.policy_failures if c else 0,
            "stored": c.stored if c else 0, "memory_size": len(mem) if mem is not None else 0,
            "epsilon": self.controller.epsilon.epsilon if self.controller else None,
            "learns": self.learns,
            # the reward of the action before the last decision, with its SPEC 3 terms
            "last_reward": (self.controller.last_reward.to_dict()
                            if self.controller and self.controller.last_reward else None),
            "decision_interval_s": self.cfg.loop.decision_interval_s,
            "last_error": self.last_error, "last_decision": last,
            "external_changes": list(self.external)[-10:],
            "actuation_errors": list(self.actuation_errors)[-10:],
            "cpu_s": self.cpu_s, "decide_ms": self.decide_ms, "uptime_s": wall,
            # Controller overhead: CPU time of the rounds (this thread) per wall second. An
            # LLM served out of process (llama.cpp server, vLLM) is not included.
            "cpu_frac": self.cpu_s / wall,
        }

    def decisions(self, last: int = 10) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.recent)
        return items[-last:] if last > 0 else items

    def close(self) -> None:
        if self.controller is not None:
            self.controller.close()
            if self.controller.memory is not None:
                self.controller.memory.close()


class _JournaledBackend:
    """The backend as the controller sees it, with a write-ahead record of each apply.

    Before an action goes to the backend, the round, its time, the allocation it starts
    from and its targets are written atomically to `path`; the loop removes the file once
    the round's state is saved. A file still there at start-up means the previous run
    died between acting and saving, which `LiveLoop._resolve_interrupted` settles.
    Everything else is passed through.
    """

    def __init__(self, inner: Any, path: Path, round_no: Callable[[], int]) -> None:
        self._inner = inner
        self._path = path
        self._round_no = round_no
        self._before: dict[str, StageAllocation] = {}

    @property
    def pipeline(self) -> PipelineSpec:
        return self._inner.pipeline

    def observe(self, start: float, end: float) -> Any:
        ctx = self._inner.observe(start, end)
        self._before = dict(ctx.allocation)
        return ctx

    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        write_json_atomic(self._path, {
            "round": self._round_no(), "time": now,
            "before": {k: asdict(v) for k, v in self._before.items() if k in target},
            "targets": {k: asdict(v) for k, v in target.items()}})
        self._inner.apply(target, now)

    def free_resources(self) -> Any:
        return self._inner.free_resources()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _ray_serve_backend(opts: LiveOptions) -> Any:
    from sair_ray.backends.ray_serve import RayServeBackend

    return RayServeBackend(opts.app, profile=opts.profile, dashboard_url=opts.dashboard_url)
