"""A controller process to be SIGKILLed (test_crash_restart.py).

    python -m tests.reliability.crash_child DIR ROUNDS

Runs SAIR (retrieval-only policy, real ExperienceMemory with fsync, small Parquet
segments so compactions happen often) on the simulator, persisting state the way the
live loop does (sair_ray/live/loop.py: `Controller.state()` written atomically to
state.json after every round). If DIR/state.json exists it resumes from it: the
simulator restarts at the saved time with the saved allocation (on Ray Serve the
cluster keeps both; here they are part of the saved state).

stdout protocol, one line each, flushed:
    start <round> <experiences in memory>
    ack <id>          an experience is durable (ExperienceMemory.add returned)
    round <n>         round n is done and its state saved

    python -m tests.reliability.crash_child --live DIR

Runs the live loop (`LiveLoop`, threshold policy) on the simulator instead, and stops
dead inside the first action's `apply`, after the simulator has taken it: the place
where a kill leaves an action applied but its round unsaved. Prints `applied <time>`
there and waits to be killed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from sair_ray.backends.sim import SimBackend
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller
from sair_ray.embedding import phi_dim
from sair_ray.files import read_json, write_json_atomic
from sair_ray.live.loop import LiveLoop, LiveOptions
from sair_ray.memory import ExperienceMemory
from sair_ray.registry import make_policy
from sair_ray.types import Experience, StageAllocation
from sair_ray.workloads import Poisson

CFG = SAIRConfig().replace(**{"memory.segment_rows": 5, "memory.fsync": True, "seed": 0,
                              "reward.store_all": True})


class AckingMemory(ExperienceMemory):
    def add(self, exp: Experience) -> None:
        super().add(exp)
        print(f"ack {exp.id}", flush=True)


def main(d: Path, rounds: int) -> None:
    saved = read_json(d / "state.json")
    start = float(saved["saved_at"]) if saved else 0.0
    alloc = ({k: StageAllocation(**v) for k, v in saved["allocation"].items()}
             if saved else None)
    backend = SimBackend("image_classification", Poisson(rate=50.0), seed=int(start),
                         start=start, allocation=alloc)
    pipe = backend.pipeline
    mem = AckingMemory(d / "memory", phi_dim(len(pipe.stages)), CFG.memory,
                       loo_k=CFG.retrieval.loo_k)
    ctl = Controller(backend, make_policy("sair-retrieval", CFG, pipeline=pipe), CFG,
                     memory=mem, log_path=str(d / "decisions.jsonl"))
    if saved:
        ctl.restore(saved["controller"])
    print(f"start {ctl.counters.rounds} {len(mem)}", flush=True)
    now = start
    for _ in range(rounds):
        now += CFG.loop.decision_interval_s
        backend.advance_to(now)
        dec = ctl.tick(now)
        write_json_atomic(d / "state.json", {
            "saved_at": now, "controller": ctl.state(),
            "allocation": {k: asdict(v) for k, v in backend.sim.allocation.items()}})
        print(f"round {dec.round}", flush=True)
    ctl.close()
    mem.close()


LIVE_CFG = {"loop": {"decision_interval_s": 10, "settle_s": 2},
            "validator": {"cooldown_up_s": 120, "cooldown_down_s": 120}}


def live_options(d: Path) -> LiveOptions:
    return LiveOptions(app="image_classification", config=LIVE_CFG, policy="threshold",
                       data_dir=str(d))


class _StopsInApply(SimBackend):
    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        super().apply(target, now)
        print(f"applied {now!r}", flush=True)
        time.sleep(600)


def main_live(d: Path) -> None:
    loop = LiveLoop(live_options(d), backend_factory=lambda o: _StopsInApply(o.app, seed=3))
    for t in range(10, 600, 10):
        loop.round(float(t))
        print(f"round {t}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--live":
        main_live(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]), int(sys.argv[2]))
