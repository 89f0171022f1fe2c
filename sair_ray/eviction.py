"""Which experiences a full memory keeps (bounded memory growth: `memory.max_experiences`).

When the memory passes `memory.max_experiences`, it is compacted to 90 % of the cap.
Kept, in this order:

1. the Pareto frontier of each load bucket: experiences whose outcome (p99 latency, cost
   rate) no other experience at a similar arrival rate beats on both; they are the best
   known trade-offs, which is what the reward is measured against (docs/algorithm.md §3);
2. then the highest leave-one-out surprisal (docs/algorithm.md §4): the episodes whose reward their
   neighbours do not predict, which retrieval favours anyway; near-duplicates of their
   neighbours (surprisal ~0) go first;
3. ties broken towards newer experiences.

If the frontier alone exceeds the budget, its newest members are kept.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from sair_ray.memory import ExperienceMemory
from sair_ray.retrieval import SIGMA_FLOOR, surprisal

log = logging.getLogger(__name__)

KEEP_FRACTION = 0.9
LOAD_BUCKETS_PER_DOUBLING = 2  # arrival rates within ~41 % of each other share a frontier
CHUNK = 1024                   # rows per surprisal batch (bounds the refresh matrix)


def frontier_rows(latency: np.ndarray, cost: np.ndarray, arrival: np.ndarray) -> np.ndarray:
    """Rows non-dominated in (latency, cost), both minimised, within each load bucket."""
    bucket = np.floor(np.log2(np.maximum(arrival, 1e-3)) * LOAD_BUCKETS_PER_DOUBLING)
    out = []
    for b in np.unique(bucket):
        rows = np.nonzero(bucket == b)[0]
        order = rows[np.lexsort((cost[rows], latency[rows]))]
        best = np.inf
        for r in order:  # sorted by latency: a row is on the frontier if cheaper than all before
            if cost[r] < best:
                out.append(r)
                best = cost[r]
    return np.asarray(sorted(out), dtype=np.int64)


def all_surprisal(memory: ExperienceMemory) -> np.ndarray:
    # Every row's list: from the graph, not from exact scans of a memory still rebuilding
    # its index after a restart (a scan per row would cost far more than the rebuild).
    memory.wait_ready()
    n = len(memory)
    nd2 = np.concatenate([memory.neighbours(np.arange(lo, min(n, lo + CHUNK)))[1][:, 0]
                          for lo in range(0, n, CHUNK)])
    finite = nd2[np.isfinite(nd2)]
    sigma = max(float(np.sqrt(np.median(finite))) if len(finite) else 1.0, SIGMA_FLOOR)
    return np.concatenate([surprisal(memory, np.arange(lo, min(n, lo + CHUNK)), sigma)
                           for lo in range(0, n, CHUNK)])


def choose_keep(memory: ExperienceMemory, n_keep: int) -> np.ndarray:
    n = len(memory)
    if n <= n_keep:
        return np.arange(n)
    t = memory.table()
    latency = t.column("latency_ms").to_numpy()
    cost = t.column("cost_rate").to_numpy()
    arrival = np.array([json.loads(c).get("arrival_rate", 0.0)
                        for c in t.column("context").to_pylist()], dtype=float)
    front = frontier_rows(latency, cost, arrival)
    if len(front) >= n_keep:
        return front[-n_keep:]
    surp = all_surprisal(memory)
    rest = np.setdiff1d(np.arange(n), front)
    order = rest[np.lexsort((-rest, -surp[rest]))]   # surprisal desc, then newest first
    return np.sort(np.concatenate([front, order[: n_keep - len(front)]]))


def enforce_cap(memory: ExperienceMemory, cap: int) -> int:
    """Compact `memory` to KEEP_FRACTION of `cap` if it is over; returns rows dropped."""
    if len(memory) <= cap:
        return 0
    t0 = time.perf_counter()
    dropped = memory.compact(choose_keep(memory, int(cap * KEEP_FRACTION)))
    log.info("memory %s over its cap of %d: evicted %d experiences in %.1f s", memory.path,
             cap, dropped, time.perf_counter() - t0)
    return dropped
