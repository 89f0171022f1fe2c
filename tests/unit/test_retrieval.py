"""Surprisal retrieval against a direct transcription of docs/algorithm.md §4."""

from __future__ import annotations

import numpy as np
import pytest

from sair_ray.config import MemoryConfig, RetrievalConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.retrieval import Retriever
from sair_ray.types import Experience

DIM = 5


@pytest.fixture
def memory(tmp_path):
    rng = np.random.default_rng(3)
    m = ExperienceMemory(tmp_path, DIM, MemoryConfig(fsync=False), loo_k=4)
    for i in range(80):
        center = np.full(DIM, 0.2 if i % 2 else 0.8)  # two clusters
        m.add(Experience(id=f"e{i}", time=i, app="a",
                         phi=(center + 0.1 * rng.standard_normal(DIM)).tolist(), context={},
                         action={}, reward=float(rng.normal()), latency_ms=1, cost_rate=1))
    yield m
    m.close()


def spec_selection(mem, q, K, n_cand, loo_k, lam, use_surprisal=True):
    """§4 written out with plain loops over all stored experiences."""
    X, R = mem.vectors.astype(np.float64), mem.rewards
    d2q = ((X - q) ** 2).sum(1)
    cand = list(np.argsort(d2q, kind="stable")[:n_cand])
    sigma = max(np.median(np.sqrt(d2q[cand])), 1e-3)

    def k(a, b):
        return np.exp(-((a - b) ** 2).sum() / (2 * sigma**2))

    S = {}
    for i in cand:
        d = ((X - X[i]) ** 2).sum(1)
        d[i] = np.inf
        nb = np.argsort(d, kind="stable")[:loo_k]
        w = np.array([k(X[i], X[j]) for j in nb])
        S[i] = abs(R[i] - (w @ R[nb]) / w.sum()) if use_surprisal else 0.0
    chosen = []
    while len(chosen) < min(K, len(cand)):
        def gain(i):
            pen = max((k(X[i], X[j]) for j in chosen), default=0.0)
            return k(q, X[i]) * (1 + S[i]) - lam * pen
        best = max((i for i in cand if i not in chosen), key=gain)
        chosen.append(best)
    return sorted(chosen, key=lambda i: (R[i], i)), S


@pytest.mark.parametrize("K,lam", [(15, 0.1), (5, 0.0), (10, 2.0)])
def test_matches_spec_transcription(memory, K, lam):
    q = np.full(DIM, 0.5, dtype=np.float32)
    r = Retriever(memory, RetrievalConfig(K=K, lambda_div=lam, loo_k=4),
                  np.random.default_rng(0))
    got = r.select(q)
    want, S = spec_selection(memory, q.astype(np.float64), K, 64, 4, lam)
    assert [g.row for g in got] == want
    for g in got:
        assert g.surprisal == pytest.approx(S[g.row], rel=1e-4, abs=1e-6)
    rewards = [g.experience.reward for g in got]
    assert rewards == sorted(rewards)  # curriculum order


def test_similarity_only_is_the_k_nearest(memory):
    q = np.full(DIM, 0.75, dtype=np.float32)
    r = Retriever(memory, RetrievalConfig(K=6, selector="similarity"), np.random.default_rng(0))
    nearest = np.argsort(((memory.vectors - q) ** 2).sum(1), kind="stable")[:6]
    assert {g.row for g in r.select(q)} == set(nearest.tolist())
    assert all(g.surprisal == 0 for g in r.select(q))


def test_diversity_spreads_the_selection(memory):
    q = np.full(DIM, 0.5, dtype=np.float32)  # equidistant from both clusters
    picks = Retriever(memory, RetrievalConfig(K=10, lambda_div=5.0),
                      np.random.default_rng(0)).select(q)
    clusters = {round(float(np.mean(memory.vectors[p.row]))) for p in picks}
    assert clusters == {0, 1}


def test_no_icl_and_random(memory):
    q = np.zeros(DIM, dtype=np.float32)
    assert Retriever(memory, RetrievalConfig(K=0), np.random.default_rng(0)).select(q) == []
    assert Retriever(memory, RetrievalConfig(selector="none"),
                     np.random.default_rng(0)).select(q) == []
    a = Retriever(memory, RetrievalConfig(K=7, selector="random"), np.random.default_rng(5))
    b = Retriever(memory, RetrievalConfig(K=7, selector="random"), np.random.default_rng(5))
    ra, rb = a.select(q), b.select(q)
    assert [x.row for x in ra] == [x.row for x in rb] and len({x.row for x in ra}) == 7


def test_empty_and_tiny_memories(tmp_path):
    with ExperienceMemory(tmp_path, DIM, MemoryConfig(fsync=False)) as m:
        r = Retriever(m, RetrievalConfig(), np.random.default_rng(0))
        assert r.select(np.zeros(DIM)) == []
        m.add(Experience(id="only", time=0, app="a", phi=[0.1] * DIM, context={}, action={},
                         reward=0.5, latency_ms=1, cost_rate=1))
        (one,) = r.select(np.zeros(DIM))
        assert one.experience.id == "only" and one.surprisal == 0.0
