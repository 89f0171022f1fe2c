"""Serve-native mode: SAIR as a Ray Serve application-level autoscaling policy.

    applications:
      - name: myapp
        autoscaling_policy:
          policy_function: sair_ray.serve:SAIRPolicy
          policy_kwargs: {sla_ms: 500, policy: sair, config: {loop: {decision_interval_s: 15}}}

Serve's controller builds `SAIRPolicy(**policy_kwargs)` once and calls it about every
0.1 s with an `AutoscalingContext` per deployment; it must return a replica target per
deployment at once. So the policy never decides anything itself: the app's detached SAIR
controller (sair_ray/live/) decides every round and publishes its validated plan (the
replica target of each stage) to Ray's internal KV (`publish_plan`, called by
`LiveLoop.round`); the policy reads the latest plan through a background thread and
answers every call from that cached copy. When the plan is missing, stale (older than
`stale_rounds` decision intervals) or the controller's last round failed, each deployment
falls back to Serve's own default policy (`replica_queue_length_autoscaling_policy`), so
serving never waits on SAIR. Which mode each deployment is in goes into Serve's policy
state, the Serve controller's log, and the KV (`read_modes`; `sair status --json`).

Ray (2.60) serialises this module by value into Serve's controller
(`cloudpickle.register_pickle_by_value`), so everything the policy needs from the rest of
sair_ray is imported inside functions, by reference, where it runs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The Serve controller's logger, so mode changes show up in its log.
log = logging.getLogger("ray.serve")

POLICY_PATH = "sair_ray.serve:SAIRPolicy"
KV_NAMESPACE = "sair"
MODE_KEY = "sair_mode"   # in each deployment's Serve policy state

# Modes of a deployment: "sair" follows the plan; the others are reasons for the fallback.
SAIR = "sair"
MISSING = "fallback:no-plan"
STALE = "fallback:stale"
FAILING = "fallback:controller-failing"
NOT_IN_PLAN = "fallback:not-in-plan"


@dataclass(frozen=True)
class Plan:
    """The SAIR controller's latest validated replica targets for one app.

    `time` is the wall-clock time of the round that made them and `interval_s` the
    controller's decision interval, so a reader can tell how many rounds old it is.
    `failing` is non-empty (the error) when the controller's latest round failed; the
    targets are then those of its last good round."""

    app: str
    round: int
    time: float
    interval_s: float
    targets: Mapping[str, int] = field(default_factory=dict)
    failing: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"app": self.app, "round": self.round, "time": self.time,
                           "interval_s": self.interval_s, "targets": dict(self.targets),
                           "failing": self.failing}).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Plan:
        d = json.loads(raw)
        return cls(app=str(d["app"]), round=int(d["round"]), time=float(d["time"]),
                   interval_s=float(d["interval_s"]),
                   targets={str(k): int(v) for k, v in d["targets"].items()},
                   failing=str(d.get("failing") or ""))


def plan_key(app: str) -> bytes:
    return f"plan:{app}".encode()


def modes_key(app: str) -> bytes:
    return f"serve-modes:{app}".encode()


# -- the decision (pure) ------------------------------------------------------------------
def plan_mode(plan: Plan | None, now: float, stale_rounds: float = 2.0) -> str:
    """The mode the whole app is in given its latest plan: SAIR, or why not."""
    if plan is None:
        return MISSING
    if plan.failing:
        return FAILING
    if now - plan.time > stale_rounds * plan.interval_s:
        return STALE
    return SAIR


def clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


def default_target(ctx: Any) -> float:
    """Serve's own request-based decision for this deployment (before Serve's wrapper
    applies scaling factors, delays and bounds, as it does to any policy's answer)."""
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

    n, _ = replica_queue_length_autoscaling_policy(ctx)
    return n


def decide(contexts: Mapping[Any, Any], plan: Plan | None, now: float,
           stale_rounds: float = 2.0,
           fallback: Callable[[Any], float] = default_target
           ) -> tuple[dict[Any, float], dict[Any, str]]:
    """Replica targets and modes per deployment id: the plan's target clamped into the
    deployment's (capacity-adjusted) bounds where the plan is fresh and names it, Serve's
    default policy elsewhere."""
    app_mode = plan_mode(plan, now, stale_rounds)
    targets: dict[Any, float] = {}
    modes: dict[Any, str] = {}
    for dep_id, ctx in contexts.items():
        mode = app_mode
        if mode == SAIR and plan is not None and ctx.deployment_name in plan.targets:
            targets[dep_id] = clamp(plan.targets[ctx.deployment_name],
                                    ctx.capacity_adjusted_min_replicas,
                                    ctx.capacity_adjusted_max_replicas)
        else:
            if mode == SAIR:
                mode = NOT_IN_PLAN
            targets[dep_id] = fallback(ctx)
        modes[dep_id] = mode
    return targets, modes


# -- the KV (blocking; never called from Serve's control loop) ------------------------------
def _kv() -> Any:
    """Ray's internal KV module if this process is connected to Ray, else None. Ray is not
    imported here: a process without it (the simulator, the unit tests) publishes nothing."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from ray.experimental import internal_kv

    return internal_kv if internal_kv._internal_kv_initialized() else None


def publish_plan(plan: Plan) -> bool:
    """Write `plan` for the app's policy to read; False (and a log line) if it could not."""
    kv = _kv()
    if kv is None:
        return False
    try:
        kv._internal_kv_put(plan_key(plan.app), plan.to_json(), overwrite=True,
                            namespace=KV_NAMESPACE)
        return True
    except Exception as e:  # the plan is advisory: Serve falls back without it
        logging.getLogger(__name__).warning("%s: could not publish the plan: %s",
                                            plan.app, e)
        return False


def fetch_plan(app: str) -> Plan | None:
    """The app's latest published plan, or None (none yet, or unreadable)."""
    kv = _kv()
    raw = kv._internal_kv_get(plan_key(app), namespace=KV_NAMESPACE) if kv else None
    return Plan.from_json(raw) if raw else None


MODES = (SAIR, MISSING, STALE, FAILING, NOT_IN_PLAN)
_mode_gauge: Any = None


def export_modes(app: str, modes: Mapping[str, str]) -> None:
    """The modes as a Ray metric (`ray_sair_serve_mode{app, deployment, mode}`: 1 for the
    deployment's mode, 0 for the others), exported by the process that runs the policy
    (Serve's controller) next to Serve's own metrics."""
    global _mode_gauge
    if _mode_gauge is None:
        from ray.util import metrics

        _mode_gauge = metrics.Gauge(
            "sair_serve_mode", description="Serve-native mode of each deployment: 1 for "
            "its mode (sair, or the fallback's reason), 0 for the others.",
            tag_keys=("app", "deployment", "mode"))
    for dep, mode in modes.items():
        for m in MODES:
            _mode_gauge.set(1.0 if m == mode else 0.0,
                            tags={"app": app, "deployment": dep, "mode": m})


def write_modes(app: str, modes: Mapping[str, str], plan_round: int | None,
                now: float) -> None:
    """Report the modes: the KV (`read_modes`, `sair status`) and a Ray metric."""
    try:
        export_modes(app, modes)
    except Exception as e:  # a metric is a nicety: the KV record below is what status reads
        log.debug("SAIRPolicy(%s): could not export the modes as a metric: %s", app, e)
    kv = _kv()
    if kv is not None:
        kv._internal_kv_put(modes_key(app), json.dumps(
            {"time": now, "plan_round": plan_round, "modes": dict(modes)}).encode(),
            overwrite=True, namespace=KV_NAMESPACE)


def read_modes(app: str) -> dict[str, Any] | None:
    """What the app's SAIRPolicy last reported: {time, plan_round, modes: {deployment:
    mode}}, or None (the app does not run in Serve-native mode, or not yet)."""
    kv = _kv()
    raw = kv._internal_kv_get(modes_key(app), namespace=KV_NAMESPACE) if kv else None
    return json.loads(raw) if raw else None


# -- the policy -----------------------------------------------------------------------------
class _Shared:
    """What the policy and its poll thread share. The thread holds this, never the policy,
    so a policy Serve replaces (on redeploy) is collected and its thread stops."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.modes: dict[str, str] = {}
        self.stop = threading.Event()


def _poll(shared: _Shared, app: str, poll_s: float, fetch: Callable[[str], Plan | None],
          report: Callable[[str, Mapping[str, str], int | None, float], None],
          start_controller: Callable[[str], Any] | None) -> None:
    if start_controller is not None:
        try:
            start_controller(app)
        except Exception as e:  # serving goes on without SAIR: the fallback scales it
            log.warning("SAIRPolicy(%s): could not start the SAIR controller: %s", app, e)
    reported: dict[str, str] | None = None
    while not shared.stop.is_set():
        try:
            shared.plan = fetch(app)   # one reference assignment: readers never see half
        except Exception as e:
            log.warning("SAIRPolicy(%s): reading the plan failed: %s", app, e)
            shared.plan = None
        modes = dict(shared.modes)
        if modes and modes != reported:
            try:
                plan = shared.plan
                report(app, modes, plan.round if plan else None, time.time())
                reported = modes
            except Exception as e:
                log.warning("SAIRPolicy(%s): reporting modes failed: %s", app, e)
        shared.stop.wait(poll_s)


def _ensure_controller(opts: Mapping[str, Any]) -> Callable[[str], Any]:
    def start(app: str) -> Any:
        from sair_ray.live.handle import ensure_attached

        return ensure_attached(app, policy=opts.get("policy"),
                               config=controller_config(opts.get("config"),
                                                        opts.get("sla_ms")),
                               profile=opts.get("profile"))
    return start


def controller_config(config: Any, sla_ms: float | None) -> Any:
    """The controller's SAIR config: `config` (a mapping, a YAML path or None) with the
    `sla_ms` shorthand of policy_kwargs as `pipeline.sla_ms`."""
    if sla_ms is None:
        return config
    from sair_ray.config import SAIRConfig

    if config is None or isinstance(config, Mapping):
        cfg = SAIRConfig.from_dict(config)
    else:
        cfg = SAIRConfig.from_yaml(config)
    return cfg.replace(**{"pipeline.sla_ms": float(sla_ms)}).to_dict()


class SAIRPolicy:
    """Ray Serve application-level autoscaling policy following SAIR's plan.

    policy_kwargs (all optional, JSON): `sla_ms` (the app's end-to-end p99 target; needed
    when the app has no profile: `pipeline.sla_ms`), `app` (default: the app Serve calls
    it for),
    `stale_rounds` (2: a plan older than this many decision intervals is stale),
    `poll_s` (1.0: how often the plan is re-read), `start_controller` (true: start the
    app's SAIR controller if none is running), and for that controller `policy` (default
    $SAIR_POLICY, else "sair"), `config` (SAIRConfig as a mapping or a YAML path) and
    `profile` (a profile YAML path).

    `fetch`, `report` and `clock` are for tests and the benchmark (not JSON, so Serve never
    passes them).
    """

    def __init__(self, app: str | None = None, *, stale_rounds: float = 2.0,
                 poll_s: float = 1.0, start_controller: bool = True,
                 policy: str | None = None, config: Any = None, profile: str | None = None,
                 sla_ms: float | None = None,
                 fetch: Callable[[str], Plan | None] = fetch_plan,
                 report: Callable[[str, Mapping[str, str], int | None, float], None]
                 = write_modes,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.stale_rounds = float(stale_rounds)
        self.poll_s = float(poll_s)
        self._start = (_ensure_controller({"policy": policy, "config": config,
                                           "profile": profile, "sla_ms": sla_ms})
                       if start_controller else None)
        self._fetch, self._report, self._clock = fetch, report, clock
        self._shared = _Shared()
        self._thread: threading.Thread | None = None
        self._last_modes: dict[Any, str] = {}

    def _ensure_polling(self, app: str) -> None:
        self.app = app
        self._thread = threading.Thread(
            target=_poll, args=(self._shared, app, self.poll_s, self._fetch, self._report,
                                self._start), name=f"sair-serve-policy-{app}", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._shared.stop.set)

    def close(self) -> None:
        self._shared.stop.set()

    @property
    def plan(self) -> Plan | None:
        return self._shared.plan

    def __call__(self, contexts: Mapping[Any, Any]
                 ) -> tuple[dict[Any, float], dict[Any, dict[str, Any]]]:
        if self._thread is None and contexts:
            self._ensure_polling(self.app or next(iter(contexts.values())).app_name)
        targets, modes = decide(contexts, self._shared.plan, self._clock(),
                                self.stale_rounds)
        if modes != self._last_modes:
            self._note_change(contexts, modes)
        return targets, {d: {MODE_KEY: m} for d, m in modes.items()}

    def _note_change(self, contexts: Mapping[Any, Any], modes: dict[Any, str]) -> None:
        # Only on a change: a log line per call would flood Serve's controller log.
        for d, m in modes.items():
            if self._last_modes.get(d) != m:
                log.info("SAIRPolicy(%s): %s -> %s", self.app, contexts[d].deployment_name, m)
        self._last_modes = dict(modes)
        self._shared.modes = {contexts[d].deployment_name: m for d, m in modes.items()}

