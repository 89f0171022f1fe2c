"""Simulator speed: requests simulated per second of wall time, per shipped profile.

    .venv/bin/python benchmarks/bench_sim.py [--hours 1] [--seed 0]

One simulated run per profile at its default workload and initial allocation, with a
metrics window read every 30 s (as the controller does) and no policy, so the number is
the engine's own cost.
"""

from __future__ import annotations

import argparse
import time

from sair_ray.backends.sim import SimBackend
from sair_ray.sim.profiles import list_profiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    until = args.hours * 3600
    print("| profile | simulated requests | wall time | requests / wall s | sim s / wall s |")
    print("|---|---:|---:|---:|---:|")
    for name in list_profiles():
        backend = SimBackend(name, seed=args.seed)
        t0 = time.perf_counter()
        t = 30.0
        while t <= until:
            backend.advance_to(t)
            backend.observe(t - 30, t)
            t += 30
        wall = time.perf_counter() - t0
        tot = backend.totals()
        n = tot.completed + tot.drops + tot.errors
        print(f"| {name} | {n:,} | {wall:.2f} s | {n / wall:,.0f} | {until / wall:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
