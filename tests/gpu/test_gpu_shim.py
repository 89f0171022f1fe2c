"""The cuda_tb shim on a real GPU: PyTorch throughput under r in {0.25, 0.5, 1.0}.

Skipped cleanly without a CUDA driver or without a CUDA build of torch. Each run is a
fresh process (LD_PRELOAD must be set when the process starts). First, at r = 1, the
workload's own full-speed block rate is measured from the shim's counters and used as
B_W (CUDA_TB_BLOCKS_PER_WINDOW) for the throttled runs, so the expected throughput at
rate r is r times the r = 1 throughput; the device-attribute calibration the shim
would use on its own is reported alongside.

As a script (prints a markdown table)::

    python tests/gpu/test_gpu_shim.py [--seconds 3]
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

WORKLOAD = Path(__file__).resolve().parent / "gpu_workload.py"
REPO = Path(__file__).resolve().parents[2]
RATES = (1.0, 0.5, 0.25)
WORKLOADS = ("matmul", "mlp", "graph")


def gpu_unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the shim is Linux-only"
    if ctypes.util.find_library("cuda") is None and not Path("/dev/nvidiactl").exists():
        return "no CUDA driver (libcuda) on this machine"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def run_workload(workload: str, rate: float, seconds: float, socket_dir: str,
                 blocks_per_window: int | None = None) -> dict[str, Any]:
    from cuda_tb import runtime_env

    env = dict(os.environ)
    env.update(runtime_env(socket_dir, rate=rate, blocks_per_window=blocks_per_window)["env_vars"])
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), "--workload", workload, "--seconds", str(seconds)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{workload} at r={rate} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured_blocks_per_window(result: dict[str, Any]) -> int:
    before, after = result["shim_before"], result["shim_after"]
    blocks = after["blocks"] - before["blocks"]
    windows = (after["uptime_ns"] - before["uptime_ns"]) / after["window_ns"]
    return max(1, round(blocks / windows))


def sweep(workload: str, seconds: float, socket_dir: str) -> list[dict[str, Any]]:
    full = run_workload(workload, 1.0, seconds, socket_dir)
    bw = measured_blocks_per_window(full)
    rows = [{"rate": 1.0, "result": full, "bw": bw}]
    for rate in RATES[1:]:
        rows.append({"rate": rate, "result": run_workload(workload, rate, seconds, socket_dir, bw),
                     "bw": bw})
    base = full["iters_per_s"]
    for row in rows:
        row["ratio"] = row["result"]["iters_per_s"] / base
    return rows


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.parametrize("workload", WORKLOADS)
def test_gpu_throughput_follows_rate(workload: str) -> None:
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="tbgpu-", dir="/tmp") as socket_dir:
        rows = sweep(workload, 3.0, socket_dir)
    for row in rows:
        print(f"{workload} r={row['rate']}: {row['result']['iters_per_s']:.1f} it/s "
              f"({row['ratio']:.2f} of r=1), B_W={row['bw']}")
    full = rows[0]["result"]["shim_after"]
    assert full["throttled_launches"] == 0
    for row in rows[1:]:
        shim = row["result"]["shim_after"]
        assert shim["throttled_launches"] > 0
        assert abs(row["ratio"] - row["rate"]) < 0.4 * row["rate"] + 0.05, row
    if workload == "graph":
        assert full["graph_launches"] > 0
        assert full["graph_unknown_launches"] == 0, "graph size not read at instantiation"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="cuda_tb on a real GPU")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    reason = gpu_unavailable_reason()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    print("| workload | r | it/s | fraction of r = 1 | B_W used | B_W from device attributes |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tbgpu-", dir="/tmp") as socket_dir:
        for workload in WORKLOADS:
            rows = sweep(workload, args.seconds, socket_dir)
            device_bw = rows[0]["result"]["shim_after"]["blocks_per_window"]
            for row in rows:
                print(f"| {workload} | {row['rate']:.2f} | {row['result']['iters_per_s']:.1f} | "
                      f"{row['ratio']:.3f} | {row['bw']} | {device_bw} |")


if __name__ == "__main__":
    main()
