"""Benchmark of the cuda_tb shim against the fake driver (no GPU needed).

1. Added cost per launch at r = 1: a fake libcuda whose launch returns at once,
   driven through cuGetProcAddress_v2 like the CUDA runtime; median ns per launch
   over batches of launches, without the shim and with it, interleaved in one run.
2. Throughput against r: a fake device retiring 1e6 blocks/s (1 us per block,
   B_W = 10 000 blocks per 10 ms window) launched at full speed for r in
   {0.1, 0.25, 0.5, 0.75, 1.0}; achieved fraction of the device's speed.

Prints markdown tables. Usage: python benchmarks/bench_shim.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

from cuda_tb.build import build_fake_libcuda, build_launcher, build_shim

RATES = (0.1, 0.25, 0.5, 0.75, 1.0)
NS_PER_BLOCK = 1000
BLOCKS_PER_WINDOW = 10_000
NOMINAL_BLOCKS_PER_S = 1e9 / NS_PER_BLOCK


def launcher_env(fake: Path, shim: Path | None, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_TB_", "FAKE_CUDA_"))}
    env.pop("LD_PRELOAD", None)
    env["LD_LIBRARY_PATH"] = str(fake.parent)
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(launcher: Path, args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [str(launcher), *args], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def overhead(launcher: Path, fake: Path, shim: Path, batches: int, size: int, rounds: int,
             sock: str) -> list[tuple[str, float]]:
    args = ["--bench-batches", str(batches), "--bench-size", str(size), "--blocks", "1"]
    configs = {
        "no shim": launcher_env(fake, None, FAKE_CUDA_NS_PER_BLOCK=0),
        "shim, r = 1": launcher_env(
            fake, shim, FAKE_CUDA_NS_PER_BLOCK=0, CUDA_TB_RATE=1.0, CUDA_TB_SOCKET=sock
        ),
        # The throttled path with a bucket too large to ever wait: the cost of
        # taking the bucket lock on every launch.
        "shim, r = 0.99 (never waits)": launcher_env(
            fake, shim, FAKE_CUDA_NS_PER_BLOCK=0, CUDA_TB_RATE=0.99,
            CUDA_TB_BLOCKS_PER_WINDOW=10**12, CUDA_TB_SOCKET=sock,
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):  # interleaved, so drift on the machine hits all alike
        for name, env in configs.items():
            result = run(launcher, args, env)
            assert result["status"] == 0, result
            samples[name].extend(result["bench_batches"])
    return [(name, statistics.median(values)) for name, values in samples.items()]


def throughput(launcher: Path, fake: Path, shim: Path, duration: float,
               sock: str) -> list[tuple[float, float]]:
    out = []
    for rate in RATES:
        env = launcher_env(
            fake, shim, FAKE_CUDA_NS_PER_BLOCK=NS_PER_BLOCK, CUDA_TB_RATE=rate,
            CUDA_TB_BLOCKS_PER_WINDOW=BLOCKS_PER_WINDOW, CUDA_TB_SOCKET=sock,
        )
        result = run(launcher, ["--warmup", "0.1", "--duration", str(duration)], env)
        out.append((rate, result["blocks_per_s"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer launches, shorter runs")
    args = parser.parse_args()
    batches, size, rounds, duration = (10, 20_000, 1, 0.5) if args.quick else (10, 100_000, 3, 1.0)

    with tempfile.TemporaryDirectory(prefix="bench_shim-") as tmp:
        shim = build_shim()
        fake = build_fake_libcuda(tmp)
        launcher = build_launcher(tmp)
        sock = f"{tmp}/cuda_tb-%p.sock"

        print(f"# cuda_tb shim benchmark ({platform.machine()}, {os.cpu_count()} CPUs)\n")
        print(f"## Added cost per launch (median of {rounds * batches} batches of {size} "
              f"launches, fake driver launch = no-op)\n")
        rows = overhead(launcher, fake, shim, batches, size, rounds, sock)
        base = rows[0][1]
        print("| configuration | ns / launch | added ns / launch | ratio |")
        print("|---|---:|---:|---:|")
        for name, ns in rows:
            print(f"| {name} | {ns:.1f} | {ns - base:+.1f} | {ns / base:.2f} |")
        added = rows[1][1] - base
        verdict = "meets" if added <= 100 else "MISSES"
        print(f"\nAt r = 1 the shim adds {added:.1f} ns per launch "
              f"({verdict} the 100 ns target).\n")

        print(f"## Throughput against r (fake device 1 us/block, B_W = {BLOCKS_PER_WINDOW}, "
              f"{duration:g} s per rate after 0.1 s warm-up)\n")
        points = throughput(launcher, fake, shim, duration, sock)
        full = dict(points)[1.0]
        print("| r | blocks/s | fraction of device speed | fraction of r = 1 run |")
        print("|---:|---:|---:|---:|")
        for rate, bps in points:
            print(f"| {rate:.2f} | {bps:,.0f} | {bps / NOMINAL_BLOCKS_PER_S:.3f} | "
                  f"{bps / full:.3f} |")


if __name__ == "__main__":
    main()
