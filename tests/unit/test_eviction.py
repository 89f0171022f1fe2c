"""Bounded memory: compaction keeps the frontier and the surprising, and loses nothing
acknowledged on a crash."""

from __future__ import annotations

import shutil

import numpy as np

from sair_ray.config import MemoryConfig
from sair_ray.eviction import choose_keep, enforce_cap, frontier_rows
from sair_ray.memory import ExperienceMemory
from sair_ray.types import Experience

DIM = 4


def exp(i: int, rng: np.random.Generator, *, reward: float | None = None,
        latency: float | None = None, cost: float | None = None,
        arrival: float = 10.0) -> Experience:
    return Experience(id=f"e{i:05d}", time=float(i), app="a",
                      phi=rng.normal(size=DIM).astype(np.float32).tolist(),
                      context={"arrival_rate": arrival},
                      action={}, reward=0.5 if reward is None else reward,
                      latency_ms=latency if latency is not None else 500 + rng.uniform(0, 100),
                      cost_rate=cost if cost is not None else 5 + rng.uniform(0, 1))


def test_frontier_rows_per_load_bucket_against_brute_force():
    rng = np.random.default_rng(0)
    lat, cost = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    arr = rng.choice([1.0, 10.0, 100.0], 300)
    got = set(frontier_rows(lat, cost, arr).tolist())
    want = {i for i in range(300)
            if not any(arr[j] == arr[i] and lat[j] <= lat[i] and cost[j] <= cost[i]
                       and (lat[j] < lat[i] or cost[j] < cost[i]) for j in range(300))}
    assert got == want


def test_cap_keeps_frontier_and_surprising_episodes(tmp_path):
    rng = np.random.default_rng(1)
    cfg = MemoryConfig(fsync=False, segment_rows=64)
    with ExperienceMemory(tmp_path, DIM, cfg) as mem:
        # a dense cluster of near-identical episodes (predictable, low surprisal) ...
        base = rng.normal(size=DIM)
        for i in range(250):
            e = exp(i, rng)
            mem.add(Experience(**{**e.__dict__, "phi": (base + 0.01 * rng.normal(size=DIM))
                                  .astype(np.float32).tolist()}))
        # ... one whose reward disagrees with its neighbours, and one frontier outcome
        odd = exp(250, rng, reward=0.99)
        mem.add(Experience(**{**odd.__dict__, "phi": base.astype(np.float32).tolist()}))
        best = exp(251, rng, latency=10.0, cost=0.1)
        mem.add(best)
        dropped = enforce_cap(mem, cap=200)
        assert dropped == 252 - 180 and len(mem) == 180
        assert "e00250" in mem and "e00251" in mem
        assert enforce_cap(mem, cap=200) == 0
        ids = {e.id for e in mem.iter_experiences()}
        # the memory still works: search, neighbours, adding
        assert len(mem.search(np.zeros(DIM, np.float32), 5)[1]) == 5
        mem.add(exp(999, rng))
    with ExperienceMemory(tmp_path, DIM, cfg) as again:  # durable across reopen
        assert {e.id for e in again.iter_experiences()} == ids | {"e00999"}


def test_crash_between_new_segment_and_deleting_old_ones_loses_nothing(tmp_path):
    rng = np.random.default_rng(2)
    cfg = MemoryConfig(fsync=False, segment_rows=16)
    with ExperienceMemory(tmp_path / "m", DIM, cfg) as mem:
        for i in range(40):
            mem.add(exp(i, rng))
        mem.flush_segment()
        all_ids = {e.id for e in mem.iter_experiences()}
    shutil.copytree(tmp_path / "m" / "segments", tmp_path / "old")
    with ExperienceMemory(tmp_path / "m", DIM, cfg) as mem:
        mem.compact(choose_keep(mem, 10))
    # the crash: old segments still there beside the compacted one
    for f in (tmp_path / "old").iterdir():
        shutil.copy(f, tmp_path / "m" / "segments" / f.name.replace("seg-", "seg-0"))
    with ExperienceMemory(tmp_path / "m", DIM, cfg) as mem:
        ids = [e.id for e in mem.iter_experiences()]
        assert set(ids) == all_ids and len(ids) == len(set(ids))
