"""Benchmark of the cuda_tb shim against the fake driver (no GPU needed).

1. Added cost per launch at r = 1: a fake libcuda whose launch returns at once,
   driven through cuGetProcAddress_v2 like the CUDA runtime; median ns per launch
   over batches of launches, without the shim and with it, interleaved in one run.
2. Throughput against r: a fake device retiring 1e6 blocks/s (1 us per block,
   B_W = 10 000 blocks per 10 ms window) launched at full speed for r in
   {0.1, 0.25, 0.5, 0.75, 1.0}; achieved fraction of the device's speed and its
   error relative to r (the issue asks for +-5 % over 10 s runs: --seconds 10).
3. Rate-change latency: one launcher on that fake device while the rate flips
   between 1.0 and 0.1 (--pair) over the control socket, --changes times each way at
   random phases of the bucket's window. Times are measured from the moment the
   client has the socket reply (SET rate returned), on the launcher's per-launch
   timeline, which records when each launch was called and when it reached the fake
   driver, i.e. left the shim:
   - down (1.0 -> 0.1): until the first launch the shim holds (>= 1 ms), and the
     blocks admitted in the 10 ms after the command was sent (the new rate allows
     1 000 per window, the old one 10 000; launches admitted at the old rate during
     the round trip count too). The window opened by the change ends more than 10 ms
     after the send, so its successor's refill is never counted;
   - up (0.1 -> 1.0): until the launch the shim was holding is released, and until
     the blocks admitted over the following 10 ms reach 90 % of the new rate.
   Times are signed: a negative one means the change was in effect before the client
   had read the reply (the shim applies it before answering).

Prints markdown tables. Usage:
    python benchmarks/bench_shim.py [--quick] [--seconds S] [--changes N] [--pair LOW HIGH]
                                    [--parts overhead,latency,throughput]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cuda_tb import ShimClient, socket_path
from cuda_tb.build import build_fake_libcuda, build_launcher, build_shim

RATES = (0.1, 0.25, 0.5, 0.75, 1.0)
NS_PER_BLOCK = 1000
BLOCKS_PER_WINDOW = 10_000
NOMINAL_BLOCKS_PER_S = 1e9 / NS_PER_BLOCK
WINDOW_NS = 10_000_000
# Rate-change runs: 100-block launches, the size the shim tests use.
CHANGE_BLOCKS = 100
# A launch the shim held this long waited for a refill; the fast path takes
# nanoseconds, so only a preemption inside the shim could come near it.
HOLD_NS = 1_000_000


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


# ---- rate-change latency ------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    to: float
    sent_ns: int  # just before the client sent SET rate
    reply_ns: int  # the client had the OK


@dataclass(frozen=True)
class Timeline:
    """The launcher's rows, in launch order (one thread)."""

    called: list[int]  # launch called
    admitted: list[int]  # launch reached the fake driver (left the shim)
    returned: list[int]

    @classmethod
    def read(cls, path: Path) -> Timeline:
        called, admitted, returned = [], [], []
        for line in path.read_text().splitlines():
            t_end, _blocks, t_call, t_entry = (int(x) for x in line.split())
            called.append(t_call)
            admitted.append(t_entry)
            returned.append(t_end)
        if not admitted or min(admitted) == 0:
            raise RuntimeError("the fake driver recorded no admission times")
        return cls(called, admitted, returned)

    def admitted_between(self, lo: int, hi: int) -> int:
        """Launches admitted in [lo, hi); admission times only grow with one thread."""
        return bisect.bisect_left(self.admitted, hi) - bisect.bisect_left(self.admitted, lo)


def down_latency(tl: Timeline, c: Change) -> tuple[float, int]:
    """(ms from the reply to the call of the first launch the shim holds, blocks
    admitted in the 10 ms after the command was sent)."""
    # Called after the command went out: a launch already held then was held by the
    # old rate (when the old rate was below 1 too).
    start = bisect.bisect_left(tl.called, c.sent_ns)
    hold = next(
        (tl.called[i] for i in range(start, len(tl.called))
         if tl.admitted[i] - tl.called[i] >= HOLD_NS),
        None,
    )
    if hold is None:
        raise RuntimeError(f"no launch was held after SET rate {c.to}")
    blocks = tl.admitted_between(c.sent_ns, c.sent_ns + WINDOW_NS) * CHANGE_BLOCKS
    return (hold - c.reply_ns) / 1e6, blocks


def up_latency(tl: Timeline, c: Change) -> tuple[float, float]:
    """(ms from the reply until the held launch is released, ms until the blocks
    admitted over the next 10 ms reach 90 % of the new rate)."""
    i = bisect.bisect_right(tl.admitted, c.sent_ns)
    if i >= len(tl.admitted):
        raise RuntimeError(f"no launch after SET rate {c.to}")
    release = tl.admitted[i]
    want = 0.9 * c.to * BLOCKS_PER_WINDOW / CHANGE_BLOCKS
    for j in range(i, len(tl.admitted)):
        if tl.admitted_between(tl.admitted[j], tl.admitted[j] + WINDOW_NS) >= want:
            full = tl.admitted[j]
            break
    else:
        raise RuntimeError(f"the launcher never reached 90 % of r * B_W after SET rate {c.to}")
    return (release - c.reply_ns) / 1e6, (full - c.reply_ns) / 1e6


def rate_changes(launcher: Path, fake: Path, shim: Path, changes: int, sock_dir: str,
                 low: float, high: float,
                 seed: int = 1) -> tuple[list[Change], Timeline, list[float]]:
    """Start at `high`, flip to `low` and back `changes` times; returns the changes,
    the launcher's timeline and the SET round trips in ms."""
    rng = random.Random(seed)
    gap = (0.05, 0.07)  # s between changes: > 4 windows, at a random window phase
    duration = 0.4 + 2 * changes * (gap[1] + 0.02) + 0.5
    timeline = Path(sock_dir) / "timeline.txt"
    env = launcher_env(
        fake, shim, FAKE_CUDA_NS_PER_BLOCK=NS_PER_BLOCK, CUDA_TB_RATE=high,
        CUDA_TB_BLOCKS_PER_WINDOW=BLOCKS_PER_WINDOW,
        CUDA_TB_SOCKET=f"{sock_dir}/cuda_tb-%p.sock",
    )
    proc = subprocess.Popen(
        [str(launcher), "--blocks", str(CHANGE_BLOCKS), "--duration", str(duration),
         "--timeline", str(timeline)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    t_start = time.monotonic()
    path = socket_path(sock_dir, proc.pid)
    while not path.exists():
        if proc.poll() is not None or time.monotonic() - t_start > 10:
            raise RuntimeError(f"launcher socket did not appear: {proc.stderr.read()}")
        time.sleep(0.005)
    client = ShimClient(path)
    done: list[Change] = []
    rtt: list[float] = []
    time.sleep(0.3)  # past the start-up burst of the initially full bucket
    stop_at = t_start + duration - 0.2  # the last change must still see 100 ms of launches
    for _ in range(changes):
        for rate in (low, high):
            time.sleep(rng.uniform(*gap))
            if time.monotonic() > stop_at:
                break
            sent = time.monotonic_ns()
            client.set_rate(rate)
            reply = time.monotonic_ns()
            done.append(Change(rate, sent, reply))
            rtt.append((reply - sent) / 1e6)
    out, err = proc.communicate(timeout=duration + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"launcher failed ({proc.returncode}): {err}")
    return done, Timeline.read(timeline), rtt


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 100]."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_table(changes: list[Change], tl: Timeline, low: float,
                  high: float) -> list[tuple[str, list[float]]]:
    hold, burst, release, full = [], [], [], []
    for c in changes:
        if c.to == low:
            ms, blocks = down_latency(tl, c)
            hold.append(ms)
            burst.append(float(blocks))
        else:
            ms_release, ms_full = up_latency(tl, c)
            release.append(ms_release)
            full.append(ms_full)
    return [
        (f"down {high:g} -> {low:g}: first launch held (ms)", hold),
        (f"down {high:g} -> {low:g}: blocks admitted in the 10 ms after the send "
         f"(new rate: {low * BLOCKS_PER_WINDOW:,.0f} per window)", burst),
        (f"up {low:g} -> {high:g}: held launch released (ms)", release),
        (f"up {low:g} -> {high:g}: 90 % of the new rate admitted over the next 10 ms (ms)",
         full),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer launches, shorter runs")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per rate in the throughput runs "
                             "(default 1, --quick 0.5)")
    parser.add_argument("--changes", type=int, default=None,
                        help="rate changes each way in the latency run (default 50, --quick 10)")
    parser.add_argument("--pair", type=float, nargs=2, default=(0.1, 1.0),
                        metavar=("LOW", "HIGH"),
                        help="rates the latency run flips between (default 0.1 1.0)")
    parser.add_argument("--parts", default="overhead,latency,throughput",
                        help="comma-separated parts to run (default: all three)")
    args = parser.parse_args()
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - {"overhead", "latency", "throughput"}:
        parser.error("--parts takes overhead, latency and/or throughput")
    low, high = sorted(args.pair)
    if not 0.1 <= low < high <= 1.0:
        parser.error("--pair needs two different rates in [0.1, 1]")
    batches, size, rounds, duration, n_changes = (
        (10, 20_000, 1, 0.5, 10) if args.quick else (10, 100_000, 3, 1.0, 50)
    )
    if args.seconds is not None:
        duration = args.seconds
    if args.changes is not None:
        n_changes = args.changes

    with tempfile.TemporaryDirectory(prefix="bench_shim-", dir="/tmp") as tmp:
        shim = build_shim()
        fake = build_fake_libcuda(tmp)
        launcher = build_launcher(tmp)
        sock = f"{tmp}/cuda_tb-%p.sock"

        print(f"# cuda_tb shim benchmark ({platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f})\n")
        if "overhead" in parts:
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

        if "latency" in parts:
            print(f"## Rate-change latency ({n_changes} changes each way, 1 us/block fake "
                  f"device, B_W = {BLOCKS_PER_WINDOW}, {CHANGE_BLOCKS}-block launches, one "
                  f"thread; load average {os.getloadavg()[0]:.2f})\n")
            changes, tl, rtt = rate_changes(launcher, fake, shim, n_changes, tmp, low, high)
            print("| measured from the socket reply (ms) or the send (blocks) | n | median | "
                  "p99 | max |")
            print("|---|---:|---:|---:|---:|")
            for name, values in latency_table(changes, tl, low, high):
                fmt = "{:,.0f}" if "blocks" in name else "{:.2f}"
                print(f"| {name} | {len(values)} | {fmt.format(statistics.median(values))} | "
                      f"{fmt.format(percentile(values, 99))} | {fmt.format(max(values))} |")
            print(f"\nSET rate round trip (client send to reply): median "
                  f"{statistics.median(rtt):.2f} ms, p99 {percentile(rtt, 99):.2f} ms, max "
                  f"{max(rtt):.2f} ms.\n")

        if "throughput" in parts:
            print(f"## Throughput against r (fake device 1 us/block, B_W = {BLOCKS_PER_WINDOW}, "
                  f"{duration:g} s per rate after 0.1 s warm-up; load average "
                  f"{os.getloadavg()[0]:.2f})\n")
            points = throughput(launcher, fake, shim, duration, sock)
            full = dict(points)[1.0]
            print("| r | blocks/s | fraction of device speed | error vs r | "
                  "fraction of r = 1 run |")
            print("|---:|---:|---:|---:|---:|")
            worst = 0.0
            for rate, bps in points:
                share = bps / NOMINAL_BLOCKS_PER_S
                err = (share - rate) / rate
                worst = max(worst, abs(err))
                print(f"| {rate:.2f} | {bps:,.0f} | {share:.4f} | {err:+.2%} | {bps / full:.4f} |")
            verdict = "meets" if worst <= 0.05 else "MISSES"
            print(f"\nLargest error relative to r: {worst:.2%} ({verdict} the +-5 % target).")


if __name__ == "__main__":
    main()
