"""Controller crash: SIGKILL a process running SAIR on the simulator with a real
ExperienceMemory mid-run, restart it from the same memory directory and its saved
Controller.state(), twice; no acknowledged experience is lost and the round counter goes
on from the saved state. Segments are 5 rows, so kills land in and around Parquet
compactions as well as journal appends. (A memory writer alone is SIGKILLed in
tests/unit/test_memory.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sair_ray.config import SAIRConfig
from sair_ray.decision_log import DecisionLog
from sair_ray.embedding import phi_dim
from sair_ray.files import read_json
from sair_ray.memory import ExperienceMemory
from tests.reliability.bad_inputs import ROOT

pytestmark = [pytest.mark.timeout(180), pytest.mark.integration]

KILL_AFTER_ACKS = (23, 31)   # two crashes at different points of the segment cycle (5 rows)


def run_child(d: Path, rounds: int, kill_after_acks: int | None) -> tuple[list[str], int, int]:
    """(acknowledged ids, start round, last finished round) of one child process."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.crash_child", str(d),
                             str(rounds)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: list[str] = []
    start = last = -1
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        kind, _, rest = line.strip().partition(" ")
        if kind == "start":
            start = int(rest.split()[0])
        elif kind == "ack":
            acked.append(rest)
        elif kind == "round":
            last = int(rest)
        if kill_after_acks is not None and len(acked) >= kill_after_acks:
            os.kill(proc.pid, signal.SIGKILL)   # whatever it is doing right now
            break
        assert time.monotonic() < deadline, "child too slow"
    proc.wait(timeout=30)
    # Lines the child wrote before it died are acknowledgements too.
    for line in proc.stdout:
        kind, _, rest = line.strip().partition(" ")
        if kind == "ack":
            acked.append(rest)
        elif kind == "round":
            last = int(rest)
    if kill_after_acks is None:
        assert proc.returncode == 0
    else:
        assert proc.returncode == -signal.SIGKILL
    return acked, start, last


def test_killed_controller_restarts_without_losing_acknowledged_experience(tmp_path: Path):
    all_acked: list[str] = []
    runs = []
    for kill in (*KILL_AFTER_ACKS, None):
        acked, start, last = run_child(tmp_path, 10_000 if kill else 5, kill)
        if runs:
            prev_last = runs[-1][2]
            # The counter continues from the saved state: the round after the last one
            # reported, or one more if the kill fell between saving state and reporting.
            assert start in (prev_last + 1, prev_last + 2), (start, prev_last)
        runs.append((acked, start, last))
        all_acked += acked
        assert len(acked) >= (kill or 1)

    assert runs[0][1] == 0
    state = read_json(tmp_path / "state.json")
    assert state["controller"]["round"] == runs[-1][2] + 1
    cfg = SAIRConfig()
    with ExperienceMemory(tmp_path / "memory", phi_dim(3), cfg.memory,
                          loo_k=cfg.retrieval.loo_k) as m:
        stored = [e.id for e in m.iter_experiences()]
        assert len(stored) == len(set(stored))          # no duplicates after compaction
        missing = set(all_acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged experiences lost"
        assert len(m) == len(stored) >= sum(KILL_AFTER_ACKS)
    segments = list((tmp_path / "memory" / "segments").glob("seg-*.parquet"))
    assert len(segments) >= sum(KILL_AFTER_ACKS) // 5 - 1

    # The decision log survives the kills: rounds go up, and a round is only repeated
    # when it had run but its state was not saved yet (at most one per crash).
    rounds = [r["round"] for r in DecisionLog.read(tmp_path / "decisions.jsonl")
              if r["kind"] == "decision"]
    repeats = sum(1 for a, b in zip(rounds, rounds[1:], strict=False) if b <= a)
    assert repeats <= len(KILL_AFTER_ACKS)
    assert rounds[-1] == runs[-1][2]


def test_killed_inside_apply_the_action_counts_as_applied_after_restart(tmp_path: Path):
    """SIGKILL while the action is being applied (the backend has taken it, the round's
    state is not saved). The restarted loop finds the intent the dead one wrote before
    applying, so the action's cooldowns run from its round and its round number is not
    reused; the live version, with a real Serve app and the detached actor, is
    test_controller_kill_live.py."""
    from sair_ray.backends.sim import SimBackend
    from sair_ray.live.loop import LiveLoop
    from tests.reliability.crash_child import live_options

    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.crash_child", "--live",
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    applied_at = None
    rounds_done = 0
    for line in proc.stdout:
        if line.startswith("applied"):
            applied_at = float(line.split()[1])
            break
        rounds_done += line.startswith("round")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert applied_at is not None
    d = tmp_path / "image_classification"
    intent = read_json(d / "applying.json")
    assert intent["round"] == rounds_done and intent["time"] == applied_at

    # The restarted simulator is back at its initial allocation, so the policy asks for
    # the same step again at once; the validator must refuse it for its cooldown.
    loop = LiveLoop(live_options(tmp_path), backend_factory=lambda o: SimBackend(o.app, seed=3))
    assert loop.setup()
    up = {k for k, v in intent["targets"].items()
          if v["replicas"] > intent["before"][k]["replicas"]}
    assert up, intent
    assert all(loop.controller.validator.cooldowns.last_up[s] == applied_at for s in up)
    dec = loop.round(applied_at + 10)
    assert dec is not None and dec.round == rounds_done + 1
    assert not any(dec.action.delta(s).replicas > 0 for s in up), dec.action
    assert any("cooldown" in c.reason for c in dec.clamps)
    loop.close()
    assert not (d / "applying.json").exists()
    log = list(DecisionLog.read(d / "decisions.jsonl"))
    interrupted = [r for r in log if r["kind"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["round"] == rounds_done
    assert rounds_done not in [r["round"] for r in log if r["kind"] == "decision"]
