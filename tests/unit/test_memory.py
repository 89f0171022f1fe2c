"""Experience memory: persistence, crash safety, filtering, the neighbour graph."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.config import MemoryConfig, SAIRConfig
from sair_ray.memory import ExperienceMemory, MemoryStoreError
from sair_ray.types import Experience

DIM = 6


def exp(i: int, reward: float = 1.0, phi=None) -> Experience:
    rng = np.random.default_rng(i)
    return Experience(id=f"e{i}", time=float(i), app="app",
                      phi=phi if phi is not None else rng.random(DIM).tolist(),
                      context={"round": i}, action={"pre": {"replicas": 1}}, reward=reward,
                      latency_ms=100.0 + i, cost_rate=1.0)


def open_mem(path, **cfg) -> ExperienceMemory:
    return ExperienceMemory(path, DIM, MemoryConfig(**{"fsync": False, **cfg}), loo_k=3)


def test_round_trip_across_segments_and_journal(tmp_path):
    with open_mem(tmp_path, segment_rows=4) as m:
        for i in range(10):
            m.add(exp(i, reward=i / 10))
    assert len(list((tmp_path / "segments").glob("*.parquet"))) == 2
    with open_mem(tmp_path, segment_rows=4) as m:
        assert len(m) == 10
        assert [m.get(i).id for i in range(10)] == [f"e{i}" for i in range(10)]
        assert m.get(9).context == {"round": 9} and m.get(3).reward == 0.3
        assert np.allclose(m.vectors[5], exp(5).phi)


def test_contexts_are_read_when_a_row_is_first_asked_for(tmp_path):
    with open_mem(tmp_path, segment_rows=4) as m:
        for i in range(10):
            m.add(exp(i))
    with open_mem(tmp_path, segment_rows=4) as m:
        assert [seg._table for seg in m._segments] == [None, None]  # ids, phi, rewards only
        assert m.get(5).context == {"round": 5} and m.get(9).id == "e9"
        assert m._segments[0]._table is None and m._segments[1]._table is not None
        first = sorted((tmp_path / "segments").glob("*.parquet"))[0]
        first.write_bytes(b"damaged after the open")
        with pytest.raises(MemoryStoreError, match="cannot be read.*quarantine"):
            m.get(0)


def test_torn_final_journal_line_is_dropped_and_earlier_ones_kept(tmp_path):
    with open_mem(tmp_path) as m:
        for i in range(5):
            m.add(exp(i))
    journal = tmp_path / "journal.jsonl"
    whole = journal.read_bytes()
    journal.write_bytes(whole + whole.splitlines(keepends=True)[0][:37])  # a half-written line
    with open_mem(tmp_path) as m:
        assert len(m) == 5
        m.add(exp(5))  # the journal was truncated back to its valid prefix
    with open_mem(tmp_path) as m:
        assert len(m) == 6


def test_corruption_before_the_end_is_refused_with_advice(tmp_path):
    with open_mem(tmp_path) as m:
        for i in range(3):
            m.add(exp(i))
    journal = tmp_path / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"e1"', b'"x1"')
    journal.write_bytes(b"".join(lines))
    with pytest.raises(MemoryStoreError, match="corrupt at line 2.*quarantine"):
        open_mem(tmp_path)
    with pytest.raises(MemoryStoreError, match="corrupt"):  # refused again, not "in use"
        open_mem(tmp_path)
    moved = ExperienceMemory.quarantine(tmp_path)
    assert moved.exists() and not tmp_path.exists()


def test_unreadable_segment_is_refused(tmp_path):
    with open_mem(tmp_path, segment_rows=2) as m:
        for i in range(2):
            m.add(exp(i))
    seg = next((tmp_path / "segments").glob("*.parquet"))
    seg.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(MemoryStoreError, match="cannot be read"):
        open_mem(tmp_path)


def test_crash_between_segment_rename_and_journal_reset_deduplicates(tmp_path):
    with open_mem(tmp_path, segment_rows=100) as m:
        for i in range(4):
            m.add(exp(i))
        journal = (tmp_path / "journal.jsonl").read_bytes()
        m.flush_segment()
    (tmp_path / "journal.jsonl").write_bytes(journal)  # as if the reset never happened
    (tmp_path / "segments" / ".seg-00000009.parquet.tmp").write_bytes(b"half a segment")
    with open_mem(tmp_path) as m:
        assert len(m) == 4 and sorted(e.id for e in m.iter_experiences()) == [
            "e0", "e1", "e2", "e3"]


def test_remember_filters_by_reward(tmp_path):
    cfg = SAIRConfig()
    with open_mem(tmp_path) as m:
        assert m.remember(exp(0, reward=0.5), cfg.reward)
        assert not m.remember(exp(1, reward=0.0), cfg.reward)
        assert not m.remember(exp(2, reward=-1.0), cfg.reward)
        all_cfg = cfg.replace(**{"reward.store_all": True}).reward
        assert m.remember(exp(3, reward=-1.0), all_cfg)
        assert len(m) == 2


def test_one_writer_per_memory(tmp_path):
    with open_mem(tmp_path):
        with pytest.raises(MemoryStoreError, match="in use"):
            open_mem(tmp_path)


def test_bad_experiences_are_refused(tmp_path):
    with open_mem(tmp_path) as m:
        m.add(exp(0))
        with pytest.raises(ValueError, match="already"):
            m.add(exp(0))
        with pytest.raises(ValueError, match="6 finite floats"):
            m.add(exp(1, phi=[0.1] * 5))
        with pytest.raises(ValueError, match="finite"):
            m.add(exp(2, phi=[float("nan")] * DIM))
    with pytest.raises(MemoryStoreError, match="phi"):
        ExperienceMemory(tmp_path, DIM + 1, MemoryConfig(fsync=False))


def brute_neighbours(vecs: np.ndarray, k: int) -> list[set[int]]:
    d2 = ((vecs[:, None, :] - vecs[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    out = []
    for row in d2:
        kth = np.sort(row)[min(k, len(row) - 1) - 1] if len(row) > 1 else -1
        out.append({int(j) for j in np.flatnonzero(row <= kth + 1e-6)})
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10**6))
def test_incremental_graph_is_exact(tmp_path_factory, n, seed):
    path = tmp_path_factory.mktemp("g")
    rng = np.random.default_rng(seed)
    with open_mem(path) as m:
        for i in range(n):
            m.add(exp(i, phi=rng.random(DIM).round(2).tolist()))
        brute = brute_neighbours(m.vectors.astype(np.float64), 3)
        nbr, _ = m.neighbours(np.arange(n))
        for i in range(n):
            got = {int(j) for j in nbr[i] if j >= 0}
            assert len(got) == min(3, n - 1)
            assert got <= brute[i]  # ties may pick either of equally near rows


def test_switches_to_hnsw_beyond_the_exact_limit(tmp_path):
    with open_mem(tmp_path, index_exact_max=20) as m:
        for i in range(30):
            m.add(exp(i))
        assert not m.exact and "HNSW" in type(m._index).__name__
        d2, rows = m.search(np.asarray(exp(7).phi, dtype=np.float32), 3)
        assert rows[0] == 7 and d2[0] < 1e-9


WRITER = """
import sys
from sair_ray.config import MemoryConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.types import Experience
m = ExperienceMemory(sys.argv[1], 6, MemoryConfig(segment_rows=7, fsync=True), loo_k=3)
i = 0
while True:
    m.add(Experience(id=f"k{i}", time=i, app="a", phi=[i % 13 / 13.0] * 6, context={"i": i},
                     action={}, reward=1.0, latency_ms=1.0, cost_rate=1.0))
    print(f"k{i}", flush=True)  # acknowledged: add() has returned
    i += 1
"""


@pytest.mark.integration
def test_killed_writer_loses_no_acknowledged_experience(tmp_path):
    for attempt in range(3):
        path = tmp_path / f"m{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        acked = []
        deadline = time.monotonic() + 60
        while len(acked) < 40 + 25 * attempt and time.monotonic() < deadline:
            acked.append(proc.stdout.readline().strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely
        proc.wait()
        acked += [line.strip() for line in proc.stdout if line.strip()]
        with ExperienceMemory(path, 6, MemoryConfig(segment_rows=7), loo_k=3) as m:
            stored = {e.id for e in m.iter_experiences()}
            assert set(acked) <= stored
            assert len(m) == len(stored)


def test_batched_linking_across_batches_is_exact_without_duplicates(tmp_path):
    rng = np.random.default_rng(11)
    with open_mem(tmp_path) as m:
        for i in range(300):
            m.add(exp(i, phi=rng.random(DIM).tolist()))
        m.neighbours(np.arange(5))  # link the first 300 now, the rest later in 2 batches
        for i in range(300, 900):
            m.add(exp(i, phi=rng.random(DIM).tolist()))
        nbr, nd2 = m.neighbours(np.arange(900))
        brute = brute_neighbours(m.vectors.astype(np.float64), 3)
        for i in range(900):
            assert len(set(nbr[i].tolist())) == 3 and i not in nbr[i]
            assert set(nbr[i].tolist()) <= brute[i]
            assert np.all(np.diff(nd2[i]) >= 0)
