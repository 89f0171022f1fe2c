"""`sair policy`: serve the policy LLM, and check that an endpoint decides."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sair_ray import offline
from sair_ray.commands.console import fail, out

policy_app = typer.Typer(help="Serve the policy LLM and check endpoints.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command("serve")
def serve(
    backend: Annotated[str, typer.Option(help="llamacpp (embedded SmolLM2, CPU) or vllm "
                                              "(GPU node).")] = "llamacpp",
    model: Annotated[str, typer.Option(help="GGUF path (llamacpp; default the packaged "
                                            "SmolLM2-135M) or model name/path (vllm).")] = "",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    threads: Annotated[int, typer.Option(help="CPU threads (llamacpp).")] = 0,
) -> None:
    """Run an OpenAI-compatible policy endpoint in the foreground; point SAIR at it with
    policy.url = http://HOST:PORT/v1."""
    from sair_ray.policy.lm import EMBEDDED_MODEL_NAME, N_CTX, LMUnavailable, smollm2_path

    if backend == "llamacpp":
        try:
            path = Path(model) if model else smollm2_path()
        except LMUnavailable as e:
            fail(str(e))
        if not path.is_file():
            fail(f"--model {model!r} is not a GGUF file")
        if importlib.util.find_spec("llama_cpp") is None:
            fail("llama-cpp-python is not installed: pip install 'sair-ray[local-llm]'")
        n = str(threads or os.cpu_count() or 1)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path),
               "--model_alias", EMBEDDED_MODEL_NAME, "--host", host, "--port", str(port),
               "--n_ctx", str(N_CTX), "--n_threads", n, "--n_threads_batch", n]
    elif backend == "vllm":
        if not model:
            fail("--backend vllm needs --model (a Hugging Face name or a local path)")
        if importlib.util.find_spec("vllm") is None:
            fail("vLLM is not installed on this machine: "
                 "pip install 'sair-ray[gpu]' on a GPU node")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", host, "--port", str(port)]
    else:
        fail(f"unknown --backend {backend!r}; choose llamacpp or vllm")
    out.print(f"serving the policy model on http://{host}:{port}/v1 ({backend}); Ctrl-C stops")
    # vLLM downloads the model the user named from the Hugging Face Hub: give it the
    # environment without SAIR's own offline switches (sair_ray/offline.py).
    env = offline.user_environ() if backend == "vllm" else None
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@policy_app.command("check")
def check(
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="YAML config (policy.* section).")] = None,
    app_name: Annotated[str, typer.Option("--app", help="Built-in profile whose pipeline "
                                                        "the sample round uses.")]
    = "image_classification",
) -> None:
    """Ask the configured policy endpoint for one decision on a sample overloaded round;
    print the reply, the validated action and the latency."""
    from sair_ray.bottleneck import analyse
    from sair_ray.commands.config import load_config
    from sair_ray.policy.base import PolicyRequest
    from sair_ray.profiles import load_profile
    from sair_ray.registry import make_policy
    from sair_ray.types import Context, StageObservation
    from sair_ray.validator import Validator

    cfg = load_config(config)
    try:
        pipeline = load_profile(app_name).pipeline
    except (KeyError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    alloc = pipeline.initial_allocation()
    first = pipeline.stages[0].name
    stages = tuple(StageObservation(
        name=s.name, kind=s.kind, replicas=a.replicas, cpu_m=a.cpu_m, mem_mb=a.mem_mb,
        rate=a.rate, queue=120.0 if s.name == first else 1.0,
        util=0.98 if s.name == first else 0.4, p50_ms=40.0, p99_ms=120.0,
        queue_delay_ms=900.0 if s.name == first else 2.0, throughput_rps=30.0)
        for s, a in ((s, alloc[s.name]) for s in pipeline.stages))
    ctx = Context(app=pipeline.name, time=0.0, stages=stages, arrival_rate=40.0,
                  p50_ms=pipeline.sla_ms, p99_ms=3 * pipeline.sla_ms, sla_ms=pipeline.sla_ms)
    req = PolicyRequest(now=0.0, context=ctx, pipeline=pipeline, free=pipeline.cluster,
                        bottleneck=analyse(ctx, pipeline))
    policy = make_policy("sair", cfg, pipeline=pipeline)
    t0 = time.perf_counter()
    reply = policy.decide(req)
    took = time.perf_counter() - t0
    out.print(f"reply in {took:.2f} s, prompt {reply.prompt_chars} chars")
    # escaped: a label rationale starts with "[fit]", which rich would take for markup
    out.print(f"raw: {escape(reply.raw[:500])}")
    if reply.error:
        fail(reply.error, code=1)
    val = Validator(pipeline, cfg.validator).validate(reply.proposal, ctx.allocation, now=0.0,
                                                      free=pipeline.cluster)
    out.print(f"rationale: {escape(reply.rationale)}")
    out.print(f"validated action: {val.action.to_dict()}")
