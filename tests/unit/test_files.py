"""The data dir's layout is private and confined: names map to one directory each, the
directories are 0700 and the files 0600 whatever the umask, and an atomic write survives
a power loss (the directory is fsync'ed after the rename)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from sair_ray.backends.sim import SimBackend
from sair_ray.config import MemoryConfig, SAIRConfig
from sair_ray.decision_log import DecisionLog
from sair_ray.files import ControllerFiles, app_data_dir, write_json_atomic
from sair_ray.memory import ExperienceMemory
from sair_ray.operator.runner import resource_dir
from sair_ray.registry import make_policy
from sair_ray.session import Session
from sair_ray.types import Experience

CFG = SAIRConfig.from_dict({"loop": {"decision_interval_s": 10, "settle_s": 2}})


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)   # the usual umask: without care, 0755 dirs and 0644 files
    yield
    os.umask(old)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/etc", "a b", "a\x00b", ".hidden",
                                  "%2E", "a%20b", "ü"])
def test_every_app_name_is_one_directory_inside_the_data_dir(tmp_path, name):
    d = app_data_dir(name, tmp_path)
    assert d.parent == tmp_path
    assert d.name not in (".", "..") and not d.name.startswith(".")
    assert "/" not in d.name and " " not in d.name and "\x00" not in d.name
    assert d.resolve().parent == tmp_path.resolve()


def test_names_never_share_a_directory():
    names = ["a b", "a_b", "a/b", "a%20b", "a%2Fb", "..", "%2E.", ".x", "%2Ex", "ü", "%C3%BC"]
    assert len({app_data_dir(n, "/data") for n in names}) == len(names)


def test_usual_names_keep_their_directory(tmp_path):
    for name in ["image_classification", "nlp-analysis.v2", "app1"]:
        assert app_data_dir(name, tmp_path) == tmp_path / name
    assert resource_dir(tmp_path, "default", "ic") == tmp_path / "k8s" / "default" / "ic"
    assert resource_dir(tmp_path, "..", "../x").parent.parent == tmp_path / "k8s"
    with pytest.raises(ValueError):
        app_data_dir("", tmp_path)


def test_a_controllers_files_are_private(tmp_path, open_umask):
    root = tmp_path / "data" / "app"
    backend = SimBackend("image_classification", seed=3)
    s = Session(backend, make_policy("sair-retrieval", CFG, pipeline=backend.pipeline), CFG,
                learns=True, files=ControllerFiles.in_dir(root), journal=True)
    for t in range(10, 60, 10):
        s.tick(float(t))
    s.close()
    for d in (tmp_path / "data", root, root / "memory", root / "memory" / "segments"):
        assert mode(d) == 0o700, d
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"state.json", "decisions.jsonl", "journal.jsonl",
                                       "LOCK"}
    for p in files:
        assert mode(p) == 0o600, p


def test_an_existing_wider_directory_and_log_are_narrowed(tmp_path, open_umask):
    root = tmp_path / "app"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    log = root / "decisions.jsonl"
    log.write_text('{"kind":"decision","round":0}\n')
    os.chmod(log, 0o644)
    backend = SimBackend("image_classification", seed=3)
    s = Session(backend, make_policy("threshold", CFG, pipeline=backend.pipeline), CFG,
                learns=False, files=ControllerFiles.in_dir(root))
    s.tick(10.0)
    s.close()
    assert mode(root) == 0o700 and mode(log) == 0o600


def test_memory_segments_and_snapshot_are_private(tmp_path, open_umask):
    with ExperienceMemory(tmp_path / "mem", 4, MemoryConfig(segment_rows=4, fsync=False),
                          loo_k=2) as m:
        for i in range(9):
            m.add(Experience(id=f"e{i}", time=float(i), app="a",
                             phi=np.random.default_rng(i).random(4).tolist(),
                             context={}, action={}, reward=1.0, latency_ms=1.0,
                             cost_rate=1.0))
    files = [p for p in (tmp_path / "mem").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    assert any(p.name == "snapshot.bin" for p in files)
    for p in files:
        assert mode(p) == 0o600, p
    assert mode(tmp_path / "mem" / "segments") == 0o700


def test_a_decision_log_elsewhere_is_private_and_rotates_private(tmp_path, open_umask):
    path = tmp_path / "new" / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=200, max_files=3)
    for i in range(20):
        log.write("decision", {"round": i, "pad": "x" * 40})
    log.close()
    assert mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    for p in path.parent.iterdir():
        assert mode(p) == 0o600, p


def test_an_atomic_write_fsyncs_its_directory_after_the_rename(tmp_path, monkeypatch):
    synced: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", True))
        real_fsync(fd)

    def replace(src, dst) -> None:
        synced.append(("rename", True))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json_atomic(tmp_path / "state.json", {"round": 1})
    assert [k for k, _ in synced] == ["file", "rename", "dir"]
    assert mode(tmp_path / "state.json") == 0o600
