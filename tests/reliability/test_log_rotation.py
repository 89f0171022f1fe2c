"""The decision log rotates by size, keeps at most `max_files` files, and its readers
(`sair decisions` / `sair report`: `records.load`; `sair top`: a following `LogReader`;
`DecisionLog.merged`) see every round of the files kept, in order."""

from __future__ import annotations

import pytest

from sair_ray.backends.sim import SimBackend
from sair_ray.config import ConfigError, SAIRConfig
from sair_ray.decision_log import DecisionLog, log_files
from sair_ray.live.loop import LiveLoop, LiveOptions
from sair_ray.report.records import LogReader, load


def _write_rounds(log: DecisionLog, rounds: range) -> None:
    for r in rounds:
        log.write("decision", {"round": r, "time": float(r), "pad": "x" * 200})
        log.write("reward", {"round": r, "reward": {"R": 0.5, "stored": r % 2 == 0}})


def test_rotation_keeps_at_most_max_files_each_under_max_bytes(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4000, max_files=3)
    _write_rounds(log, range(100))
    log.close()
    files = log_files(path)
    assert [p.name for p in files] == ["decisions.jsonl.2", "decisions.jsonl.1",
                                       "decisions.jsonl"]
    assert not (tmp_path / "decisions.jsonl.3").exists()
    assert all(p.stat().st_size <= 4000 for p in files)
    rounds = [r["round"] for r in DecisionLog.read_all(path) if r["kind"] == "decision"]
    # the kept files hold the latest rounds, contiguous and in order
    assert rounds == list(range(rounds[0], 100)) and rounds[0] > 0
    merged = DecisionLog.merged(path)
    assert [d["round"] for d in merged] == rounds
    assert all("reward" in d for d in merged)


def test_readers_see_every_round_of_a_rotated_log(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4000, max_files=50)
    _write_rounds(log, range(60))
    log.close()
    assert len(log_files(path)) >= 5
    recs = load(path)   # what sair decisions and sair report read
    assert [d["round"] for d in recs.decisions] == list(range(60))
    assert recs.remembered == 30
    assert all(d["reward"]["R"] == 0.5 for d in recs.decisions)


def test_a_following_reader_sees_each_round_once_across_rotations(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4000, max_files=50)
    _write_rounds(log, range(5))
    follow = LogReader(path)
    top = LogReader(path, keep=8)   # sair top keeps the latest rounds only
    assert [d["round"] for d in follow.read().decisions] == list(range(5))
    seen = 5
    for upto in (7, 30, 31, 90):   # one rotation or several between two reads
        _write_rounds(log, range(seen, upto))
        seen = upto
        got = follow.read()
        assert [d["round"] for d in got.decisions] == list(range(upto))
        assert all("reward" in d for d in got.decisions)
        assert [d["round"] for d in top.read().decisions] == list(range(max(0, upto - 8), upto))
    assert follow.read().remembered == 45
    log.close()


def test_a_reader_started_late_reads_only_the_history_keep_needs(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4000, max_files=50)
    _write_rounds(log, range(100))
    log.close()
    top = LogReader(path, keep=5)
    assert [d["round"] for d in top.read().decisions] == list(range(95, 100))


def test_a_lower_max_files_deletes_the_files_beyond_it(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4000, max_files=6)
    _write_rounds(log, range(100))
    log.close()
    assert len(log_files(path)) == 6
    log = DecisionLog(path, max_bytes=4000, max_files=2)
    _write_rounds(log, range(100, 120))
    log.close()
    assert [p.name for p in log_files(path)] == ["decisions.jsonl.1", "decisions.jsonl"]
    assert set(tmp_path.iterdir()) == set(log_files(path))


def test_no_rotation_with_max_bytes_zero(tmp_path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=0, max_files=2)
    _write_rounds(log, range(100))
    log.close()
    assert log_files(path) == [path] and path.stat().st_size > 20_000


def test_the_config_knob_reaches_the_live_controllers_log(tmp_path) -> None:
    cfg = {"loop": {"decision_interval_s": 10, "settle_s": 2},
           "decision_log": {"max_mb": 0.004, "max_files": 3}}   # ~4 KB per file
    opts = LiveOptions(app="image_classification", config=cfg, policy="threshold",
                       data_dir=str(tmp_path))
    loop = LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=3))
    for t in range(10, 310, 10):
        assert loop.round(t) is not None
    loop.close()
    files = log_files(loop.dir / "decisions.jsonl")
    assert len(files) == 3
    rounds = [d["round"] for d in load(loop.dir / "decisions.jsonl").decisions]
    assert rounds == list(range(rounds[0], 30)) and rounds[0] > 0


@pytest.mark.parametrize("bad", [{"max_mb": -1}, {"max_files": 0}, {"max_files": 1.5}])
def test_the_knob_is_validated(bad) -> None:
    with pytest.raises(ConfigError, match="decision_log.max_"):
        SAIRConfig.from_dict({"decision_log": bad})
    assert SAIRConfig().decision_log.max_bytes == 50 * 1024 * 1024
    assert SAIRConfig().decision_log.max_files == 5


def test_the_config_knob_reaches_the_operators_controllers_log(tmp_path) -> None:
    from sair_ray.backends.kubernetes import InMemoryObject
    from sair_ray.operator.runner import build_runner
    from sair_ray.operator.spec import AutoscalerSpec
    from tests.k8s.helpers import autoscaler, sample

    pa = autoscaler()
    pa["spec"]["config"]["decision_log"] = {"max_mb": 2, "max_files": 7}
    runner = build_runner(AutoscalerSpec.from_object(pa), now=0.0,
                          rayservice=InMemoryObject(sample("rayservice.yaml")),
                          deployment_store=lambda ns, name: None, data_dir=tmp_path)
    log = runner.controller.log
    assert (log.max_bytes, log.max_files) == (2 * 1024 * 1024, 7)
    runner.close()
