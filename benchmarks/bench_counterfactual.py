"""Counterfactual engine cost: fork a running simulation and play alternatives from it.

    .venv/bin/python benchmarks/bench_counterfactual.py [--at 600] [--repeat 30] [--quick]

Per shipped profile (default workload), the simulation is run to `--at` seconds at its
initial allocation with a window read every 30 s (as the controller does), then:

- fork: `sair_ray.sim.fork.fork` (records from the fork time on; the default) and with
  `history=True` (every record kept), and `copy.deepcopy` once, for comparison (it is
  also wrong: the copy writes into the original's logs; docs/regret.md);
- play: one alternative from a fork point (a copy, one more replica of the first stage,
  run over the next 30 s, the window a round's reward reads), and over 300 s;
- alternatives per second: 1 / play time at 30 s.

Times are medians over `--repeat` tries (shared machines only ever slow a try down).
`--quick` runs one profile to 120 s with 5 tries (a smoke test, tests/sim/test_fork.py).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from sair_ray.backends.sim import SimBackend
from sair_ray.profiles import list_profiles
from sair_ray.sim.fork import Fork, fork
from sair_ray.types import StageAllocation


def _median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, at: float, repeat: int, deepcopy: bool = True) -> dict[str, Any]:
    backend = SimBackend(name, seed=0)
    t = 30.0
    while t <= at:
        backend.advance_to(t)
        backend.observe(t - 30, t)
        t += 30
    sim = backend.sim
    first = sim.pipeline.stages[0]
    a = sim.allocation[first.name]
    alt = {first.name: StageAllocation(a.replicas + 1, a.cpu_m, a.mem_mb, a.rate)}
    point = Fork(sim)
    out: dict[str, Any] = {
        "profile": name, "at_s": at, "in_flight": len(sim._inflight),
        "fork_ms": _median_s(lambda: fork(sim), repeat) * 1e3,
        "fork_history_ms": _median_s(lambda: fork(sim, history=True), repeat) * 1e3,
        "play_30s_ms": _median_s(lambda: point.play(alt, at + 30), repeat) * 1e3,
        "play_300s_ms": _median_s(lambda: point.play(alt, at + 300),
                                  max(1, repeat // 5)) * 1e3,
    }
    out["deepcopy_ms"] = _median_s(lambda: copy.deepcopy(sim), 1) * 1e3 if deepcopy \
        else float("nan")
    out["alternatives_per_s"] = 1e3 / out["play_30s_ms"]
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--at", type=float, default=600.0, help="fork time, simulated seconds")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="one profile, 120 s, 5 tries")
    args = ap.parse_args(argv)
    names = ["nlp_analysis"] if args.quick else list_profiles()
    at = 120.0 if args.quick else args.at
    repeat = 5 if args.quick else max(1, args.repeat)
    print(f"fork at t = {at:.0f} s, median of {repeat} tries")
    print("| profile | in flight | fork | fork, full history | deepcopy | play 30 s "
          "| play 300 s | alternatives / s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in names:
        r = measure(name, at, repeat)
        results.append(r)
        print(f"| {name} | {r['in_flight']} | {r['fork_ms']:.2f} ms "
              f"| {r['fork_history_ms']:.2f} ms | {r['deepcopy_ms']:.0f} ms "
              f"| {r['play_30s_ms']:.1f} ms | {r['play_300s_ms']:.0f} ms "
              f"| {r['alternatives_per_s']:.0f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
