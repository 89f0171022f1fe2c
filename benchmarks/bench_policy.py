"""Decision latency of SAIR with the embedded model (targets: LLM decision p50 <= 3 s,
p99 <= 10 s on 2 CPU cores; everything but the LLM call <= 20 ms).

1. Fill an experience memory the way SAIR does, by running the retrieval-only selector with
   exploration on the simulator (image classification, burst) for --warm-hours.
2. Run --rounds more rounds with the LLM policy on top of that memory (no probes, so every
   round asks the model with K = 15 retrieved episodes), and report per round: the LLM
   round trip, the rest of the round (observe, reward, retrieve, candidates, prompt,
   parse, validate, act), and the prompt size.

    .venv/bin/python benchmarks/bench_policy.py --rounds 40
    .venv/bin/python benchmarks/bench_policy.py --quick     # 3 rounds on a short warm-up:
                                                            # the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from sair_ray.backends.sim import SimBackend
from sair_ray.bench.grid import make_workload
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.embedding import phi_dim
from sair_ray.memory import ExperienceMemory
from sair_ray.profiles import load_profile
from sair_ray.registry import make_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", default="image_classification")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warm-hours", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0,
                    help="llama.cpp threads (0: the embedded default, half the cores)")
    ap.add_argument("--prompt-episodes", type=int, default=0,
                    help="policy.prompt_episodes (0: auto, 4 for the embedded model)")
    ap.add_argument("--quick", action="store_true",
                    help="3 rounds after 0.1 h of warm-up (a check that the script runs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warm_hours = 3, 0.1

    prof = load_profile(args.app)
    step = SAIRConfig().loop.decision_interval_s
    total = args.warm_hours * 3600 + args.rounds * step
    workload = make_workload(prof, "burst", total)
    cfg = SAIRConfig().replace(seed=0)
    backend = SimBackend(prof, workload, seed=0, cost=cfg.cost)
    with tempfile.TemporaryDirectory() as d, \
            ExperienceMemory(d, phi_dim(len(prof.pipeline.stages)), cfg.memory) as mem:
        warm = Controller(backend, make_policy("sair-retrieval", cfg, pipeline=prof.pipeline),
                          cfg, memory=mem)
        run_virtual(warm, backend, until=args.warm_hours * 3600)
        print(f"memory after warm-up: {len(mem)} experiences")
        llm_cfg = cfg.replace(**{"exploration.epsilon_0": 0.0, "exploration.epsilon_min": 0.0,
                                 "policy.prompt_episodes": args.prompt_episodes})
        policy = make_policy("sair", llm_cfg, pipeline=prof.pipeline,
                             threads=args.threads or None)
        ctl = Controller(backend, policy, llm_cfg, memory=mem)
        ctl.restore({**warm.state(), "epsilon": 0.0})  # every round asks the model
        llm_ms, rest_ms, chars, failures, setup_ms = [], [], [], 0, float("nan")
        t_end = args.warm_hours * 3600
        for i in range(args.rounds):
            t_end += step
            backend.advance_to(t_end)
            d = ctl.tick(t_end)
            if d.error:
                failures += 1
                print(f"round {i + 1}/{args.rounds}: failed: {d.error}", flush=True)
                continue
            llm_ms.append(policy.last_call_ms)
            rest = sum(d.timings_ms.values()) - policy.last_call_ms
            if i == 0:  # starts llama.cpp and warms its cache: once per process, not a round
                setup_ms = rest
            else:
                rest_ms.append(rest)
            chars.append(d.prompt_chars)
            what = "set-up + rest" if i == 0 else "rest"
            print(f"round {i + 1}/{args.rounds}: LLM {policy.last_call_ms / 1000:.2f} s, "
                  f"{what} {rest:.1f} ms, prompt {d.prompt_chars} chars, "
                  f"{len(d.retrieved)} episodes", flush=True)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    result = {"app": args.app, "rounds": args.rounds, "failures": failures,
              "llm_s_p50": pct(llm_ms, 50) / 1000, "llm_s_p99": pct(llm_ms, 99) / 1000,
              "rest_ms_p50": pct(rest_ms, 50), "rest_ms_p99": pct(rest_ms, 99),
              "first_round_setup_ms": setup_ms,
              "prompt_chars_p50": pct(chars, 50), "threads": args.threads or "default",
              "prompt_episodes": args.prompt_episodes or "auto",
              "load_avg_1m": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
