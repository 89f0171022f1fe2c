"""`sair bench`: baselines and SAIR over apps x patterns x seeds on the simulator.

`build_grid` names the runs, `run_grid` runs them (in up to N processes), and
`write_outputs` writes `results.parquet` (one row per run) and `results.md` (means over
seeds per app x pattern x method). See `sair_ray.bench.grid` for the workload patterns and
the validator settings the baselines run under.
"""

from __future__ import annotations

from sair_ray.bench.grid import (
    APPS,
    DEFAULT_METHODS,
    METHODS,
    PATTERNS,
    SAIR_METHODS,
    BenchApp,
    BenchError,
    BenchWorkload,
    GridResult,
    Scenario,
    bench_config,
    build_ablation_grid,
    build_grid,
    make_workload,
    resolve_apps,
    resolve_workloads,
    run_grid,
    run_one,
    scenario_workload,
)
from sair_ray.bench.report import summarise, to_markdown, write_outputs

__all__ = ["APPS", "DEFAULT_METHODS", "METHODS", "PATTERNS", "SAIR_METHODS", "BenchApp",
           "BenchError", "BenchWorkload", "GridResult", "Scenario", "bench_config",
           "build_ablation_grid", "build_grid", "make_workload", "resolve_apps",
           "resolve_workloads", "run_grid", "run_one", "scenario_workload", "summarise",
           "to_markdown", "write_outputs"]
