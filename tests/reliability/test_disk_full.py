"""A full disk (or any unexpected exception) in a live round: a counted failed round, never
the end of the controller (no Ray: LiveLoop on the simulator, ControllerActor built
directly).

The disk is filled by stubs: `OSError(ENOSPC)` from the decision log's file after part of
a line reached it (what a full disk does to an append), and from the atomic state.json
write. A read-only data dir cannot be used instead: the tests may run as root."""

from __future__ import annotations

import errno
import json
import threading
import time

import pytest

import sair_ray.session as session_mod
from sair_ray.backends.sim import SimBackend
from sair_ray.live import actor as actor_mod
from sair_ray.live.loop import BACKOFF_AFTER, MAX_BACKOFF_S, LiveLoop, LiveOptions

CFG = {"loop": {"decision_interval_s": 10, "settle_s": 2}}


def _loop(tmp_path, **cfg) -> LiveLoop:
    opts = LiveOptions(app="image_classification", config={**CFG, **cfg}, policy="threshold",
                       data_dir=str(tmp_path))
    return LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=3))


class _FullDisk:
    """The log's file on a disk that fills up: the first `room` bytes of a write land, then
    ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if self.room > 0:
            n = self.f.write(bytes(data[:self.room]))
            self.room = 0
            return n
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.f.close()


def test_a_decision_log_write_on_a_full_disk_fails_the_round_and_the_next_one_runs(
        tmp_path) -> None:
    loop = _loop(tmp_path)
    assert loop.round(10) is not None
    log = loop.controller.log
    log._f = _FullDisk(log._f, room=40)   # the decision line's first 40 bytes, then full
    assert loop.round(20) is None         # counted, not raised
    st = loop.status()
    assert st["rounds_failed"] == 1 and st["failed_streak"] == 1
    assert "No space left on device" in st["last_error"]
    # the disk has room again: the next round runs and logs normally
    assert loop.round(30) is not None
    assert loop.round(40) is not None
    st = loop.status()
    assert st["rounds_ok"] == 3 and st["rounds_failed"] == 1 and st["failed_streak"] == 0
    loop.close()
    # the torn 40 bytes were cut before the next line: every line is a whole record
    lines = (loop.dir / "decisions.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(x) for x in lines[:-1]]
    assert [r["round"] for r in recs if r["kind"] == "decision"] == [0, 2, 3]


def test_a_state_write_on_a_full_disk_fails_the_round_and_the_next_one_runs(
        tmp_path, monkeypatch) -> None:
    loop = _loop(tmp_path)
    assert loop.round(10) is not None
    real = session_mod.write_json_atomic

    def full(path, obj) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(session_mod, "write_json_atomic", full)
    assert loop.round(20) is None and loop.round(30) is None
    st = loop.status()
    assert st["rounds_failed"] == 2 and "No space left" in st["last_error"]
    monkeypatch.setattr(session_mod, "write_json_atomic", real)
    assert loop.round(40) is not None
    assert loop.status()["failed_streak"] == 0
    loop.close()
    saved = json.loads((loop.dir / "state.json").read_text())
    assert saved["controller"]["round"] == 4   # the rounds went on in memory, then saved


def test_any_exception_in_the_round_is_a_failed_round(tmp_path, monkeypatch) -> None:
    loop = _loop(tmp_path)
    loop.publish = lambda plan: (_ for _ in ()).throw(RuntimeError("kv gone"))
    # even the host's own bookkeeping after the tick (publishing the plan) raising
    assert loop.round(10) is not None   # publishing is advisory: logged, round stands
    monkeypatch.setattr(loop, "_round", lambda now: 1 / 0)
    assert loop.round(20) is None
    assert "ZeroDivisionError" in loop.status()["last_error"]
    loop.close()


def test_the_real_time_loop_outlives_failing_rounds_and_backs_off(tmp_path) -> None:
    loop = _loop(tmp_path, loop={"decision_interval_s": 1, "settle_s": 0})
    calls: list[float] = []

    def round_(now: float):
        calls.append(now)
        if len(calls) <= 4:   # fails as if the round's code had a bug: round() re-raises
            raise OSError(errno.ENOSPC, "No space left on device")
        return None

    loop.round = round_  # type: ignore[method-assign]
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    time.sleep(7.5)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    # rounds 1-4 failed (the 4th starts the backoff: 2 intervals), then tries went on
    assert len(calls) >= 5
    assert loop.status()["rounds_failed"] >= 4
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(0.7 < g < 1.7 for g in gaps[:BACKOFF_AFTER])
    assert gaps[BACKOFF_AFTER] > 1.85
    loop.close()


def test_retry_delay_doubles_after_the_first_failures_up_to_the_cap(tmp_path) -> None:
    loop = _loop(tmp_path)
    got = []
    for streak in range(12):
        loop.failed_streak = streak
        got.append(loop.retry_delay())
    assert got[:BACKOFF_AFTER + 1] == [10.0] * (BACKOFF_AFTER + 1)
    assert got[BACKOFF_AFTER + 1:BACKOFF_AFTER + 4] == [20.0, 40.0, 80.0]
    assert max(got) == MAX_BACKOFF_S == got[-1]
    loop.close()


class _Fatal(BaseException):
    """What a round cannot catch (not an Exception)."""


def test_an_actor_whose_loop_died_says_so(tmp_path, monkeypatch) -> None:
    def run(self, stop) -> None:
        raise _Fatal("the loop thread was killed")

    monkeypatch.setattr(actor_mod.LiveLoop, "run", run)
    a = actor_mod.ControllerActor({"app": "image_classification", "policy": "threshold",
                                   "data_dir": str(tmp_path), "config": CFG})
    a._thread.join(5)
    st = a.status()
    assert st["running"] is False
    assert st["dead"] == "_Fatal: the loop thread was killed"
    assert a.dead_reason() == st["dead"]


def test_a_stopped_actor_is_not_dead(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(actor_mod.LiveLoop, "run", lambda self, stop: stop.wait(10))
    a = actor_mod.ControllerActor({"app": "image_classification", "policy": "threshold",
                                   "data_dir": str(tmp_path), "config": CFG})
    assert a.status()["running"] is True and a.dead_reason() is None
    st = a.stop(5)
    assert st["running"] is False and st["dead"] is None


class _Remote:
    def __init__(self, value) -> None:
        self.value = value

    def remote(self):
        return self.value


class _FakeActor:
    def __init__(self, dead: str | None) -> None:
        self.dead_reason = _Remote(dead)


@pytest.mark.parametrize("dead", [None, "_Fatal: gone"])
def test_attach_replaces_a_dead_actor_and_keeps_a_live_one(monkeypatch, dead) -> None:
    import ray

    from sair_ray.live import handle

    killed: list = []
    names = {"taken": True}

    def get_actor(name, namespace=None):
        if not names["taken"]:
            raise ValueError(name)
        return "actor"

    def kill(actor, no_restart=False):
        killed.append((actor, no_restart))
        names["taken"] = False

    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref)
    monkeypatch.setattr(ray, "kill", kill)
    monkeypatch.setattr(ray, "get_actor", get_actor)
    actor = _FakeActor(dead)
    assert handle._replace_if_dead("app", actor, timeout_s=2) is (dead is not None)
    assert killed == ([(actor, True)] if dead else [])
