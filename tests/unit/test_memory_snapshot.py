"""The memory's index snapshot: used when valid, extended when stale, rebuilt when
damaged or made for other data, never torn by a crash; and decisions from an exact scan of
the whole memory while a big rebuild runs in the background."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from sair_ray import memory as memory_mod
from sair_ray import memory_snapshot
from sair_ray.config import MemoryConfig, RetrievalConfig
from sair_ray.eviction import enforce_cap
from sair_ray.memory import ExperienceMemory
from sair_ray.retrieval import Retriever
from sair_ray.types import Experience
from tests.scripts import load_benchmark

DIM = 6
K = 4


def exp(i: int, rng: np.random.Generator) -> Experience:
    return Experience(id=f"e{i:05d}", time=float(i), app="a",
                      phi=rng.random(DIM).astype(np.float32).tolist(),
                      context={"arrival_rate": float(rng.uniform(1, 50))}, action={},
                      reward=float(rng.normal()), latency_ms=float(rng.uniform(10, 900)),
                      cost_rate=float(rng.uniform(0, 5)))


def open_mem(path: Path, **kw) -> ExperienceMemory:
    cfg = {"fsync": False, "segment_rows": 64}
    cfg.update({k: v for k, v in kw.items() if k in MemoryConfig.__dataclass_fields__})
    rest = {k: v for k, v in kw.items() if k not in MemoryConfig.__dataclass_fields__}
    return ExperienceMemory(path, DIM, MemoryConfig(**cfg), **{"loo_k": K, **rest})


def filled(path: Path, n: int, seed: int = 0, **kw) -> None:
    rng = np.random.default_rng(seed)
    with open_mem(path, **kw) as m:
        for i in range(n):
            m.add(exp(i, rng))


def reference(path: Path, tmp: Path, **kw) -> ExperienceMemory:
    """The same data opened with a full rebuild (snapshot removed from a copy)."""
    shutil.copytree(path, tmp)
    (tmp / memory_snapshot.FILENAME).unlink(missing_ok=True)
    (tmp / "LOCK").unlink(missing_ok=True)
    m = open_mem(tmp, **kw)
    assert m.index_source == "rebuilt"
    return m


def assert_same_answers(got: ExperienceMemory, want: ExperienceMemory) -> None:
    """Search and neighbour lists identical (random vectors: no ties to break)."""
    n = len(want)
    assert len(got) == n
    rows = np.arange(n)
    g_nbr, g_nd2 = got.neighbours(rows)
    w_nbr, w_nd2 = want.neighbours(rows)
    assert np.array_equal(g_nbr, w_nbr)
    assert np.allclose(g_nd2, w_nd2, atol=1e-5)
    for q in np.random.default_rng(99).random((5, DIM)).astype(np.float32):
        gd, gi = got.search(q, 8)
        wd, wi = want.search(q, 8)
        assert np.array_equal(gi, wi) and np.allclose(gd, wd, atol=1e-5)


def refuse_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, fail the test if anything rebuilds the index from scratch."""
    def refuse(*a, **kw):
        raise AssertionError("index rebuilt although the snapshot was usable")
    monkeypatch.setattr(memory_mod, "build_graph", refuse)


def test_reopen_uses_a_valid_snapshot_and_answers_as_a_rebuild(tmp_path, monkeypatch):
    filled(tmp_path / "m", 300)
    assert (tmp_path / "m" / memory_snapshot.FILENAME).exists()
    with reference(tmp_path / "m", tmp_path / "ref") as want:
        refuse_rebuilds(monkeypatch)
        with open_mem(tmp_path / "m") as m:
            assert m.index_source == "snapshot" and m.snapshot_problem is None and m.ready
            assert_same_answers(m, want)


def test_stale_snapshot_is_extended_incrementally_as_a_rebuild_would(tmp_path, monkeypatch):
    path = tmp_path / "m"
    filled(path, 300)
    old = (path / memory_snapshot.FILENAME).read_bytes()
    rng = np.random.default_rng(7)
    with open_mem(path) as m:
        for i in range(300, 370):  # crosses a segment flush, which rewrites the snapshot
            m.add(exp(i, rng))
    (path / memory_snapshot.FILENAME).write_bytes(old)  # as if killed before that flush
    with reference(path, tmp_path / "ref") as want:
        with monkeypatch.context() as mp:
            refuse_rebuilds(mp)
            with open_mem(path) as m:
                assert m.index_source == "stale snapshot" and len(m) == 370
                assert_same_answers(m, want)
        with open_mem(path) as m:  # close brought the snapshot up to date
            assert m.index_source == "snapshot"
            assert_same_answers(m, want)


def test_stale_snapshot_beyond_the_exact_limit_indexes_the_new_rows(tmp_path, monkeypatch):
    path = tmp_path / "m"
    filled(path, 300, index_exact_max=100)  # HNSW since row 101
    old = (path / memory_snapshot.FILENAME).read_bytes()
    rng = np.random.default_rng(7)
    with open_mem(path, index_exact_max=100) as m:
        for i in range(300, 370):
            m.add(exp(i, rng))
    (path / memory_snapshot.FILENAME).write_bytes(old)
    refuse_rebuilds(monkeypatch)
    with open_mem(path, index_exact_max=100) as m:
        assert m.index_source == "stale snapshot" and not m.exact
        assert m._index.ntotal == 370
        for row in (5, 299, 300, 369):  # old and new rows are found
            d2, rows = m.search(np.asarray(m.vectors[row]), 1)
            assert rows[0] == row and d2[0] < 1e-9
        nbr, _ = m.neighbours(np.arange(370))
        assert (nbr >= 0).all() and not (nbr == np.arange(370)[:, None]).any()
        # HNSW lists are approximate; most of each new row's list is its true neighbours
        brute = np.argsort(((m.vectors[300:, None] - m.vectors[None]) ** 2).sum(-1), 1)
        recall = np.mean([len(set(nbr[300 + i]) & set(brute[i, 1:K + 1])) / K
                          for i in range(70)])
        assert recall > 0.9


def _rewrite_manifest(data: bytes, change) -> bytes:
    magic, length, _ = struct.unpack_from("<8sII", data)
    manifest = json.loads(data[16:16 + length])
    change(manifest)
    body = json.dumps(manifest).encode()
    assert len(body) == length, "keep the length: the sections' offsets follow it"
    return struct.pack("<8sII", magic, length, zlib.crc32(body)) + body + data[16 + length:]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]


def _wrong_section_crc(manifest: dict) -> None:
    manifest["sections"][1]["crc32"] ^= 0xFFFF  # same digit count, so the same length


DAMAGE = {
    "truncated": (lambda d: d[: len(d) // 2], "truncated"),
    "empty": (lambda d: b"", "truncated"),
    "flipped byte in a section": (lambda d: _flip(d, len(d) - 7), "checksum mismatch"),
    "flipped byte in the manifest": (lambda d: _flip(d, 30), "manifest checksum"),
    "wrong section checksum": (lambda d: _rewrite_manifest(d, _wrong_section_crc),
                               "section nd2 checksum mismatch"),
    "not a snapshot": (lambda d: b"PAR1" + os.urandom(4000), "bad magic"),
    "malformed manifest": (lambda d: struct.pack("<8sII", b"SAIRSNP1", 13, zlib.crc32(
        b'{"format": 1}')) + b'{"format": 1}', "malformed"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_snapshot_is_rebuilt_with_identical_answers(tmp_path, caplog, damage):
    path = tmp_path / "m"
    filled(path, 300)
    snap = path / memory_snapshot.FILENAME
    hurt, reason = DAMAGE[damage]
    snap.write_bytes(hurt(snap.read_bytes()))
    with reference(path, tmp_path / "ref") as want:
        with caplog.at_level(logging.WARNING, logger="sair_ray.memory"):
            with open_mem(path) as m:  # never refused because of its snapshot
                assert m.index_source == "rebuilt" and reason in m.snapshot_problem
                assert_same_answers(m, want)
        assert "index snapshot not used" in caplog.text
        with open_mem(path) as m:  # the rebuild rewrote it
            assert m.index_source == "snapshot"
            assert_same_answers(m, want)


@pytest.mark.parametrize("case", ["other data", "compacted since", "loo_k changed",
                                  "switched to HNSW"])
def test_snapshot_for_other_data_or_settings_is_not_used(tmp_path, case):
    path = tmp_path / "m"
    filled(path, 300)
    kw: dict = {}
    if case == "other data":
        filled(tmp_path / "other", 300, seed=5)
        shutil.copy(tmp_path / "other" / memory_snapshot.FILENAME, path)
        reason = "vectors differ"
    elif case == "compacted since":
        before = (path / memory_snapshot.FILENAME).read_bytes()
        with open_mem(path) as m:
            m.compact(np.arange(0, 300, 2))
        (path / memory_snapshot.FILENAME).write_bytes(before)  # killed before it was rewritten
        reason = "covers 300 rows, the memory has 150"
    elif case == "loo_k changed":
        kw, reason = {"loo_k": K + 1}, "made for"
    else:
        kw, reason = {"index_exact_max": 200}, "made for"
    with open_mem(path, **kw) as m:
        assert m.index_source == "rebuilt" and reason in m.snapshot_problem
        assert m.neighbours(np.arange(len(m)))[0].shape[1] == kw.get("loo_k", K)
    with open_mem(path, **kw) as m:
        assert m.index_source == "snapshot"


def test_snapshot_kept_current_by_flush_compaction_bulk_import_and_close(tmp_path, monkeypatch):
    path = tmp_path / "m"
    rng = np.random.default_rng(3)
    with open_mem(path) as m:
        m.add_many([exp(i, rng) for i in range(200)])
        assert m._snap_rows == 200
        for i in range(200, 264):   # the journal reaches segment_rows: flushed
            m.add(exp(i, rng))
        assert m._snap_rows == 264
        m.compact(np.arange(0, 264, 3))
        assert m._snap_rows == 88
        for i in range(264, 300):   # in the journal only: close writes them
            m.add(exp(i, rng))
        assert m._snap_rows == 88
        ids = [e.id for e in m.iter_experiences()]
    with monkeypatch.context() as mp:
        refuse_rebuilds(mp)
        with open_mem(path) as m:
            assert m.index_source == "snapshot"
            # after the compaction, new segments still sort after the compacted one
            assert [e.id for e in m.iter_experiences()] == ids


def test_emptied_memory_drops_its_snapshot(tmp_path):
    filled(tmp_path, 70)
    with open_mem(tmp_path) as m:
        m.compact(np.array([], dtype=np.int64))
    assert not (tmp_path / memory_snapshot.FILENAME).exists()
    with open_mem(tmp_path) as m:
        assert len(m) == 0 and m.index_source == "empty"


def test_failed_snapshot_write_keeps_the_old_one_and_the_memory_working(tmp_path, monkeypatch,
                                                                         caplog):
    path = tmp_path / "m"
    filled(path, 300)
    old = (path / memory_snapshot.FILENAME).read_bytes()
    calls = {"n": 0}
    real_replace = os.replace

    def torn_then_fail(src, dst):  # the temp file is complete; disk full at the rename
        if str(dst).endswith(memory_snapshot.FILENAME):
            calls["n"] += 1
            Path(src).write_bytes(Path(src).read_bytes()[:100])
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(memory_snapshot.os, "replace", torn_then_fail)
    rng = np.random.default_rng(9)
    with caplog.at_level(logging.WARNING, logger="sair_ray.memory"):
        with open_mem(path) as m:
            for i in range(300, 400):   # a flush tries to write the snapshot and fails
                m.add(exp(i, rng))
            assert len(m.search(np.zeros(DIM, np.float32), 3)[1]) == 3
    assert calls["n"] >= 2 and "index snapshot not written" in caplog.text
    assert (path / memory_snapshot.FILENAME).read_bytes() == old        # untouched
    assert not list(path.glob(".snapshot*"))                            # no temp left
    monkeypatch.setattr(memory_snapshot.os, "replace", real_replace)
    with open_mem(path) as m:
        assert m.index_source == "stale snapshot" and len(m) == 400


def test_leftover_temp_file_of_a_killed_write_is_ignored_and_removed(tmp_path):
    filled(tmp_path, 100)
    tmp = tmp_path / f".{memory_snapshot.FILENAME}.tmp"
    tmp.write_bytes(b"SAIRSNP1 half a snapshot")
    with open_mem(tmp_path) as m:
        assert m.index_source == "snapshot"
    assert not tmp.exists()


SNAPSHOT_WRITER = """
import sys
import numpy as np
from sair_ray.config import MemoryConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.types import Experience
rng = np.random.default_rng(0)
def e(i):
    return Experience(id=f"k{i}", time=i, app="a", phi=rng.random(6).tolist(), context={},
                      action={}, reward=1.0, latency_ms=1.0, cost_rate=1.0)
m = ExperienceMemory(sys.argv[1], 6, MemoryConfig(fsync=True), loo_k=10)
if not len(m):
    m.add_many([e(i) for i in range(20000)])
i = len(m)
print("ready", flush=True)
while True:  # each flush writes a segment and a ~3 MB snapshot
    m.add(e(i))
    m.flush_segment()
    i += 1
"""


@pytest.mark.integration
def test_killed_mid_snapshot_write_leaves_the_old_snapshot_or_the_new_one(tmp_path):
    path = tmp_path / "m"
    rng = np.random.default_rng()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SNAPSHOT_WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with open_mem(path, loo_k=10) as m:
            assert m.snapshot_problem is None, m.snapshot_problem   # never torn
            assert m.index_source in ("snapshot", "stale snapshot")


@pytest.fixture
def gated(monkeypatch) -> threading.Event:
    """Background rebuilds wait for the returned event (or a cancel) before building."""
    release = threading.Event()
    real = memory_mod.build_graph

    def held(x, exact, loo_k, cancel=None):
        if cancel is not None:  # only the background thread passes one
            while not release.wait(0.01) and not cancel.is_set():
                pass
        return real(x, exact, loo_k, cancel)

    monkeypatch.setattr(memory_mod, "build_graph", held)
    return release


def unsnapshotted(tmp_path: Path, n: int = 600) -> Path:
    path = tmp_path / "m"
    filled(path, n)
    (path / memory_snapshot.FILENAME).unlink()
    return path


def test_big_rebuild_runs_in_the_background_and_decisions_use_exact_scans(tmp_path, gated):
    path = unsnapshotted(tmp_path)
    cfg = RetrievalConfig(K=5, n_candidates=32)
    queries = np.random.default_rng(4).random((6, DIM)).astype(np.float32)
    with reference(path, tmp_path / "ref") as want:
        m = open_mem(path, background_rebuild_rows=500)
        try:
            assert m.index_source == "rebuilding" and not m.ready
            assert m.snapshot_problem == "there is none"
            # the whole memory answers, exactly: the same as after the rebuild
            assert_same_answers(m, want)
            for q in queries:
                got = Retriever(m, cfg, np.random.default_rng(0)).select(q)
                ref = Retriever(want, cfg, np.random.default_rng(0)).select(q)
                assert [(r.row, round(r.surprisal, 9)) for r in got] == \
                       [(r.row, round(r.surprisal, 9)) for r in ref]
            rng = np.random.default_rng(8)
            for i in range(600, 650):  # adds go on meanwhile
                e = exp(i, rng)
                m.add(e)
                want.add(e)
            assert not m.ready
            assert_same_answers(m, want)
            gated.set()
            m.wait_ready()
            assert m.ready and m.index_source == "rebuilt"
            assert_same_answers(m, want)  # the rows added meanwhile are indexed and linked
            assert (path / memory_snapshot.FILENAME).exists()  # written by the rebuild
        finally:
            m.close()
    with open_mem(path) as m:
        assert m.index_source == "snapshot" and len(m) == 650


def test_rows_added_during_a_rebuild_may_cross_the_exact_limit(tmp_path, gated):
    path = unsnapshotted(tmp_path)
    rng = np.random.default_rng(12)
    m = open_mem(path, background_rebuild_rows=500, index_exact_max=620)
    try:
        assert m.exact and not m.ready
        for i in range(600, 680):   # past index_exact_max, and a segment flush on the way
            m.add(exp(i, rng))
        assert len(list((path / "segments").glob("*.parquet"))) == 10  # was 9
        gated.set()
        m.wait_ready()
        assert not m.exact and m._index.ntotal == 680
        for row in (3, 650, 679):
            d2, rows = m.search(np.asarray(m.vectors[row]), 1)
            assert rows[0] == row and d2[0] < 1e-9
    finally:
        m.close()
    with open_mem(path, index_exact_max=620) as m:
        assert m.index_source == "snapshot" and len(m) == 680 and not m.exact


def test_close_during_a_background_rebuild_stops_it_at_once(tmp_path, gated):
    path = unsnapshotted(tmp_path)
    m = open_mem(path, background_rebuild_rows=500)
    assert not m.ready
    t0 = time.monotonic()
    m.close()
    assert time.monotonic() - t0 < 5
    assert not any(t.name == "sair-memory-rebuild" for t in threading.enumerate())
    assert not (path / memory_snapshot.FILENAME).exists()  # nothing built, nothing saved
    gated.set()
    with open_mem(path, background_rebuild_rows=500) as m:
        m.wait_ready()
        assert m.index_source == "rebuilt"


def test_eviction_and_compaction_during_a_background_rebuild(tmp_path, gated):
    path = unsnapshotted(tmp_path)
    with reference(path, tmp_path / "ref") as want:
        want_dropped = enforce_cap(want, 400)
        m = open_mem(path, background_rebuild_rows=500)
        try:
            threading.Timer(0.2, gated.set).start()  # eviction waits for the whole graph
            assert enforce_cap(m, 400) == want_dropped
            assert m.ready
            assert_same_answers(m, want)
        finally:
            m.close()


def test_failed_background_rebuild_is_redone_in_place(tmp_path, monkeypatch, caplog):
    path = unsnapshotted(tmp_path)
    real = memory_mod.build_graph

    def fail_in_thread(x, exact, loo_k, cancel=None):
        if cancel is not None:
            raise MemoryError("no room for the index")
        return real(x, exact, loo_k)

    monkeypatch.setattr(memory_mod, "build_graph", fail_in_thread)
    with reference(path, tmp_path / "ref") as want:
        with caplog.at_level(logging.ERROR, logger="sair_ray.memory"):
            with open_mem(path, background_rebuild_rows=500) as m:
                m.wait_ready()
                assert m.index_source == "rebuilt"
                assert_same_answers(m, want)
        assert "background index rebuild failed" in caplog.text


def test_restart_benchmark_quick_mode(capsys):
    """benchmarks/bench_memory_restart.py --quick: every case takes the path it measures."""
    bench = load_benchmark("bench_memory_restart")
    (result,) = bench.main(["--quick"])
    assert [c["source"] for c in result["cases"]] == [
        "rebuilding", "snapshot", "stale snapshot", "rebuilding"]
    assert "checksum mismatch" in result["cases"][-1]["problem"]
    out = capsys.readouterr().out
    assert out.count("| 3,000 |") == 5
