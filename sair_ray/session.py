"""One controller with everything it owns, the same for every host.

A `Session` builds a `Controller` with its policy's experience memory and decision log,
resumes it from the saved state (`state.json`), runs its rounds and saves after each, and
closes controller, memory and policy in that order. The live actor (`live/loop.py`), the
Kubernetes operator (`operator/runner.py`) and the bench (`bench/grid.py`) host it; they
differ only in where the files are (`ControllerFiles`, or none) and in how they keep time,
for which `RoundTimer` is the one schedule of real-time hosts and `SteadyClock` their
clock (the bench runs in simulated time).

A round (`Session.tick`) is: adopt what others changed in the pipeline (backends that can
tell, `AdoptsExternalChanges`), `Controller.tick`, move the backend's events to the
decision log (`ReportsEvents`), save the state. A round that raises is recorded in the log
(`round_failed`) and re-raised; the host decides what follows.

With `journal=True` every apply is preceded by a write-ahead record (`applying.json`), so a
process that dies between acting and saving is settled at the next start (see
`Controller.resume_interrupted`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sair_ray.backends.base import AdoptsExternalChanges, Backend, ReportsEvents
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.decision import Decision
from sair_ray.embedding import phi_dim
from sair_ray.files import ControllerFiles, read_json, write_json_atomic
from sair_ray.memory import ExperienceMemory
from sair_ray.policy.base import Policy
from sair_ray.types import Action, Context, PipelineSpec, StageAllocation, StageDelta

log = logging.getLogger(__name__)

# state.json: {"version", <the host's meta: app, policy>, "saved_at", "controller"}
STATE_VERSION = 1

# (kind in the decision log, event) for every backend event a round drains
EventSink = Callable[[str, dict[str, Any]], None]


class SteadyClock:
    """The clock of a real-time host: wall-clock seconds that never jump. It reads the
    wall clock once, when made, and adds the monotonic time elapsed since, so a step of the
    system clock (NTP, a VM resumed, an operator's `date -s`) moves neither the round
    schedule (`RoundTimer`) nor the cooldowns the validator counts from round times, and
    round times stay close to the wall clock for the records (decision log, state.json).

    What is stamped by other processes (the replicas' metrics, the plan Serve-native
    deployments check for staleness) is on their wall clock: `wall_offset()` is what to add
    to a time of this clock to get there. It is 0 until the system clock has stepped by
    more than `STEP_S` (the two clocks are read a few microseconds apart, so a smaller
    difference is noise, and a window a fraction of a second off changes nothing).
    """

    STEP_S = 1.0

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._origin = wall() - monotonic()

    def __call__(self) -> float:
        return self._origin + self._monotonic()

    def wall_offset(self) -> float:
        off = self._wall() - self()
        return off if abs(off) > self.STEP_S else 0.0


def wall_offset_of(clock: Callable[[], float]) -> Callable[[], float] | None:
    """The clock's `wall_offset` when it is a `SteadyClock`; None for a plain clock (a
    test's, or `time.time`), whose times are taken as wall-clock times."""
    return clock.wall_offset if isinstance(clock, SteadyClock) else None


@dataclass
class RoundTimer:
    """When a real-time host's next round is due: every `interval` seconds. A round that
    ends past its successor's slot (a slow policy, an API timeout) skips the missed slots
    instead of bursting to catch up: rounds closer than the interval would see windows
    too short to measure."""

    interval: float
    next_at: float

    @classmethod
    def starting(cls, now: float, interval: float) -> RoundTimer:
        return cls(interval, now + interval)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def advance(self, now: float) -> None:
        """The round of `next_at` is done (or started); `now` is the time."""
        self.next_at += self.interval
        if self.next_at <= now:
            self.next_at = now + self.interval


class Session:
    """A controller for `backend` deciding with `policy`. `learns` (from the policy
    registry) switches exploration and the experience memory on; the memory lives in
    `files.memory`. `meta` goes into every saved state (who saved it)."""

    def __init__(self, backend: Backend, policy: Policy, cfg: SAIRConfig, *, learns: bool,
                 files: ControllerFiles | None = None, journal: bool = False,
                 meta: Mapping[str, Any] | None = None,
                 on_event: EventSink | None = None) -> None:
        self.backend = backend
        self.policy = policy
        self.learns = learns
        self.files = files = files or ControllerFiles()
        self.meta = dict(meta or {})
        self.on_event = on_event
        self.restored_round: int | None = None
        self.interrupted_rounds = 0   # rounds a crash cut off mid-apply, found at start
        self._journal = files.intent if journal else None
        files.prepare()   # the controller's directory: 0700, narrowed if it is wider
        memory = None
        if learns and files.memory is not None:
            memory = ExperienceMemory(files.memory, phi_dim(len(backend.pipeline.stages)),
                                      cfg.memory, loo_k=cfg.retrieval.loo_k)
        seen: Backend = backend
        if self._journal is not None:
            seen = _JournaledBackend(backend, self._journal, self._round_applying)
        try:
            self.controller = Controller(seen, policy, cfg, memory=memory,
                                         log_path=str(files.log) if files.log else None,
                                         explore=learns, learn=learns)
        except BaseException:
            if memory is not None:
                memory.close()  # a memory left open keeps its lock
            raise
        self._restore()
        self._resolve_interrupted()

    @property
    def memory(self) -> ExperienceMemory | None:
        return self.controller.memory

    # -- rounds ---------------------------------------------------------------------------
    def tick(self, now: float) -> Decision:
        """One round at `now`, saved. A round that raises is noted in the decision log with
        the backend's events of the round (stages an outage cut off), then re-raised."""
        attempted = self.controller.counters.rounds
        try:
            if isinstance(self.backend, AdoptsExternalChanges):
                self.controller.hold([ch.stage for ch in self.backend.sync(now)], now)
            d = self.controller.tick(now)
        except Exception as e:
            self._round_failed(attempted, now, e)
            # Whatever part of the round's action reached the pipeline, the next
            # observation adopts it, so the intent is settled.
            if self._journal is not None:
                self._journal.unlink(missing_ok=True)
            raise
        self._drain_events()
        try:
            self.save(now)
        except Exception as e:   # e.g. a full disk: the round's action stands, unsaved
            self._round_failed(attempted, now, e)
            raise
        return d

    def _round_failed(self, attempted: int, now: float, e: Exception) -> None:
        """Note a failed round (and the backend's events of it) in the decision log; a log
        that cannot be written either (the same full disk) must not hide the round's error."""
        try:
            self.controller.note("round_failed", {"round": attempted, "time": now,
                                                  "error": f"{type(e).__name__}: {e}"[:1000]})
        except Exception as note_error:
            log.error("could not log the failed round %d: %s", attempted, note_error)
        try:
            self._drain_events()
        except Exception as drain_error:
            log.error("could not log the events of round %d: %s", attempted, drain_error)

    def _drain_events(self) -> None:
        b = self.backend
        if not isinstance(b, ReportsEvents):
            return
        for kind, events in (("external", b.external_changes),
                             ("actuation_error", b.actuation_errors)):
            while events:
                rec = events.popleft().to_dict()
                self.controller.note(kind, rec)
                if self.on_event is not None:
                    self.on_event(kind, rec)

    # -- state ----------------------------------------------------------------------------
    def save(self, now: float) -> None:
        """Write the controller's state (what its memory does not hold) atomically."""
        if self.files.state is not None:
            write_json_atomic(self.files.state, {"version": STATE_VERSION, **self.meta,
                                                 "saved_at": now,
                                                 "controller": self.controller.state()})
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)  # only now: the saved state covers it

    def _restore(self) -> None:
        path = self.files.state
        saved = read_json(path) if path is not None else None
        if saved is None:
            return
        try:
            self.controller.restore(controller_state(saved))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s); starting fresh", path, e)
            return
        self.restored_round = self.controller.counters.rounds
        log.info("resumed at round %d from %s", self.restored_round, path)

    def _round_applying(self) -> int:
        return self.controller.counters.rounds - 1  # tick counts its round before acting

    def _resolve_interrupted(self) -> None:
        """A previous run died between applying an action and saving its state: its
        write-ahead record is still there (`Controller.resume_interrupted`)."""
        path = self._journal
        intent = read_json(path) if path is not None else None
        if path is None or intent is None:
            return
        try:
            rnd, at = int(intent["round"]), float(intent["time"])
            before = {k: StageAllocation(**v) for k, v in intent["before"].items()}
            targets = {k: StageAllocation(**v) for k, v in intent["targets"].items()}
        except (KeyError, TypeError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s)", path, e)
            path.unlink(missing_ok=True)
            return
        action = delta(before, targets)
        if self.controller.resume_interrupted(rnd, at, action, intent["targets"]):
            self.interrupted_rounds += 1
            log.warning("round %d was cut off while applying %s; treating it as applied",
                        rnd, action.to_dict())
            self.save(at)
        path.unlink(missing_ok=True)

    # -- end ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the decision log, then the memory (its snapshot is written), then the
        policy (an LLM's worker threads)."""
        try:
            self.controller.close()
            if self.controller.memory is not None:
                self.controller.memory.close()
        finally:
            close = getattr(self.policy, "close", None)  # optional in the Policy port
            if callable(close):
                close()


def controller_state(saved: Any) -> Any:
    """The `Controller.state()` inside a saved state.json. Operators of earlier releases
    saved the bare controller state; it is read as it is."""
    if not isinstance(saved, dict):
        raise TypeError(f"state is a JSON {type(saved).__name__}, not an object")
    if "version" not in saved and "round" in saved:
        return saved
    if saved.get("version") != STATE_VERSION:
        raise ValueError(f"state version {saved.get('version')} != {STATE_VERSION}")
    return saved["controller"]


def delta(before: Mapping[str, StageAllocation],
          targets: Mapping[str, StageAllocation]) -> Action:
    """The action that moves `before` to `targets` (stages in both)."""
    return Action({n: StageDelta(t.replicas - before[n].replicas, t.cpu_m - before[n].cpu_m,
                                 t.mem_mb - before[n].mem_mb,
                                 round(t.rate - before[n].rate, 6))
                   for n, t in targets.items() if n in before})


class _JournaledBackend:
    """The backend as the controller sees it, with a write-ahead record of each apply.

    Before an action goes to the backend, the round, its time, the allocation it starts
    from and its targets are written atomically to `path`; the session removes the file
    once the round's state is saved. A file still there at start-up means the previous
    run died between acting and saving. Everything else is passed through.
    """

    def __init__(self, inner: Backend, path: Any, round_no: Callable[[], int]) -> None:
        self._inner = inner
        self._path = path
        self._round_no = round_no
        self._before: dict[str, StageAllocation] = {}

    @property
    def pipeline(self) -> PipelineSpec:
        return self._inner.pipeline

    def observe(self, start: float, end: float) -> Context:
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
