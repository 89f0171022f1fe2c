"""`sair load`: open-loop HTTP traffic (Poisson, ramp, burst, trace replay) against a
pipeline app, with bounded concurrency and a time limit, and a record of every request.

    plan = build_plan(Burst(5, 20, 60, 20), duration_s=120, seed=0)
    runner = LoadRunner("http://127.0.0.1:8000/image_classification", plan,
                        app_bodies("image_classification", plan), concurrency=64)
    results = asyncio.run(runner.run())
    write_results(results, "load.parquet")
    print(summarize(results, runner.finished - runner.started))

Trace replay uses the Azure LLM inference trace 2023 ("Azure Public Dataset", CC-BY 4.0).
"""

from sair_ray.loadgen.bodies import app_bodies, file_body
from sair_ray.loadgen.output import write_results
from sair_ray.loadgen.plan import PATTERNS, LoadPlan, build_plan, workload_from_options
from sair_ray.loadgen.runner import STATUSES, LoadRunner, RequestResult, Summary, summarize

__all__ = [
    "PATTERNS",
    "STATUSES",
    "LoadPlan",
    "LoadRunner",
    "RequestResult",
    "Summary",
    "app_bodies",
    "build_plan",
    "file_body",
    "summarize",
    "workload_from_options",
    "write_results",
]
