"""The decision record: typed inside, the log's JSON at the edge (sair_ray/decision.py)."""

from __future__ import annotations

import json
import math

from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.decision import Decision
from sair_ray.decision_log import DecisionLog
from sair_ray.memory import ExperienceMemory
from tests.unit.test_controller import AddPreprocessReplica, ScriptedBackend


def _run(tmp_path, cfg=None):
    backend = ScriptedBackend([900.0, 400.0, 380.0, 390.0, 300.0, 310.0])
    mem = ExperienceMemory(tmp_path / "mem", 24)
    ctl = Controller(backend, AddPreprocessReplica(), cfg or SAIRConfig(seed=3), memory=mem,
                     log_path=str(tmp_path / "decisions.jsonl"))
    decisions = run_virtual(ctl, backend, until=180)
    ctl.close()
    mem.close()
    return backend, decisions, tmp_path / "decisions.jsonl"


def test_the_log_line_is_the_record_and_reads_back_as_the_same_decision(tmp_path):
    backend, decisions, path = _run(tmp_path)
    lines = [r for r in DecisionLog.read(path) if r["kind"] == "decision"]
    assert len(lines) == len(decisions)
    for d, line in zip(decisions, lines, strict=True):
        rec = d.to_record()
        assert list(line) == ["kind", *rec]            # the on-disk field order
        assert line == json.loads(json.dumps({"kind": "decision", **rec}))
        back = Decision.from_record(line)
        assert back.to_record() == rec
        assert back.context == d.context and back.action == d.action
        assert back.targets == d.targets and back.clamps == d.clamps
        assert back.bottleneck == d.bottleneck and back.retrieved == d.retrieved


def test_targets_are_what_the_backend_was_given(tmp_path):
    backend, decisions, _ = _run(tmp_path)
    acted = [d for d in decisions if d.acted]
    assert acted and [(d.time, d.targets) for d in acted] == backend.applied


def test_source_is_typed(tmp_path):
    # §5's random probes every round (§10's directed probes skip rounds with nothing to try)
    cfg = SAIRConfig(seed=3).replace(**{"exploration.epsilon_0": 1.0,
                                        "exploration.epsilon_min": 1.0,
                                        "learning.enabled": False})
    _, decisions, _ = _run(tmp_path, cfg)
    assert all(d.probed and d.policy_name is None for d in decisions)
    _, decisions, _ = _run(tmp_path / "b")
    assert {d.policy_name for d in decisions if not d.probed} == {"scripted"}


def test_a_merged_record_brings_its_reward_and_non_finite_numbers_back(tmp_path):
    _, decisions, path = _run(tmp_path)
    merged = DecisionLog.merged(path)
    first = Decision.from_record(merged[0])
    assert first.reward is not None and isinstance(first.reward.z, tuple)
    assert first.reward_stored is merged[0]["reward"]["stored"]
    assert Decision.from_record(merged[-1]).reward is None
    rec = json.loads(json.dumps(merged[0]))
    rec["context"]["p99_ms"] = "nan"
    rec["context"]["stages"][0]["p99_ms"] = "inf"
    back = Decision.from_record(rec)
    assert math.isnan(back.context.p99_ms) and back.context.stages[0].p99_ms == math.inf
    assert back.context.app == rec["context"]["app"]
