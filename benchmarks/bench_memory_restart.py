"""Restart of a big memory: how long reopening N experiences takes, with and without the
index snapshot.

    .venv/bin/python benchmarks/bench_memory_restart.py [--sizes 98000 1000000] [--quick]
        [--json FILE]

For each size N a memory directory is written the way `ExperienceMemory` writes one:
Parquet segments of 4 096 rows in its schema, phi of a 3-stage pipeline (24 floats) drawn
from a mixture of 256 operating points, and per row a real 3-stage context (~800 bytes of
JSON, what the controller stores). It is written directly, not through `add_many`, whose
own index build would double the run's longest part. Then, each step timed:

1. open without a snapshot: the index is rebuilt, in the background from 20 000 rows.
   `open` = until the constructor returns (the controller can decide from then on),
   `first retrieval` = one K = 15 selection right after (exact scans while rebuilding),
   `index ready` = until the rebuilt index is taken over (its snapshot written);
2. one `add` + `flush_segment`: a new segment and the snapshot rewrite, what a round pays
   once every `segment_rows` (4 096) stored experiences;
3. reopen with that valid snapshot;
4. reopen with a stale snapshot: 1 000 experiences added through `add` after it was
   written (the one from before put back, as a crash before the next flush leaves it);
5. reopen with a corrupt snapshot (one byte flipped mid-file): detected, the index rebuilt
   in the background again; closed without waiting for it (the close time is the cancel).

Default config: fsync on, index_exact_max 100 000: 98 000 stays under it with the 1 001 rows
the run adds (exact flat index throughout), 1 000 000 is HNSW. One run per step (a rebuild at
1 000 000 takes minutes). Prints Markdown tables. --quick: N = 3 000 with a
background threshold of 1 000, a few seconds (run by tests/unit/test_memory_snapshot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sair_ray.config import MemoryConfig, SAIRConfig
from sair_ray.embedding import PHI_VERSION
from sair_ray.memory import BACKGROUND_REBUILD_ROWS, ExperienceMemory, schema
from sair_ray.memory_snapshot import FILENAME
from sair_ray.retrieval import Retriever
from sair_ray.types import Context, Experience, StageKind, StageObservation

DIM = 24
SEGMENT_ROWS = 4096
STALE_ROWS = 1000
CFG = SAIRConfig()


def phis(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = np.random.default_rng(0).random((256, DIM))  # the same points for every call
    x = centers[rng.integers(256, size=n)] + 0.05 * rng.standard_normal((n, DIM))
    return np.clip(x, 0, 1.5).astype(np.float32)


def context(t: float, arrival: float) -> dict[str, Any]:
    stages = [StageObservation(name, kind, replicas=2, cpu_m=1000, mem_mb=2048, rate=1.0,
                               queue=3.0, util=0.61, p50_ms=40.5, p99_ms=120.25,
                               queue_delay_ms=12.5, throughput_rps=arrival)
              for name, kind in (("preprocess", StageKind.CPU), ("inference", StageKind.GPU),
                                 ("postprocess", StageKind.CPU))]
    return Context(app="bench", time=t, stages=tuple(stages), arrival_rate=arrival,
                   p50_ms=150.0, p99_ms=410.75, sla_ms=500.0, cost_rate=3.21).to_dict()


def write_memory(path: Path, n: int, rng: np.random.Generator) -> None:
    """n experiences as Parquet segments in the memory's schema (module docstring)."""
    seg_dir = path / "segments"
    seg_dir.mkdir(parents=True)
    x = phis(n, rng)
    arrival = rng.uniform(1, 100, n)
    ctx = context(0.0, 0.0)  # one real context, its time and load varied per row (fast)
    for k, lo in enumerate(range(0, n, SEGMENT_ROWS)):
        hi = min(n, lo + SEGMENT_ROWS)
        m = hi - lo
        t = pa.table({
            "id": [uuid.uuid4().hex for _ in range(m)],
            "time": np.arange(lo, hi, dtype=np.float64) * 30.0,
            "app": ["bench"] * m,
            "phi": pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].ravel()), DIM),
            "context": [json.dumps({**ctx, "time": i * 30.0, "arrival_rate": arrival[i]})
                        for i in range(lo, hi)],
            "action": [json.dumps({"preprocess": {"replicas": 1}})] * m,
            "reward": rng.normal(0.3, 0.5, m),
            "latency_ms": rng.uniform(50, 900, m),
            "cost_rate": rng.uniform(0.5, 5, m),
            "phi_version": np.full(m, PHI_VERSION, dtype=np.int16),
        }, schema=schema(DIM))
        pq.write_table(t, seg_dir / f"seg-{k + 1:08d}.parquet")


def experience(v: np.ndarray, rng: np.random.Generator) -> Experience:
    return Experience(id=uuid.uuid4().hex, time=time.time(), app="bench", phi=v.tolist(),
                      context=context(time.time(), float(rng.uniform(1, 100))),
                      action={"preprocess": {"replicas": 1}}, reward=0.5, latency_ms=100.0,
                      cost_rate=1.0)


def timed_open(path: Path, background_rows: int) -> tuple[ExperienceMemory, float]:
    t0 = time.perf_counter()
    mem = ExperienceMemory(path, DIM, MemoryConfig(), loo_k=CFG.retrieval.loo_k,
                           background_rebuild_rows=background_rows)
    return mem, time.perf_counter() - t0


def first_retrieval(mem: ExperienceMemory, rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    got = Retriever(mem, CFG.retrieval, rng).select(phis(1, rng)[0])
    assert len(got) == CFG.retrieval.K
    return time.perf_counter() - t0


def bench(n: int, workdir: Path, background_rows: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    path = workdir / f"mem-{n}"
    t0 = time.perf_counter()
    write_memory(path, n, rng)
    out: dict[str, Any] = {"n": n, "write_s": time.perf_counter() - t0, "cases": []}
    print(f"  wrote {n:,} experiences in {out['write_s']:.1f} s", flush=True)

    def case(name: str, mem: ExperienceMemory, open_s: float, **extra: Any) -> None:
        row = {"case": name, "open_s": open_s, "source": mem.index_source,
               "problem": mem.snapshot_problem, "first_retrieval_s": first_retrieval(mem, rng),
               "exact": mem.exact, **extra}
        out["cases"].append(row)
        print("  " + json.dumps(row), flush=True)

    # 1. no snapshot: rebuild (in the background when big)
    mem, open_s = timed_open(path, background_rows)
    case("no snapshot", mem, open_s)
    t0 = time.perf_counter()
    mem.wait_ready()
    out["cases"][-1]["ready_s"] = open_s + time.perf_counter() - t0
    # 2. what a segment flush costs with the snapshot rewrite
    mem.add(experience(phis(1, rng)[0], rng))
    t0 = time.perf_counter()
    mem.flush_segment()
    out["flush_s"] = time.perf_counter() - t0
    out["snapshot_mb"] = (path / FILENAME).stat().st_size / 1e6
    mem.close()
    before = workdir / "snapshot.before"
    shutil.copy(path / FILENAME, before)

    # 3. valid snapshot
    mem, open_s = timed_open(path, background_rows)
    case("valid snapshot", mem, open_s)
    # 4. stale snapshot: STALE_ROWS added after it was written
    for v in phis(STALE_ROWS, rng):
        mem.add(experience(v, rng))
    t0 = time.perf_counter()
    mem.close()
    out["close_s"] = time.perf_counter() - t0  # writes the snapshot of every row
    os.replace(before, path / FILENAME)
    mem, open_s = timed_open(path, background_rows)
    case(f"stale snapshot (+{STALE_ROWS:,} rows)", mem, open_s)
    mem.close()
    # 5. corrupt snapshot
    snap = path / FILENAME
    with open(snap, "r+b") as f:
        f.seek(snap.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    mem, open_s = timed_open(path, background_rows)
    case("corrupt snapshot", mem, open_s)
    t0 = time.perf_counter()
    mem.close()
    out["cases"][-1]["close_s"] = time.perf_counter() - t0
    shutil.rmtree(path)
    return out


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.1f} s"


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| stored | index | snapshot | open (can decide) | first retrieval | index ready |",
             "|---:|---|---|---:|---:|---:|"]
    for r in results:
        for c in r["cases"]:
            ready = c.get("ready_s", c["open_s"] if c["source"] != "rebuilding" else None)
            how = {"rebuilding": "rebuilt in the background", "rebuilt": "rebuilt in place",
                   "snapshot": "loaded", "stale snapshot": "loaded + rows linked"}
            lines.append(f"| {r['n']:,} | {'exact flat' if c['exact'] else 'HNSW'} | "
                         f"{c['case']}: {how.get(c['source'], c['source'])} | "
                         f"{seconds(c['open_s'])} | {seconds(c['first_retrieval_s'])} | "
                         f"{seconds(ready) if ready is not None else 'not waited for'} |")
    lines += ["", "| stored | snapshot size | add + flush_segment (segment + snapshot) | "
              "close after 1 000 adds (snapshot) | close while rebuilding (cancel) |",
              "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['snapshot_mb']:.3g} MB | {seconds(r['flush_s'])} | "
                     f"{seconds(r['close_s'])} | {seconds(r['cases'][-1]['close_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[98_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="N = 3 000, a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results as JSON here")
    args = ap.parse_args(argv)
    sizes, background = args.sizes, BACKGROUND_REBUILD_ROWS
    if args.quick:
        sizes, background = [3000], 1000
    print(f"load average at start: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs")
    results = []
    with tempfile.TemporaryDirectory(prefix="sair-restart-") as d:
        for n in sizes:
            results.append(bench(n, Path(d), background, args.seed))
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    print(to_markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
