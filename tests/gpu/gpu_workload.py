"""One PyTorch GPU workload, run under the cuda_tb shim by test_gpu_shim.py.

Prints one JSON line: iterations per second over the timed section and the shim's
counters (from its own control socket) at the start and the end of that section.
Run it directly only with LD_PRELOAD and CUDA_TB_SOCKET set, e.g.::

    LD_PRELOAD=$(python -m cuda_tb.build) CUDA_TB_SOCKET=/tmp/sair-gpu/tb-%p.sock \
        python tests/gpu/gpu_workload.py --workload matmul --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Runnable as a script from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from cuda_tb.client import ShimClient  # noqa: E402


def shim_stats() -> dict | None:
    template = os.environ.get("CUDA_TB_SOCKET")
    if not template or "LD_PRELOAD" not in os.environ:
        return None
    path = template.replace("%p", str(os.getpid()))
    deadline = time.monotonic() + 5
    while True:
        try:
            return ShimClient(path).stats()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_step(workload: str):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    if workload == "matmul":
        a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
        b = torch.randn(4096, 4096, device=dev, dtype=torch.float16)

        def step() -> None:
            torch.matmul(a, b)

        return step
    layers: list[torch.nn.Module] = []
    for _ in range(4):
        layers += [torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)]
    model = torch.nn.Sequential(*layers, torch.nn.LayerNorm(1024)).to(dev, torch.float16).eval()
    x = torch.randn(256, 1024, device=dev, dtype=torch.float16)
    if workload == "mlp":

        def step() -> None:
            with torch.no_grad():
                model(x)

        return step
    if workload == "graph":
        # A captured CUDA graph: one cuGraphLaunch per step, as vLLM and
        # torch.compile(mode="reduce-overhead") do.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            model(x)

        def step() -> None:
            graph.replay()

        return step
    raise SystemExit(f"unknown workload {workload!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["matmul", "mlp", "graph"], default="matmul")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    step = make_step(args.workload)
    end_warmup = time.monotonic() + args.warmup
    while time.monotonic() < end_warmup:
        step()
    torch.cuda.synchronize()
    before = shim_stats()
    t0 = time.monotonic()
    iters = 0
    while time.monotonic() - t0 < args.seconds:
        for _ in range(10):
            step()
        iters += 10
        torch.cuda.synchronize()
    elapsed = time.monotonic() - t0
    after = shim_stats()
    print(json.dumps({
        "workload": args.workload,
        "iters": iters,
        "elapsed_s": elapsed,
        "iters_per_s": iters / elapsed,
        "device": torch.cuda.get_device_name(),
        "shim_before": before,
        "shim_after": after,
    }))


if __name__ == "__main__":
    main()
