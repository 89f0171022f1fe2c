"""Core performance: retrieval latency, add cost, reward with a large frontier.

    .venv/bin/python benchmarks/bench_core.py [--sizes 100000 1000000] [--out FILE]

Retrieval: K=15 of n stored experiences (phi of a 3-stage pipeline, 24 floats, drawn
from a mixture of operating points), p50/p99 over 200 queries. Add: amortised cost of
`ExperienceMemory.add` (journal write + fsync + exact neighbour-graph update + periodic
segment compaction) onto a memory of n. Reward: `score` against a 10 000-point frontier.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import faiss
import numpy as np

from sair_ray.config import MemoryConfig, SAIRConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.pareto import ParetoFrontier
from sair_ray.retrieval import Retriever
from sair_ray.reward import Outcome, score
from sair_ray.types import Experience

DIM = 24
CFG = SAIRConfig()


def phis(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.random((256, DIM))
    x = centers[rng.integers(256, size=n)] + 0.05 * rng.standard_normal((n, DIM))
    return np.clip(x, 0, 1.5).astype(np.float32)


def experience(i: int, v: np.ndarray, r: float) -> Experience:
    return Experience(id=f"b{i}", time=float(i), app="bench", phi=v.tolist(),
                      context={"round": i}, action={"pre": {"replicas": 1}}, reward=r,
                      latency_ms=100.0, cost_rate=1.0)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def bench_memory(n: int, rng: np.random.Generator, adds: int = 2000) -> dict[str, float]:
    """Bulk-load n - adds experiences, time `adds` single adds, then retrieval at n."""
    out: dict[str, float] = {"n": n}
    with tempfile.TemporaryDirectory() as d:
        mem = ExperienceMemory(d, DIM, MemoryConfig(), loo_k=CFG.retrieval.loo_k)
        base = n - adds
        x = phis(base, rng)
        r = rng.normal(0.3, 0.5, base)
        t0 = time.perf_counter()
        mem.add_many([experience(i, x[i], float(r[i])) for i in range(base)])
        out["bulk_load_s"] = time.perf_counter() - t0
        print(f"  loaded {base} in {out['bulk_load_s']:.1f} s", flush=True)
        # close() writes the index snapshot and the reopen loads it (sair_ray/memory_snapshot.py;
        # bench_memory_restart.py times every reopen path, 1M included)
        if n <= 200_000:
            t0 = time.perf_counter()
            mem.close()
            mem = ExperienceMemory(d, DIM, MemoryConfig(), loo_k=CFG.retrieval.loo_k)
            out["reopen_s"] = time.perf_counter() - t0

        extra = phis(adds, rng)
        t0 = time.perf_counter()
        for i in range(adds):
            mem.add(experience(n + i, extra[i], 0.5))
        mem.neighbours(np.arange(1))  # the deferred neighbour-graph update is part of the cost
        out["add_amortised_ms"] = (time.perf_counter() - t0) / adds * 1e3
        retr = Retriever(mem, CFG.retrieval, rng)
        queries = phis(220, rng)
        ts = []
        for q in queries:
            t0 = time.perf_counter()
            got = retr.select(q)
            ts.append(time.perf_counter() - t0)
            assert len(got) == CFG.retrieval.K
        ts = ts[20:]  # warm-up
        out["retrieve_p50_ms"], out["retrieve_p99_ms"] = pct(ts, 50), pct(ts, 99)

        mem.close()
    return out


def bench_reward(rng: np.random.Generator) -> dict[str, float]:
    f = ParetoFrontier()
    xs = np.sort(rng.random(10_000))
    for i, x in enumerate(xs):
        f.add(float(x), float(1 - (i + 1) / 10_001))
    assert len(f) == 10_000
    ts = []
    prev = Outcome(400.0, 3.0, 20.0)
    for _ in range(2000):
        o = Outcome(float(rng.random() * 1000), float(rng.random() * 10), 20.0)
        t0 = time.perf_counter()
        score(CFG.reward, f, outcome=o, prev=prev, v_prev=0.2, up_sum=1.0, n_stages=3,
              sla_ms=500.0, c_max=10.0)
        ts.append(time.perf_counter() - t0)
    return {"frontier": len(f), "reward_p50_ms": pct(ts, 50), "reward_p99_ms": pct(ts, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"faiss threads: {faiss.omp_get_max_threads()}")
    results = {"reward": bench_reward(rng), "memory": []}
    print(json.dumps(results["reward"]))
    for n in args.sizes:
        res = bench_memory(n, rng)
        print(json.dumps(res), flush=True)
        results["memory"].append(res)
    print("\n| stored | retrieve p50 | retrieve p99 | add (amortised) | reopen | bulk load |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in results["memory"]:
        reopen = f"{m['reopen_s']:.1f} s" if "reopen_s" in m else "not run"
        print(f"| {m['n']:,} | {m['retrieve_p50_ms']:.2f} ms | {m['retrieve_p99_ms']:.2f} ms "
              f"| {m['add_amortised_ms']:.3f} ms | {reopen} "
              f"| {m['bulk_load_s']:.0f} s |")
    r = results["reward"]
    print(f"\nreward with a {r['frontier']:,}-point frontier: p50 {r['reward_p50_ms']:.3f} ms, "
          f"p99 {r['reward_p99_ms']:.3f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
