"""Soak on the simulator: SAIR for a long stretch at 10x the paper's rates, with a
small memory cap, sampling the process's RSS and the memory's size as it goes.

    .venv/bin/python benchmarks/soak_sim.py [--minutes 30] [--scale 10] [--cap 100]
        [--interval 3] [--retain-s 300] [--app image_classification] [--json out.json]

The policy is SAIR's retrieval-only selector (`sair-retrieval`: no LLM, so the run
measures the loop, the memory and the simulator, not a model). Every experience is
stored (`reward.store_all`), and the decision interval is shortened from 30 s to
`--interval` s: 30 simulated minutes at 30 s are only 60 rounds, fewer than the smallest
allowed cap (`memory.max_experiences` >= 100), so eviction would never run. With 3 s
rounds the memory passes the cap every ~10 rounds after the first 100 and is compacted
each time. The workload is the profile's own Poisson rate times `--scale`.

Prints one row per simulated minute; exits 1 if the memory ever held more than the cap
or (with --max-rss-growth-mb) RSS grew more than that over the second half of the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sair_ray.backends.sim import SimBackend
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.embedding import phi_dim
from sair_ray.memory import ExperienceMemory
from sair_ray.profiles import load_profile
from sair_ray.registry import make_policy
from sair_ray.workloads import Poisson


@dataclass
class Sample:
    sim_min: float
    wall_s: float
    rss_mb: float
    experiences: int       # in memory now
    disk_kb: float         # the memory directory on disk
    stored: int            # experiences stored so far (before eviction)
    evicted: int           # experiences evicted so far
    rounds: int
    requests: int          # requests simulated so far
    p99_ms: float          # p99 of the last round's window


def rss_mb() -> float:
    """Current resident set size (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the peak


def disk_kb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024


def soak(app: str = "image_classification", minutes: float = 30.0, scale: float = 10.0,
         cap: int = 100, interval_s: float = 3.0, seed: int = 0, retain_s: float = 300.0,
         workdir: Path | None = None) -> list[Sample]:
    workload = load_profile(app).default_workload()
    if not isinstance(workload, Poisson):
        raise SystemExit(f"error: profile {app!r} has a {type(workload).__name__} workload; "
                         "the soak scales a Poisson rate (use image_classification or "
                         "nlp_analysis)")
    cfg = SAIRConfig().replace(**{
        "seed": seed, "memory.max_experiences": cap, "memory.fsync": False,
        "reward.store_all": True, "loop.decision_interval_s": interval_s,
        "loop.settle_s": min(interval_s / 3, 10.0)})
    # The simulator keeps `retain_s` of per-request records for windows (default 1 h,
    # compacted every half of it); the controller reads only the last round, so a short
    # retention keeps the simulator's own footprint from masking SAIR's.
    backend = SimBackend(app, Poisson(rate=workload.rate * scale), seed=seed,
                         retain_s=retain_s)
    pipe = backend.pipeline
    tmp = tempfile.TemporaryDirectory(prefix="sair-soak-") if workdir is None else None
    mem_dir = Path(tmp.name if tmp else workdir) / "memory"  # type: ignore[arg-type]
    mem = ExperienceMemory(mem_dir, phi_dim(len(pipe.stages)), cfg.memory,
                           loo_k=cfg.retrieval.loo_k)
    ctl = Controller(backend, make_policy("sair-retrieval", cfg, pipeline=pipe), cfg,
                     memory=mem)
    samples: list[Sample] = []
    t0 = time.perf_counter()
    now, next_sample, end = 0.0, 60.0, minutes * 60
    try:
        while now + interval_s <= end + 1e-9:
            now += interval_s
            backend.advance_to(now)
            d = ctl.tick(now)
            if len(mem) > cap:   # the cap is enforced at every store; this must not happen
                raise AssertionError(f"memory holds {len(mem)} > cap {cap} at {now:.0f} s")
            if now >= next_sample - 1e-9:
                tot = backend.totals()
                samples.append(Sample(
                    sim_min=round(now / 60, 2), wall_s=round(time.perf_counter() - t0, 1),
                    rss_mb=round(rss_mb(), 1), experiences=len(mem),
                    disk_kb=round(disk_kb(mem_dir), 1), stored=ctl.counters.stored,
                    evicted=ctl.counters.evicted, rounds=ctl.counters.rounds,
                    requests=tot.completed + tot.drops + tot.errors,
                    p99_ms=round(d.context.p99_ms, 1)))
                next_sample += 60.0
    finally:
        ctl.close()
        mem.close()
        if tmp is not None:
            tmp.cleanup()
    return samples


def to_markdown(samples: list[Sample]) -> str:
    cols = list(asdict(samples[0]))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in asdict(s).values()) + " |" for s in samples]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", default="image_classification")
    ap.add_argument("--minutes", type=float, default=30.0, help="simulated minutes")
    ap.add_argument("--scale", type=float, default=10.0, help="x the profile's request rate")
    ap.add_argument("--cap", type=int, default=100, help="memory.max_experiences (>= 100)")
    ap.add_argument("--interval", type=float, default=3.0, help="decision interval, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retain-s", type=float, default=300.0,
                    help="simulator record retention, s (its default is 3600)")
    ap.add_argument("--json", type=Path, help="also write the samples here")
    ap.add_argument("--max-rss-growth-mb", type=float, default=None,
                    help="fail if RSS grows more than this over the second half")
    a = ap.parse_args()
    if a.minutes <= 0 or a.scale <= 0 or a.interval < 1:
        ap.error("--minutes and --scale must be > 0, --interval >= 1")
    if a.cap < 100:
        ap.error("--cap must be >= 100 (the smallest memory.max_experiences)")
    samples = soak(a.app, a.minutes, a.scale, a.cap, a.interval, a.seed, a.retain_s)
    if not samples:
        ap.error("run shorter than one simulated minute: nothing sampled")
    print(to_markdown(samples))
    half = samples[len(samples) // 2]
    growth = samples[-1].rss_mb - half.rss_mb
    peak = max(s.experiences for s in samples)
    print(f"\n{a.app} at {a.scale:g}x for {a.minutes:g} simulated min: {samples[-1].rounds} "
          f"rounds, {samples[-1].requests} requests, {samples[-1].wall_s} s wall; memory "
          f"peak {peak} <= cap {a.cap}, {samples[-1].evicted} evicted; RSS "
          f"{samples[0].rss_mb} -> {half.rss_mb} -> {samples[-1].rss_mb} MB "
          f"({growth:+.1f} MB over the second half)")
    if a.json:
        a.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    if a.max_rss_growth_mb is not None and growth > a.max_rss_growth_mb:
        print(f"FAIL: RSS grew {growth:.1f} MB > {a.max_rss_growth_mb} MB", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
