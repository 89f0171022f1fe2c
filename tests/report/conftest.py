"""A real decision log: the controller loop on the simulator with memory and exploration
(threshold policy: fast, no LLM), 30 simulated minutes, written once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from sair_ray.backends.sim import SimBackend
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.embedding import phi_dim
from sair_ray.memory import ExperienceMemory
from sair_ray.registry import make_policy
from sair_ray.workloads import Poisson

ROUNDS = 60  # 1800 s / 30 s


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, Controller]:
    d = tmp_path_factory.mktemp("simlog")
    backend = SimBackend("image_classification", Poisson(rate=60.0), seed=5)
    # §1-§9 alone: its random probes give the rounds with clamps the report tests render
    cfg = SAIRConfig().replace(seed=5, **{"learning.enabled": False})
    mem = ExperienceMemory(d / "memory", phi_dim(len(backend.pipeline.stages)))
    ctl = Controller(backend, make_policy("threshold", cfg, pipeline=backend.pipeline), cfg,
                     memory=mem, log_path=str(d / "decisions.jsonl"))
    decisions = run_virtual(ctl, backend, until=1800)
    ctl.close()
    mem.close()
    return d / "decisions.jsonl", decisions, ctl
