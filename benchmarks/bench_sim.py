"""Simulator speed: requests simulated per second of wall time, per shipped profile.

    .venv/bin/python benchmarks/bench_sim.py [--hours 1] [--seed 0] [--repeat 3]

One simulated run per profile at its default workload and initial allocation, with a
metrics window read every 30 s (as the controller does) and no policy, so the number is
the engine's own cost. Each profile runs `--repeat` times; the best run is reported (the
machines this runs on are shared, and other jobs only ever make a run slower), with its
wall time and the process CPU time, which moves less with the load of the machine.
"""

from __future__ import annotations

import argparse
import time

from sair_ray.backends.sim import SimBackend
from sair_ray.profiles import list_profiles


def one_run(name: str, seed: int, until: float) -> tuple[int, float, float]:
    """(requests simulated, wall s, CPU s) of one run."""
    backend = SimBackend(name, seed=seed)
    w0, c0 = time.perf_counter(), time.process_time()
    t = 30.0
    while t <= until:
        backend.advance_to(t)
        backend.observe(t - 30, t)
        t += 30
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    tot = backend.totals()
    return tot.completed + tot.drops + tot.errors, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    until = args.hours * 3600
    print(f"best of {args.repeat} runs per profile")
    print("| profile | simulated requests | wall time | CPU time | requests / wall s "
          "| requests / CPU s | sim s / wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in list_profiles():
        runs = [one_run(name, args.seed, until) for _ in range(max(1, args.repeat))]
        n = runs[0][0]
        wall = min(r[1] for r in runs)
        cpu = min(r[2] for r in runs)
        print(f"| {name} | {n:,} | {wall:.2f} s | {cpu:.2f} s | {n / wall:,.0f} "
              f"| {n / cpu:,.0f} | {until / wall:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
