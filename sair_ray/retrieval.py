"""Surprisal-based experience selection (docs/algorithm.md §4; paper Eq. 8-10).

For a query phi_t:
1. candidates: the `n_candidates` nearest stored experiences (FAISS);
2. bandwidth sigma: median candidate distance to phi_t (floor 1e-3), kernel
   k(a, b) = exp(-||a - b||^2 / (2 sigma^2));
3. leave-one-out surprisal S_i = |R_i - r_hat_-i|, r_hat_-i the kernel-weighted mean reward
   of candidate i's `loo_k` nearest stored neighbours (itself excluded), read from the
   memory's neighbour graph;
4. greedy selection: gain(i | C) = k(phi_t, phi_i) (1 + S_i) - lambda_div max_{j in C} k(phi_i,
   phi_j), best remaining candidate first, until K are chosen or none is left;
5. curriculum order: lowest reward first.

Selectors (ablations): "surprisal" (the above), "similarity" (S_i = 0, lambda_div = 0: the
K nearest), "random" (K uniformly from the whole memory), "none" (no episodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sair_ray.config import RetrievalConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.types import Experience

SIGMA_FLOOR = 1e-3


@dataclass(frozen=True)
class Retrieved:
    row: int
    experience: Experience
    similarity: float  # k(phi_t, phi_i)
    surprisal: float   # S_i
    gain: float        # marginal gain when it was picked (nan for "random")


def surprisal(memory: ExperienceMemory, rows: np.ndarray, sigma: float) -> np.ndarray:
    """Leave-one-out surprisal |R_i - r_hat_-i| of each row (0 for a row with no neighbour)."""
    nbr, nd2 = memory.neighbours(rows)
    valid = nbr >= 0
    if not valid.any():
        return np.zeros(len(rows))
    d2 = np.where(valid, nd2.astype(np.float64), np.inf)
    # Normalised weights are shift-invariant: subtracting each row's nearest distance keeps
    # exp() away from underflow when sigma is small.
    nearest = d2.min(axis=1, keepdims=True)
    nearest = np.where(np.isfinite(nearest), nearest, 0.0)
    w = np.where(valid, np.exp(-(d2 - nearest) / (2 * sigma * sigma)), 0.0)
    r_nbr = np.where(valid, memory.rewards[np.where(valid, nbr, 0)], 0.0)
    wsum = w.sum(axis=1)
    has = wsum > 0
    r_hat = np.divide((w * r_nbr).sum(axis=1), wsum, out=np.zeros(len(rows)), where=has)
    return np.where(has, np.abs(memory.rewards[rows] - r_hat), 0.0)


def greedy_select(sim: np.ndarray, surp: np.ndarray, pair_kernel: np.ndarray, k: int,
                  lambda_div: float) -> tuple[list[int], list[float]]:
    """Indices (into the candidate arrays) in pick order, and each pick's gain."""
    base = sim * (1.0 + surp)
    penalty = np.zeros(len(sim))
    free = np.ones(len(sim), dtype=bool)
    picked: list[int] = []
    gains: list[float] = []
    for _ in range(min(k, len(sim))):
        gain = np.where(free, base - lambda_div * penalty, -np.inf)
        i = int(np.argmax(gain))  # ties go to the nearer candidate (FAISS order)
        picked.append(i)
        gains.append(float(gain[i]))
        free[i] = False
        np.maximum(penalty, pair_kernel[i], out=penalty)
    return picked, gains


class Retriever:
    def __init__(self, memory: ExperienceMemory, cfg: RetrievalConfig,
                 rng: np.random.Generator) -> None:
        self.memory = memory
        self.cfg = cfg
        self.rng = rng

    def select(self, q: np.ndarray) -> list[Retrieved]:
        cfg, mem = self.cfg, self.memory
        if cfg.K == 0 or cfg.selector == "none" or len(mem) == 0:
            return []
        q = np.asarray(q, dtype=np.float32)
        if cfg.selector == "random":
            rows = self.rng.choice(len(mem), size=min(cfg.K, len(mem)), replace=False)
            d2 = ((mem.vectors[rows] - q) ** 2).sum(axis=1)
            sigma = max(float(np.median(np.sqrt(d2))), SIGMA_FLOOR)
            sim = np.exp(-d2 / (2 * sigma * sigma))
            picks = [(int(r), float(s), 0.0, float("nan")) for r, s in zip(rows, sim,
                                                                               strict=True)]
            return self._ordered(picks)

        d2, rows = mem.search(q, cfg.n_candidates)
        d2 = d2.astype(np.float64)
        sigma = max(float(np.median(np.sqrt(np.maximum(d2, 0)))), SIGMA_FLOOR)
        sim = np.exp(-d2 / (2 * sigma * sigma))
        if cfg.selector == "similarity":
            surp = np.zeros(len(rows))
            lambda_div = 0.0
        else:
            surp = surprisal(mem, rows, sigma)
            lambda_div = cfg.lambda_div
        vec = mem.vectors[rows].astype(np.float64)
        sq = (vec * vec).sum(axis=1)
        pd2 = np.maximum(sq[:, None] + sq[None, :] - 2 * vec @ vec.T, 0)
        pair = np.exp(-pd2 / (2 * sigma * sigma))
        picked, gains = greedy_select(sim, surp, pair, cfg.K, lambda_div)
        return self._ordered([(int(rows[i]), float(sim[i]), float(surp[i]), g)
                              for i, g in zip(picked, gains, strict=True)])

    def _ordered(self, picks: list[tuple[int, float, float, float]]) -> list[Retrieved]:
        out = [Retrieved(row, self.memory.get(row), s, su, g) for row, s, su, g in picks]
        out.sort(key=lambda r: (r.experience.reward, r.row))  # curriculum: lowest reward first
        return out
