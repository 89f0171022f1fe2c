"""The controller session every host uses: files, save/restore, events, the round timer."""

from __future__ import annotations

from collections import deque

import pytest

from sair_ray.backends.ray_serve import ActuationError, ExternalChange
from sair_ray.backends.sim import SimBackend
from sair_ray.baselines import Threshold
from sair_ray.config import SAIRConfig
from sair_ray.decision_log import DecisionLog
from sair_ray.files import ControllerFiles, read_json, write_json_atomic
from sair_ray.registry import make_policy
from sair_ray.session import RoundTimer, Session, SteadyClock, controller_state

CFG = SAIRConfig.from_dict({"loop": {"decision_interval_s": 10, "settle_s": 2}})


def _session(tmp_path, policy: str = "threshold", backend=None, **kw) -> Session:
    backend = backend or SimBackend("image_classification", seed=3)
    return Session(backend, make_policy(policy, CFG, pipeline=backend.pipeline), CFG,
                   learns=policy.startswith("sair"), files=ControllerFiles.in_dir(tmp_path),
                   meta={"app": "a"}, **kw)


def test_layout_is_defined_once():
    f = ControllerFiles.in_dir("/d")
    assert [str(p) for p in (f.memory, f.state, f.log, f.intent)] == [
        "/d/memory", "/d/state.json", "/d/decisions.jsonl", "/d/applying.json"]


def test_rounds_are_saved_and_a_new_session_resumes(tmp_path):
    s = _session(tmp_path, "sair-retrieval")
    for t in range(10, 110, 10):
        s.tick(float(t))
    saved = read_json(tmp_path / "state.json")
    assert saved["version"] == 1 and saved["app"] == "a" and saved["saved_at"] == 100.0
    assert saved["controller"]["round"] == 10
    stored = s.controller.counters.stored
    s.close()
    again = _session(tmp_path, "sair-retrieval")
    assert again.restored_round == 10 and len(again.memory or []) == stored
    assert again.tick(110.0).round == 10
    again.close()


def test_an_operator_state_of_earlier_releases_is_read(tmp_path):
    s = _session(tmp_path)
    s.tick(10.0)
    bare = s.controller.state()
    s.close()
    assert controller_state(bare) is bare
    write_json_atomic(tmp_path / "state.json", bare)
    again = _session(tmp_path)
    assert again.restored_round == 1
    again.close()
    with pytest.raises(ValueError, match="version 7"):
        controller_state({"version": 7, "controller": bare})
    with pytest.raises(TypeError):
        controller_state([1])


class _Shared(SimBackend):
    """The simulator with the optional capabilities of a live backend."""

    def __init__(self) -> None:
        super().__init__("image_classification", seed=3)
        self.external_changes: deque = deque()
        self.actuation_errors: deque = deque([ActuationError(1.0, "inference", "rate", "x")])

    def sync(self, now: float) -> list[ExternalChange]:
        ch = [ExternalChange(now, "preprocess", "replicas", 1, 1)]
        self.external_changes.extend(ch)
        return ch


def test_external_changes_are_held_and_events_logged(tmp_path):
    seen = []
    s = _session(tmp_path, backend=_Shared(), on_event=lambda k, r: seen.append(k))
    d = s.tick(10.0)
    assert d.action.delta("preprocess").is_noop   # held for its cooldowns
    assert s.controller.validator.cooldowns.last_down["preprocess"] == 10.0
    s.close()
    kinds = [r["kind"] for r in DecisionLog.read(tmp_path / "decisions.jsonl")]
    assert sorted(seen) == ["actuation_error", "external"]
    assert {"external", "actuation_error", "decision"} <= set(kinds)


def test_a_failed_round_is_logged_and_raised(tmp_path):
    s = _session(tmp_path)

    def broken(start: float, end: float):
        raise ConnectionError("dashboard down")

    s.backend.observe = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        s.tick(10.0)
    s.close()
    failed = [r for r in DecisionLog.read(tmp_path / "decisions.jsonl")
              if r["kind"] == "round_failed"]
    assert failed == [{"kind": "round_failed", "round": 0, "time": 10.0,
                       "error": "ConnectionError: dashboard down"}]


def test_close_closes_the_policy(tmp_path):
    closed = []

    class Closing(Threshold):
        def close(self) -> None:
            closed.append(True)

    backend = SimBackend("image_classification", seed=3)
    Session(backend, Closing(), CFG, learns=False).close()
    assert closed == [True]


def test_round_timer_skips_missed_rounds_instead_of_bursting():
    t = RoundTimer.starting(0.0, 10.0)
    assert not t.due(9.9) and t.due(10.0)
    t.advance(10.5)
    assert t.next_at == 20.0
    t.advance(47.0)   # the round of 20 ended at 47: 30 and 40 are skipped
    assert t.next_at == 57.0


class _Clocks:
    """A wall clock that an NTP step can move and the monotonic clock beside it."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_700_000_000.0, 50.0

    def pass_(self, s: float) -> None:
        self.wall += s
        self.mono += s


def test_steady_clock_is_the_wall_clock_unmoved_by_its_steps():
    c = _Clocks()
    clock = SteadyClock(wall=lambda: c.wall, monotonic=lambda: c.mono)
    assert clock() == c.wall and clock.wall_offset() == 0.0
    c.pass_(10)
    assert clock() == c.wall
    c.wall -= 3600.0            # NTP steps the system clock back an hour
    c.pass_(10)
    assert clock() == 1_700_000_020.0 and clock.wall_offset() == -3600.0
    c.wall += 7200.0            # and then forward two
    assert clock() == 1_700_000_020.0 and clock.wall_offset() == 3600.0
    c.wall -= 3600.0 - 0.2      # back within a fraction of a second: read noise, ignored
    assert clock.wall_offset() == 0.0


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_clock_step_neither_stalls_nor_skips_rounds_or_cooldowns(step):
    c = _Clocks()
    clock = SteadyClock(wall=lambda: c.wall, monotonic=lambda: c.mono)
    timer = RoundTimer.starting(clock(), 30.0)
    changed_at = clock()                  # a stage resized now: cooldown from here
    c.pass_(20)
    c.wall += step
    assert not timer.due(clock())         # a step forward would have skipped ahead...
    c.pass_(10)
    assert timer.due(clock())             # ...one back would have stalled an hour
    assert clock() - changed_at == 30.0   # what the validator's cooldowns count
    timer.advance(clock())
    assert timer.next_at - clock() == 30.0
