"""The detached controller actor killed in the middle of a round, live.

image_classification runs on a private local Ray; SAIR is attached as the real detached
actor (`sair-retrieval`, real Parquet memory with fsync, every experience stored) and
talks to the dashboard through a forwarder. After a few idle rounds (each one remembered),
load starts; the first action (one more preprocess replica: the only move the pinned
profile leaves) goes through to Serve, and the forwarder withholds the reply, so the actor
is inside `apply` with Serve already scaled and its state not yet saved. The actor process
is killed there. Ray re-creates it, and the test checks that it resumes from the saved
state and memory, loses no acknowledged experience, and treats the cut-off action as
applied: its cooldown holds, its round number is not reused, and it is not applied again.

The simulator-side counterpart (a plain process SIGKILLed many times in journal appends
and Parquet compactions, and in the same place of a round) is test_crash_restart.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sair_ray.config import SAIRConfig
from sair_ray.decision_log import DecisionLog
from sair_ray.embedding import phi_dim
from sair_ray.files import app_data_dir, read_json
from sair_ray.memory import ExperienceMemory
from tests.ray_harness import free_port
from tests.reliability.live_faults import (
    APP,
    DashboardProxy,
    Served,
    pinned_profile,
    served_app,
    targets,
    wait_for,
)

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HTTP_PORT = free_port()
INTERVAL = 2.0
COOLDOWN_S = 300.0        # longer than the test: any second step up would be a repeat
CFG = {"loop": {"decision_interval_s": INTERVAL, "settle_s": 1},
       "reward": {"store_all": True},
       "exploration": {"epsilon_0": 0.0, "epsilon_min": 0.0},
       "validator": {"cooldown_up_s": COOLDOWN_S, "cooldown_down_s": COOLDOWN_S,
                     "max_replica_step": 1}}


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with served_app(HTTP_PORT) as s:
        yield s


def _log(path: Path) -> list[dict]:
    return list(DecisionLog.read(path)) if path.exists() else []


def _scale_targets(proxy: DashboardProxy, stage: str) -> list[int]:
    return [json.loads(m.body)["target_num_replicas"] for m in proxy.mutations
            if m.method == "POST" and m.path.split("/")[-2] == stage]


@pytest.mark.timeout(300)
def test_actor_killed_mid_apply_resumes_without_loss_or_repeat(served: Served,
                                                               tmp_path) -> None:
    import ray

    from sair_ray.live import attach
    from sair_ray.loadgen import LoadRunner, app_bodies, build_plan
    from sair_ray.workloads import Poisson

    proxy = DashboardProxy(served.dashboard).up()
    # A 1 ms SLA makes the policy add capacity as soon as there is load; CPU, memory and
    # the other stages are pinned, so that step can only be preprocess 1 -> 2.
    prof = pinned_profile(tmp_path / "profile.yaml", sla_ms=1,
                          replicas_max={"preprocess": 3, "inference": 1, "postprocess": 1})
    data = tmp_path / "data"
    d = app_data_dir(APP, data)
    handle = attach(APP, CFG, "sair-retrieval", profile=str(prof), data_dir=data,
                    dashboard_url=proxy.url)
    runner = None
    load = None
    try:
        # idle rounds hold, and each is remembered (acknowledged) one round later
        wait_for(lambda: handle.status()["stored"] >= 3, 90, "3 stored experiences")
        proxy.hold_next_mutation()
        plan = build_plan(Poisson(3.0), 45.0, seed=3)
        runner = LoadRunner(served.url, plan, app_bodies(APP, plan), concurrency=128,
                            timeout_s=90)
        load = threading.Thread(target=lambda: asyncio.run(runner.run()), daemon=True)
        load.start()
        assert proxy.held.wait(90), "no action under load"
        # The actor is inside apply: Serve has scaled, the reply is withheld.
        assert targets(served.admin)["preprocess"] == 2
        intent = read_json(d / "applying.json")
        saved = read_json(d / "state.json")
        cut = saved["controller"]["round"]           # the round being applied
        assert intent["round"] == cut and intent["targets"]["preprocess"]["replicas"] == 2
        before = _log(d / "decisions.jsonl")
        acked = sum(1 for r in before if r["kind"] == "reward" and r["reward"]["stored"])
        assert acked >= 3
        t_kill = time.time()
        # The process dies mid-round. The reply stays withheld (released at the end): a
        # kill takes effect a moment later, and a reply in that moment would let the
        # round finish first.
        ray.kill(handle.actor, no_restart=False)

        # Ray re-creates the actor; it resumes from state.json and the memory
        st = wait_for(lambda: (s := handle.status())["restored_round"] is not None
                      and s["rounds_ok"] >= 4 and s, 120, "4 rounds after the restart")
        resumed_s = time.time() - t_kill
        load.join(120)
    finally:
        if load is not None and load.is_alive() and runner is not None:
            load.join(120)
        final = handle.stop()
        proxy.close()
        served.admin.scale(APP, "preprocess", 1)

    log = _log(d / "decisions.jsonl")
    interrupted = [r for r in log if r["kind"] == "interrupted"]
    decided = [r["round"] for r in log if r["kind"] == "decision"]
    after = [r for r in log[len(before):] if r["kind"] == "decision"]
    # The cut-off round is recorded once, as interrupted, with the action Serve received;
    # its number is not reused; rounds go on after it.
    assert len(interrupted) == 1 and interrupted[0]["round"] == cut
    assert interrupted[0]["action"] == {"preprocess": {"replicas": 1, "cpu_m": 0, "mem_mb": 0,
                                                       "rate": 0.0}}
    assert cut not in decided and len(decided) == len(set(decided))
    assert after and after[0]["round"] == cut + 1
    assert st["restored_round"] == cut
    # Its cooldown runs from the cut-off round's time, as if the round had finished ...
    state = read_json(d / "state.json")
    assert state["controller"]["cooldowns"]["last_up"]["preprocess"] == intent["time"]
    # ... so the step is not taken again: Serve saw exactly one preprocess scale-up.
    ups = _scale_targets(proxy, "preprocess")
    assert ups[0] == 2 and all(b <= a for a, b in zip(ups, ups[1:], strict=False)), ups
    assert not (d / "applying.json").exists()
    # Every acknowledged experience is in the memory after the restart, once.
    cfg = SAIRConfig.from_dict(CFG)
    with ExperienceMemory(d / "memory", phi_dim(3), cfg.memory,
                          loo_k=cfg.retrieval.loo_k) as m:
        ids = [e.id for e in m.iter_experiences()]
    assert len(ids) == len(set(ids))
    assert len(ids) == acked + final["stored"], (len(ids), acked, final["stored"])
    assert final["rounds_failed"] == 0
    served_ok = sum(r.status == "ok" for r in runner.results)
    print("\ncontroller kill:", json.dumps({
        "cut_round": cut, "acked_before_kill": acked, "memory_after": len(ids),
        "stored_after_restart": final["stored"], "resumed_4_rounds_s": round(resumed_s, 1),
        "preprocess_scale_posts": ups, "requests": len(runner.results), "ok": served_ok}))
