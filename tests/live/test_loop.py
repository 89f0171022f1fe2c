"""LiveLoop (the real-time controller host) on the real simulator backend: rounds, state
persistence and resume, failure handling, the real-time runner and backend events."""

from __future__ import annotations

import json
import threading
import time
from collections import deque

import pytest

from sair_ray.backends.ray_serve import ExternalChange, ServeSetupError
from sair_ray.backends.sim import SimBackend
from sair_ray.decision_log import DecisionLog
from sair_ray.files import app_data_dir, read_json, write_json_atomic
from sair_ray.live.loop import LiveLoop, LiveOptions

CFG = {"loop": {"decision_interval_s": 10, "settle_s": 2},
       "validator": {"cooldown_up_s": 10, "cooldown_down_s": 30}}


def _opts(tmp_path, policy: str = "threshold") -> LiveOptions:
    return LiveOptions(app="image_classification", config=CFG, policy=policy,
                       data_dir=str(tmp_path))


def _sim(opts: LiveOptions) -> SimBackend:
    return SimBackend(opts.app, seed=3)


def test_rounds_log_decisions_and_persist_state(tmp_path) -> None:
    loop = LiveLoop(_opts(tmp_path), backend_factory=_sim)
    decisions = [loop.round(t) for t in range(10, 130, 10)]
    assert all(d is not None for d in decisions)
    # 50 req/s against one ~17 req/s preprocess replica: the threshold policy adds replicas
    assert decisions[-1].context.stages[0].replicas > 1
    st = loop.status()
    assert st["rounds"] == 12 and st["rounds_ok"] == 12 and st["rounds_failed"] == 0
    assert st["last_decision"]["round"] == 11
    assert [d["round"] for d in loop.decisions(3)] == [9, 10, 11]
    state = read_json(app_data_dir("image_classification", tmp_path) / "state.json")
    assert state["controller"]["round"] == 12 and state["policy"] == "threshold"
    loop.close()
    kinds = [r["kind"] for r in DecisionLog.read(loop.dir / "decisions.jsonl")]
    assert kinds.count("decision") == 12


def test_restart_resumes_round_and_cooldowns(tmp_path) -> None:
    first = LiveLoop(_opts(tmp_path), backend_factory=_sim)
    for t in range(10, 70, 10):
        first.round(t)
    saved = first.controller.state()
    first.close()
    second = LiveLoop(_opts(tmp_path), backend_factory=_sim)
    assert second.setup()
    assert second.restored_round == 6
    assert second.controller.state()["cooldowns"] == saved["cooldowns"]
    d = second.round(70)
    assert d is not None and d.round == 6
    second.close()


def test_unreadable_state_starts_fresh(tmp_path) -> None:
    path = app_data_dir("image_classification", tmp_path) / "state.json"
    write_json_atomic(path, {"version": 999})
    loop = LiveLoop(_opts(tmp_path), backend_factory=_sim)
    assert loop.setup() and loop.restored_round is None
    loop.close()


def test_setup_failures_are_retried_not_fatal(tmp_path) -> None:
    calls = {"n": 0}

    def flaky(opts: LiveOptions) -> SimBackend:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ServeSetupError("app 'image_classification' is still deploying")
        return _sim(opts)

    loop = LiveLoop(_opts(tmp_path), backend_factory=flaky)
    assert loop.round(10) is None and loop.round(20) is None
    assert loop.status()["rounds_failed"] == 2
    assert "still deploying" in loop.status()["last_error"]
    assert loop.round(30) is not None
    assert loop.status()["attached"] and loop.status()["last_error"] == ""
    loop.close()


def test_backend_events_go_to_the_decision_log(tmp_path) -> None:
    sim = _sim(_opts(tmp_path))
    sim.external_changes = deque([ExternalChange(5.0, "preprocess", "replicas", 2, 4)])
    sim.actuation_errors = deque()
    loop = LiveLoop(_opts(tmp_path), backend_factory=lambda o: sim)
    loop.round(10)
    assert loop.status()["external_changes"][0]["observed"] == 4
    loop.close()
    ext = [r for r in DecisionLog.read(loop.dir / "decisions.jsonl") if r["kind"] == "external"]
    assert ext == [{"kind": "external", "time": 5.0, "stage": "preprocess",
                    "field": "replicas", "expected": 2, "observed": 4}]


def test_real_time_runner_ticks_every_interval_until_stopped(tmp_path) -> None:
    start = time.time()
    opts = LiveOptions(app="image_classification", policy="static", data_dir=str(tmp_path),
                       config={"loop": {"decision_interval_s": 1, "settle_s": 0}})
    loop = LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=1, start=start))
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    time.sleep(3.5)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert 2 <= loop.status()["rounds_ok"] <= 4
    times = [d["time"] for d in loop.decisions(10)]
    assert all(0.8 < b - a < 1.5 for a, b in zip(times, times[1:], strict=False))
    loop.close()


def test_policy_params_reach_the_policy_and_bad_ones_are_refused(tmp_path) -> None:
    from sair_ray.live import PolicyError
    from sair_ray.live.handle import live_options

    # the same overload as above, under thresholds no processing p99 reaches: held
    opts = live_options("image_classification", CFG, "threshold", data_dir=tmp_path,
                        policy_params={"cpu_p99_ms": 1e9, "gpu_p99_ms": 1e9})
    loop = LiveLoop(opts, backend_factory=_sim)
    decisions = [loop.round(t) for t in range(10, 130, 10)]
    assert decisions[-1] is not None and decisions[-1].context.stages[0].replicas == 1
    loop.close()
    with pytest.raises(PolicyError, match="unexpected keyword argument 'cpu_p99'"):
        live_options("image_classification", policy="threshold", data_dir=tmp_path,
                     policy_params={"cpu_p99": 50})
    with pytest.raises(PolicyError, match="thresholds must be > 0"):
        live_options("image_classification", policy="threshold", data_dir=tmp_path,
                     policy_params={"cpu_p99_ms": 0})
    with pytest.raises(PolicyError, match="from the SAIR config"):
        live_options("image_classification", policy="sair-retrieval", data_dir=tmp_path,
                     policy_params={"k": 3})


def test_unknown_and_simulator_only_policies_are_refused(tmp_path) -> None:
    from sair_ray.live import PolicyError
    from sair_ray.live.handle import live_options

    with pytest.raises(PolicyError, match="unknown policy 'magic'.*threshold"):
        live_options("image_classification", policy="magic", data_dir=tmp_path)
    with pytest.raises(PolicyError, match="'oracle' is clairvoyant"):
        live_options("image_classification", policy="oracle", data_dir=tmp_path)
    loop = LiveLoop(_opts(tmp_path, "magic"), backend_factory=_sim)
    assert loop.round(10) is None and "unknown policy" in loop.status()["last_error"]


def test_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    p = tmp_path / "a" / "state.json"
    for i in range(3):
        write_json_atomic(p, {"i": i})
    assert json.loads(p.read_text()) == {"i": 2}
    assert [f.name for f in p.parent.iterdir()] == ["state.json"]


def test_sair_policy_remembers_and_resumes_from_parquet_memory(tmp_path) -> None:
    loop = LiveLoop(_opts(tmp_path, "sair-retrieval"), backend_factory=_sim)
    for t in range(10, 310, 10):
        loop.round(t)
    st = loop.status()
    assert loop.learns and st["rounds_ok"] == 30
    assert st["stored"] > 0 and st["memory_size"] == st["stored"]
    loop.close()
    again = LiveLoop(_opts(tmp_path, "sair-retrieval"), backend_factory=_sim)
    assert again.setup()
    assert again.status()["memory_size"] == st["stored"]
    assert again.restored_round == 30
    again.close()


class _SimWithUserChange(SimBackend):
    """The real simulator plus one 'user change' reported by `sync`, as RayServeBackend
    reports a redeploy it did not make."""

    def __init__(self) -> None:
        super().__init__("image_classification", seed=3)
        self.external_changes: deque = deque()
        self.pending = [ExternalChange(10.0, "preprocess", "replicas", 1, 1)]

    def sync(self, now: float) -> list[ExternalChange]:
        new, self.pending = self.pending, []
        self.external_changes.extend(new)
        return new


def test_a_stage_changed_by_someone_else_is_held_for_its_cooldowns(tmp_path) -> None:
    loop = LiveLoop(_opts(tmp_path), backend_factory=lambda o: _SimWithUserChange())
    d = loop.round(10)
    # overloaded preprocess would be scaled up at once (see the first test); held instead
    assert d.action.delta("preprocess").is_noop
    assert any(c.stage == "preprocess" and "cooldown" in c.reason for c in d.clamps)
    # after the hold (and the threshold policy's own 60 s cooldown) it is scaled again
    later = [loop.round(t) for t in range(20, 100, 10)]
    assert any(x.action.delta("preprocess").replicas > 0 for x in later)
    loop.close()


def test_every_round_publishes_the_plan_for_serve_native_mode(tmp_path) -> None:
    """sair_ray/serve.py: a good round publishes its replica targets; a failed one marks
    the last plan failing (so Serve-native deployments fall back at once)."""
    loop = LiveLoop(_opts(tmp_path), backend_factory=_sim)
    sent: list = []
    loop.publish = lambda p: sent.append(p) or True
    d = loop.round(10)
    assert d is not None and len(sent) == 1
    p = sent[0]
    assert (p.round, p.time, p.interval_s, p.failing) == (0, 10, 10, "")
    assert p.targets == {n: t.replicas for n, t in d.targets.items()}
    loop.session.tick = lambda now: (_ for _ in ()).throw(RuntimeError("dashboard down"))
    assert loop.round(20) is None
    failing = sent[-1]
    assert failing.targets == p.targets and failing.time == 10
    assert "dashboard down" in failing.failing
    assert loop.status()["serve_native"] is None     # no Ray here: no modes to read
    loop.close()


def test_a_system_clock_step_moves_neither_the_rounds_nor_the_plan_off_time(tmp_path) -> None:
    """The live loop keeps time on a SteadyClock: the system clock stepped back an hour
    mid-run neither stalls the rounds (they stay 1 s apart) nor shifts their times, and
    the plan the replicas check against their own clock carries the stepped wall time."""
    from sair_ray.session import SteadyClock

    assert isinstance(LiveLoop(_opts(tmp_path / "default")).clock, SteadyClock)
    shift = [0.0]
    clock = SteadyClock(wall=lambda: time.time() + shift[0])
    opts = LiveOptions(app="image_classification", policy="static", data_dir=str(tmp_path),
                       config={"loop": {"decision_interval_s": 1, "settle_s": 0}})
    start = time.time()
    loop = LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=1, start=start),
                    clock=clock)
    plans: list = []
    loop.publish = lambda p: plans.append(p) or True
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    time.sleep(1.6)
    shift[0] = -3600.0
    time.sleep(2.2)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    times = [d["time"] for d in loop.decisions(10)]
    assert len(times) >= 3, times
    assert all(0.8 < b - a < 1.5 for a, b in zip(times, times[1:], strict=False))
    assert abs(times[-1] - time.time()) < 2.0
    assert abs(plans[-1].time - (time.time() - 3600.0)) < 2.0   # the replicas' clock
    assert abs(plans[0].time - times[0]) < 1e-6                 # before the step
    loop.close()
