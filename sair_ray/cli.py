"""The `sair` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from sair_ray import __version__
from sair_ray.config import ConfigError, SAIRConfig, iter_options

app = typer.Typer(help="SAIR: an LLM in-context-RL autoscaler for multi-stage ML pipelines "
                       "on Ray Serve.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect and check SAIR configuration files.",
                         no_args_is_help=True)
memory_app = typer.Typer(help="Inspect and manage an experience memory directory.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(memory_app, name="memory")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                                                help="YAML config file (default: SPEC "
                                                     "defaults).")]


def _load(path: Path | None) -> SAIRConfig:
    try:
        return SAIRConfig.from_yaml(path) if path else SAIRConfig()
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print the sair-ray version."""
    out.print(__version__)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration (defaults merged with --config) as YAML."""
    out.print(yaml.safe_dump(_load(config).to_dict(), sort_keys=False), end="")


@config_app.command("validate")
def config_validate(path: Path) -> None:
    """Check a config file; exit 2 with the offending key if it is invalid."""
    _load(path)
    out.print(f"[green]ok[/green] {path}")


@config_app.command("options")
def config_options(markdown: Annotated[bool, typer.Option(
        help="Print a Markdown table (the docs' configuration reference).")] = False) -> None:
    """List every option with its default, allowed values and meaning."""
    rows = list(iter_options())
    if markdown:
        print("| key | default | allowed | meaning |\n|---|---|---|---|")
        for key, default, allowed, help_ in rows:
            print(f"| `{key}` | `{default!r}` | {allowed} | {help_} |")
        return
    t = Table("key", "default", "allowed", "meaning")
    for key, default, allowed, help_ in rows:
        t.add_row(key, repr(default), allowed, help_)
    out.print(t)


@memory_app.command("stats")
def memory_stats(path: Path, dim: Annotated[int | None, typer.Option(
        help="phi dimension to expect (7 x stages + 3); default: what the memory holds.")]
        = None) -> None:
    """Load a memory directory and print its size and reward distribution."""
    from sair_ray.memory import ExperienceMemory, MemoryStoreError

    if not path.is_dir():
        err.print(f"[red]error:[/red] {path} is not a memory directory")
        raise typer.Exit(2)
    try:
        dim = dim or ExperienceMemory.stored_dim(path)
        if dim is None:
            out.print_json(json.dumps({"experiences": 0}))
            return
        with ExperienceMemory(path, dim) as m:
            r = m.rewards
            stats = {"experiences": len(m), "exact_index": m.exact}
            if len(m):
                stats |= {"reward_min": float(r.min()), "reward_mean": float(r.mean()),
                          "reward_max": float(r.max())}
    except MemoryStoreError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    out.print_json(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in stats.items()}))


@memory_app.command("quarantine")
def memory_quarantine(path: Path) -> None:
    """Move a (corrupt) memory directory aside so SAIR starts with a fresh one."""
    from sair_ray.memory import ExperienceMemory

    if not path.is_dir():
        err.print(f"[red]error:[/red] {path} is not a directory")
        raise typer.Exit(2)
    moved = ExperienceMemory.quarantine(path)
    out.print(f"moved {path} -> {moved}")


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated option values; None when not given."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def bench(
    apps: Annotated[list[str] | None, typer.Option(
        "--apps", help="App profiles, comma-separated or repeated (default: all; "
                       "image_classification with --ablation).")] = None,
    patterns: Annotated[list[str] | None, typer.Option(
        "--patterns", help="poisson, ramp, burst (default: all).")] = None,
    methods: Annotated[list[str] | None, typer.Option(
        "--methods", help="Baselines and/or sair, sair-retrieval (default: every non-LLM "
                          "method: the baselines and sair-retrieval; sair with "
                          "--ablation).")] = None,
    seeds: Annotated[int, typer.Option(help="Number of evaluation seeds (0..n-1).",
                                       min=1)] = 3,
    hours: Annotated[float, typer.Option(help="Simulated duration of each run.")] = 1.0,
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path(
        "runs/bench"),
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 2,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Sweep HPA targets and threshold settings per app on the tuning "
                        "seed; write every candidate and tuned.yaml (the winners).")] = False,
    tuning_seed: Annotated[int, typer.Option(help="Seed of --sweep runs.", min=0)] = 1000,
    tuned: Annotated[Path | None, typer.Option(
        help="tuned.yaml from a sweep (default: the committed sair_ray/bench/tuned.py).")
        ] = None,
    untuned: Annotated[bool, typer.Option(
        "--untuned", help="Run HPA and threshold with their paper defaults.")] = False,
    ablation: Annotated[list[str] | None, typer.Option(
        "--ablation", help="SAIR ablations (sair_ray.config.ABLATIONS), comma-separated; "
                           "runs them and full SAIR on image_classification.")] = None,
    bottleneck_eval: Annotated[bool, typer.Option(
        "--bottleneck-eval", help="Evaluate bottleneck detection on --n generated "
                                  "scenarios with known ground truth.")] = False,
    n: Annotated[int, typer.Option("--n", help="Scenarios of --bottleneck-eval.",
                                   min=1)] = 200,
    eval_seed: Annotated[int, typer.Option(help="Seed of --bottleneck-eval scenarios.",
                                           min=0)] = 0,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", help="Write every run's controller decision log (each round's context, "
                          "retrieved episodes, reply, validated action and clamps, and its "
                          "reward a round later; baselines too, they run through the same "
                          "controller) to DIR/<app>/<pattern>/<method>[+<ablation>]/"
                          "seed<N>/decisions.jsonl, for sair decisions, sair report and "
                          "sair top. Not with --sweep or --bottleneck-eval.")] = None,
) -> None:
    """Run methods x apps x patterns x seeds on the simulator; write results.parquet,
    results.md (means over seeds) and figures to --out. Ctrl-C stops and keeps finished
    runs. --sweep tunes the baselines, --ablation runs SAIR variants, --bottleneck-eval
    scores the bottleneck analyser, --log-dir keeps each run's decision log."""
    import shlex

    from sair_ray.bench import APPS, DEFAULT_METHODS, PATTERNS, BenchError, build_grid, run_grid
    from sair_ray.bench.grid import ABLATION_APP, build_ablation_grid
    from sair_ray.bench.report import to_markdown, write_outputs
    from sair_ray.bench.tuned import TUNED, load_tuned
    from sair_ray.progress import progress_bar

    command = shlex.join(["sair", *sys.argv[1:]]) if Path(sys.argv[0]).name == "sair" else ""
    modes = [name for name, on in (("--sweep", sweep), ("--ablation", bool(ablation)),
                                   ("--bottleneck-eval", bottleneck_eval)) if on]
    if len(modes) > 1:
        err.print(f"[red]error:[/red] {' and '.join(modes)} cannot be combined")
        raise typer.Exit(2)
    if log_dir is not None and (sweep or bottleneck_eval):
        # sweep candidates differ only in settings, so their logs would share a directory
        err.print(f"[red]error:[/red] --log-dir cannot be combined with {modes[0]}")
        raise typer.Exit(2)
    if bottleneck_eval:
        from sair_ray.bench import bottleneck_eval as be

        with err.status(f"bottleneck evaluation: {n} scenarios"):
            rows = be.evaluate(n, eval_seed, workers)
        paths = be.write_outputs(rows, out_dir, command)
        out.print(paths["markdown"].read_text(), markup=False, highlight=False)
        out.print(f"-> {paths['scenarios']}, {paths['metrics']}, {paths['markdown']}")
        return
    try:
        if sweep:
            from sair_ray.bench.sweep import build_sweep

            grid = build_sweep(_names(apps) or APPS, _names(patterns) or PATTERNS, hours,
                               tuning_seed)
        elif ablation:
            grid = build_ablation_grid(_names(ablation) or [], _names(methods) or ["sair"],
                                       _names(patterns) or PATTERNS, seeds, hours,
                                       _names(apps) or [ABLATION_APP])
        else:
            settings = None if untuned else (load_tuned(tuned) if tuned else TUNED)
            grid = build_grid(_names(apps) or APPS, _names(patterns) or PATTERNS,
                              _names(methods) or DEFAULT_METHODS, seeds, hours, tuned=settings)
    except (BenchError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    with progress_bar(err) as progress:
        task = progress.add_task("sweep" if sweep else "bench", total=len(grid))

        def advance(sc: object, row: object) -> None:
            progress.advance(task)

        res = run_grid(grid, workers=workers, on_result=advance, log_dir=log_dir)
    if not res.rows:
        err.print("[red]error:[/red] no run finished; nothing written")
        for sc, e in res.failed[:3]:
            err.print(f"[red]failed:[/red] {sc}: {e}")
        raise typer.Exit(130 if res.interrupted else 1)
    if sweep:
        from sair_ray.bench.sweep import write_sweep_outputs

        paths = write_sweep_outputs(res.rows, out_dir, command)
        out.print(paths["markdown"].read_text(), markup=False, highlight=False,
                  soft_wrap=True)
        out.print(f"{len(res.rows)}/{res.total} runs -> {paths['parquet']}, "
                  f"{paths['markdown']}, {paths['tuned']}")
    else:
        paths = write_outputs(res.rows, out_dir, command)
        out.print(to_markdown(res.rows), markup=False, highlight=False, soft_wrap=True)
        out.print(f"{len(res.rows)}/{res.total} runs -> {paths['parquet']}, "
                  f"{paths['markdown']}")
        from sair_ray.bench import figures

        if figures.available():
            from sair_ray.sim.profiles import load_profile

            sla = {a: load_profile(a).pipeline.sla_ms for a in {r["app"] for r in res.rows}}
            pngs = figures.write_figures(res.rows, out_dir, sla)
            out.print("figures -> " + ", ".join(str(p) for p in pngs))
        else:
            err.print("no figures: matplotlib is not installed (pip install 'sair-ray[bench]')")
    if log_dir is not None:
        out.print(f"decision logs -> {log_dir}/<app>/<pattern>/<method>/seed<N>/"
                  "decisions.jsonl")
    for sc, e in res.failed:
        err.print(f"[red]failed:[/red] {sc}: {e}")
    if res.interrupted:
        err.print(f"interrupted: kept {len(res.rows)} of {res.total} runs")
        raise typer.Exit(130)
    if res.failed:
        raise typer.Exit(1)


from sair_ray.commands import register_all  # noqa: E402  (after the built-in commands)

register_all(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
