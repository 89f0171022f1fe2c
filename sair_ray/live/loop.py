"""The controller of one live app, run in real time: backend + policy + memory + state.

`LiveLoop.round(now)` is one decision round of the app's `Session` (the controller with
its memory, state.json, decision log and the write-ahead record of each apply), then what
only a live run keeps: Prometheus metrics and the recent decisions, external changes and
actuation errors that `status()` / `decisions()` report. `LiveLoop.run(stop)` repeats it
on the `RoundTimer` of `loop.decision_interval_s` of real time until `stop` is set; it is
the one place in `sair_ray` (with the actor that hosts it and the operator) that waits on
real time. Its clock is a `SteadyClock` (the wall clock at start plus the monotonic time
since), so a step of the system clock neither stalls nor skips rounds and cooldowns; the
replicas' metrics and the published plan stay on the wall clock (`wall_offset`).

A round that fails (metrics actor not up yet, dashboard unreachable, app redeployed without
a stage, a full disk under the data dir, any other exception) is logged with its cause and
counted in `rounds_failed`, never fatal: the next round tries again. The same holds for
setting up: an app that is still deploying is retried. After `BACKOFF_AFTER` failed
rounds in a row the retries back off (2, 4, 8... intervals, at most
`max(interval, MAX_BACKOFF_S)`), so a lasting fault is not retried and logged every few
seconds; the first round that succeeds ends the backoff.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sair_ray import registry
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.decision import Decision
from sair_ray.files import ControllerFiles, app_data_dir
from sair_ray.metrics_export import make_exporter, safe_record
from sair_ray.serve import Plan, publish_plan, read_modes
from sair_ray.session import RoundTimer, Session, SteadyClock, wall_offset_of

log = logging.getLogger(__name__)

BACKOFF_AFTER = 3       # failed rounds in a row retried at the normal interval
MAX_BACKOFF_S = 300.0   # the longest wait between retries (unless the interval is longer)


@dataclass(frozen=True)
class LiveOptions:
    """Everything needed to (re)build an app's live controller; plain values, so it crosses
    process boundaries (the detached actor is re-created from it after a crash)."""

    app: str
    config: Mapping[str, Any] = field(default_factory=dict)   # SAIRConfig.to_dict() or part
    policy: str = "sair"
    profile: str | None = None          # profile YAML path; None: shipped = app, else discovered
    data_dir: str | None = None         # base dir; None: $SAIR_DATA_DIR or ~/.local/share
    dashboard_url: str | None = None    # None: discovered from the Ray cluster
    # the policy's own settings, as keyword arguments to its constructor (a baseline's
    # thresholds or target); empty: its defaults
    policy_params: Mapping[str, Any] = field(default_factory=dict)

    def sair_config(self) -> SAIRConfig:
        return SAIRConfig.from_dict(dict(self.config))


def summarize(d: Decision) -> dict[str, Any]:
    """The parts of a decision a status display needs, as plain JSON (the full record is in
    the log)."""
    ctx, b = d.context, d.bottleneck
    return {
        "round": d.round, "time": d.time, "source": d.source, "action": d.action.to_dict(),
        "rationale": d.rationale, "error": d.error, "clamps": len(d.clamps),
        "bottleneck": {"label": b.label, "stages": list(b.stages), "reason": b.reason}
        if b is not None else dict.fromkeys(("label", "stages", "reason")),
        "p99_ms": ctx.p99_ms, "p50_ms": ctx.p50_ms, "sla_ms": ctx.sla_ms,
        "arrival_rate": ctx.arrival_rate, "errors": ctx.errors, "drops": ctx.drops,
        "partial": list(ctx.partial),
        "cost_rate": ctx.cost_rate,
        "stages": {s.name: {"kind": s.kind.value, "replicas": s.replicas, "cpu_m": s.cpu_m,
                            "mem_mb": s.mem_mb, "rate": s.rate, "queue": s.queue,
                            "util": s.util, "p99_ms": s.p99_ms,
                            "queue_delay_ms": s.queue_delay_ms,
                            "throughput_rps": s.throughput_rps, "serving": s.serving}
                   for s in ctx.stages},
        "timings_ms": dict(d.timings_ms),
    }


class LiveLoop:
    """One attached app. `backend_factory` builds the Backend (default: RayServeBackend);
    tests and the demo can pass their own. `clock`: round times in seconds (default: a
    `SteadyClock`; a plain callable's times are taken as wall-clock times)."""

    def __init__(self, opts: LiveOptions, *,
                 backend_factory: Callable[[LiveOptions], Any] | None = None,
                 clock: Callable[[], float] | None = None, history: int = 200) -> None:
        self.opts = opts
        self.cfg = opts.sair_config()
        self.dir = app_data_dir(opts.app, opts.data_dir)
        self.files = ControllerFiles.in_dir(self.dir)
        self.clock: Callable[[], float] = clock if clock is not None else SteadyClock()
        self._wall_offset = wall_offset_of(self.clock)
        self._backend_factory = backend_factory or functools.partial(
            ray_serve_backend, wall_offset=self._wall_offset)
        self.session: Session | None = None
        self.policy_name = opts.policy
        self.recent: deque[dict[str, Any]] = deque(maxlen=history)
        self.external: deque[dict[str, Any]] = deque(maxlen=history)
        self.actuation_errors: deque[dict[str, Any]] = deque(maxlen=history)
        self._noted_modes: dict[str, str] | None = None
        self.rounds_ok = 0
        self.rounds_failed = 0
        self.failed_streak = 0    # failed rounds since the last one that succeeded
        self.last_error = ""
        self.started_at = self.clock()
        self.cpu_s = 0.0          # thread CPU time spent in rounds (policy included)
        self.decide_ms = 0.0      # wall time in the policy (the LLM, for SAIR)
        self._lock = threading.Lock()
        # SAIR's own Prometheus metrics (decisions, probes, clamps, reward, targets) through
        # Ray's metrics API, next to Serve's; a no-op outside a Ray process.
        self.metrics = make_exporter(opts.app)
        # The replica plan for Serve-native mode (sair_ray/serve.py), published every
        # round; harmless (a KV write) for an app driven through the external scaler.
        self.plan: Plan | None = None
        self.publish: Callable[[Plan], bool] = publish_plan

    @property
    def controller(self) -> Controller | None:
        return self.session.controller if self.session is not None else None

    @property
    def backend(self) -> Any:
        return self.session.backend if self.session is not None else None

    @property
    def learns(self) -> bool:
        return self.session is not None and self.session.learns

    @property
    def restored_round(self) -> int | None:
        return self.session.restored_round if self.session is not None else None

    @property
    def state_path(self) -> Path | None:
        return self.files.state

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> bool:
        """Build backend, policy, memory and controller; False (and `last_error`) if the
        app is not ready yet. Resumes from state.json and the Parquet memory if present."""
        if self.session is not None:
            return True
        info = registry.get_live(self.opts.policy)  # PolicyError: no use retrying
        try:
            backend = self._backend_factory(self.opts)
            params = dict(self.opts.policy_params)
            if info.name == "sair":   # the embedded model: one server for every app
                from sair_ray.live.shared_lm import shared_endpoint

                endpoint = shared_endpoint(self.cfg.policy)
                if endpoint is not None:
                    params["endpoint"] = endpoint
            policy = info.build(self.cfg, backend.pipeline, **params)
        except Exception as e:  # not deployed yet, dashboard down, ...: retried next round
            self.last_error = f"setup: {e}"
            log.warning("%s: not attached yet: %s", self.opts.app, e)
            return False
        self.policy_name = getattr(policy, "name", self.opts.policy)
        self.session = Session(backend, policy, self.cfg, learns=info.learns,
                               files=self.files, journal=True,
                               meta={"app": self.opts.app, "policy": self.policy_name},
                               on_event=self._on_event)
        dl = self.cfg.decision_log
        self.session.controller.log.set_rotation(dl.max_bytes, dl.max_files)
        self.last_error = ""
        mem = self.session.memory
        log.info("%s: attached (policy %s, memory %s, data %s)", self.opts.app,
                 self.policy_name, len(mem) if mem is not None else "off", self.dir)
        return True

    def _on_event(self, kind: str, rec: dict[str, Any]) -> None:
        (self.external if kind == "external" else self.actuation_errors).append(rec)

    # -- rounds ---------------------------------------------------------------------------
    def round(self, now: float) -> Decision | None:
        """One decision round at wall-clock `now`; None if it could not run. Never raises
        (an Exception): whatever goes wrong is a counted failed round."""
        cpu0 = time.thread_time()
        try:
            d = self._round(now)
        except Exception as e:  # logged (and in the decision log): the next round retries
            self._failed(now, f"round at {now:.0f}: {e!r}", exc=True)
            return None
        finally:
            self.cpu_s += time.thread_time() - cpu0
        if d is None:
            self._failed(now, self.last_error or "setup failed")
        else:
            self.failed_streak = 0
        return d

    def _round(self, now: float) -> Decision | None:
        if not self.setup():
            return None
        assert self.session is not None
        d = self.session.tick(now)
        safe_record(self.metrics, d, self.session.controller)
        with self._lock:
            self.rounds_ok += 1
            self.decide_ms += d.timings_ms.get("decide", 0.0)
            self.recent.append(summarize(d))
        self.last_error = d.error
        self.plan = Plan(self.opts.app, d.round, self._wall(now),
                         self.cfg.loop.decision_interval_s,
                         {name: t.replicas for name, t in d.targets.items()})
        self._publish(self.plan)
        self._note_serve_modes()
        return d

    def _note_serve_modes(self) -> None:
        """Serve-native mode: each change of the deployments' modes (following SAIR's plan
        or on Serve's fallback, and why) goes into the decision log as a `serve_modes`
        record, so a log shows which rounds Serve actually followed."""
        modes = _serve_modes(self.opts.app)
        if not modes or "modes" not in modes or modes["modes"] == self._noted_modes:
            return
        self._noted_modes = dict(modes["modes"])
        assert self.session is not None
        self.session.controller.note("serve_modes", modes)

    def _failed(self, now: float, why: str, *, exc: bool = False) -> None:
        self.rounds_failed += 1
        self.failed_streak += 1
        self.last_error = why
        if exc:
            log.exception("%s: round failed (%d in a row)", self.opts.app, self.failed_streak)
        try:
            self._publish_failing(now)
        except Exception:  # the plan is advisory; a failing round must not fail again
            log.exception("%s: could not publish the failing plan", self.opts.app)

    def _publish(self, plan: Plan) -> None:
        try:
            self.publish(plan)
        except Exception:  # publish_plan itself never raises; a replaced one might
            log.exception("%s: could not publish the plan", self.opts.app)

    def _publish_failing(self, now: float) -> None:
        # A failing controller sends Serve-native deployments to Serve's fallback at once
        # rather than after the plan goes stale.
        last = self.plan
        self.plan = Plan(self.opts.app, last.round if last else -1,
                         last.time if last else self._wall(now),
                         self.cfg.loop.decision_interval_s,
                         dict(last.targets) if last else {},
                         failing=self.last_error or "round failed")
        self.publish(self.plan)

    def _wall(self, now: float) -> float:
        """Round time `now` on the wall clock: the plan is read by the replicas, whose
        staleness check uses their own wall clock."""
        return now + (self._wall_offset() if self._wall_offset is not None else 0.0)

    def retry_delay(self) -> float:
        """Seconds until the next round: the interval, or after `BACKOFF_AFTER` failed
        rounds in a row, a doubling multiple of it (at most `max(interval,
        MAX_BACKOFF_S)`)."""
        interval = self.cfg.loop.decision_interval_s
        extra = self.failed_streak - BACKOFF_AFTER
        if extra <= 0:
            return interval
        return min(interval * 2.0 ** min(extra, 30), max(interval, MAX_BACKOFF_S))

    def run(self, stop: threading.Event) -> None:
        """Round every `decision_interval_s` until `stop` is set (real time), backing off
        while rounds keep failing. Returns only when `stop` is set."""
        timer = RoundTimer.starting(self.clock(), self.cfg.loop.decision_interval_s)
        while not stop.wait(max(0.0, timer.next_at - self.clock())):
            try:
                self.round(self.clock())
            except Exception as e:  # round() does not raise; if it ever does, go on
                self._failed(self.clock(), f"round: {e!r}", exc=True)
            now = self.clock()
            timer.advance(now)
            if self.failed_streak > BACKOFF_AFTER:
                timer.next_at = max(timer.next_at, now + self.retry_delay())
                log.warning("%s: %d failed rounds in a row (last: %s); next try in %.0f s",
                            self.opts.app, self.failed_streak, self.last_error,
                            timer.next_at - now)

    # -- reporting ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        wall = max(self.clock() - self.started_at, 1e-9)
        ctl = self.controller
        c = ctl.counters if ctl is not None else None
        mem = ctl.memory if ctl is not None else None
        with self._lock:
            last = self.recent[-1] if self.recent else None
        return {
            "app": self.opts.app, "policy": self.policy_name, "attached": c is not None,
            "data_dir": str(self.dir), "rounds": c.rounds if c else 0,
            "rounds_ok": self.rounds_ok, "rounds_failed": self.rounds_failed,
            "failed_streak": self.failed_streak,
            "restored_round": self.restored_round,
            # rounds a crash cut off between applying and saving, treated as applied
            "interrupted_rounds": (self.session.interrupted_rounds
                                   if self.session is not None else 0),
            "probes": c.probes if c else 0, "noops": c.noops if c else 0,
            "policy_failures": c.policy_failures if c else 0,
            "stored": c.stored if c else 0, "memory_size": len(mem) if mem is not None else 0,
            "epsilon": ctl.epsilon.epsilon if ctl else None,
            "learns": self.learns,
            # the reward of the action before the last decision, with its
            # docs/algorithm.md §3 terms
            "last_reward": (ctl.last_reward.to_dict()
                            if ctl and ctl.last_reward else None),
            "decision_interval_s": self.cfg.loop.decision_interval_s,
            "last_error": self.last_error, "last_decision": last,
            "external_changes": list(self.external)[-10:],
            "actuation_errors": list(self.actuation_errors)[-10:],
            "cpu_s": self.cpu_s, "decide_ms": self.decide_ms, "uptime_s": wall,
            # Controller overhead: CPU time of the rounds (this thread) per wall second. An
            # LLM served out of process (llama.cpp server, vLLM) is not included.
            "cpu_frac": self.cpu_s / wall,
            # Serve-native mode: each deployment's mode as the app's SAIRPolicy last
            # reported it; None when the app does not use it
            "serve_native": _serve_modes(self.opts.app),
        }

    def decisions(self, last: int = 10) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.recent)
        return items[-last:] if last > 0 else items

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _serve_modes(app: str) -> dict[str, Any] | None:
    try:
        return read_modes(app)
    except Exception as e:  # a status read must not fail on this
        return {"error": repr(e)}


def ray_serve_backend(opts: LiveOptions,
                      wall_offset: Callable[[], float] | None = None) -> Any:
    """The app's RayServeBackend; `wall_offset`: the loop's `SteadyClock.wall_offset`,
    so the replicas' metrics (wall-clock stamped) are read at the right times."""
    from sair_ray.backends.ray_serve import RayServeBackend

    return RayServeBackend(opts.app, profile=opts.profile,
                           options=opts.sair_config().pipeline,
                           dashboard_url=opts.dashboard_url, wall_offset=wall_offset)
