"""`sair bench`: methods x apps x patterns x seeds on the simulator (sair_ray.bench).

One command with four modes: the grid (default), `--sweep` (tune the baselines),
`--ablation` (SAIR variants) and `--bottleneck-eval` (score the bottleneck analyser). The
command checks its options, builds the mode's grid, runs it with a progress bar and
writes the mode's outputs; each step is a function below. The bench package is imported
inside them so `sair --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sair_ray.commands.console import err, error, fail, out

if TYPE_CHECKING:
    from sair_ray.bench import BenchWorkload, GridResult, Scenario


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    apps: Annotated[list[str] | None, typer.Option(
        "--apps", help="App profiles: shipped names and/or profile YAML paths (your own "
                       "pipeline, named by the profile's name; every stage needs its sim: "
                       "block), comma-separated or repeated (default: all shipped; "
                       "image_classification with --ablation).")] = None,
    patterns: Annotated[list[str] | None, typer.Option(
        "--patterns", help="poisson, ramp, burst, scaled to each app's default workload "
                           "(default: all).")] = None,
    workload: Annotated[list[str] | None, typer.Option(
        "--workload", help="A workload instead of --patterns, repeatable: "
                           "trace:PATH.csv[,rate_scale=2.5,time_scale=0.5,loop=true,...] "
                           "(a request trace; trace:azure is the Azure LLM inference trace "
                           "2023, Azure Public Dataset), a pattern name, kind:options "
                           "(poisson:rate=50) or a YAML/JSON workload file (kind: ...). Not "
                           "scaled to the app; named in the results' pattern column "
                           "(trace:<file stem>).")] = None,
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
    eval_set: Annotated[str, typer.Option(
        "--eval-set", help="Scenario set(s) of --bottleneck-eval: easy (the set the "
                           "analyser was tuned on: bottlenecks >= 1.15x capacity, other "
                           "stages <= 0.7x), hard (every stage at 0.8-1.2x, noisy windows, "
                           "just-migrated bottlenecks; seeds 1000000 + --eval-seed) or both, "
                           "reported apart under --out/easy and --out/hard.")] = "both",
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", help="Write every run's controller decision log (each round's context, "
                          "retrieved episodes, reply, validated action and clamps, and its "
                          "reward a round later; baselines too, they run through the same "
                          "controller) to DIR/<app>/<pattern>/<method>[+<ablation>]/"
                          "seed<N>/decisions.jsonl, for sair decisions, sair report and "
                          "sair top. Not with --sweep or --bottleneck-eval.")] = None,
    regret: Annotated[bool, typer.Option(
        "--regret", help="Decompose each round's regret on forks of the simulation "
                         "(docs/regret.md): the best action a broad search finds, the best "
                         "candidate offered, the action chosen; writes "
                         "regret_records.parquet and regret_summary.md to --out.")] = False,
    horizon: Annotated[float, typer.Option(
        help="Longer horizon of --regret, seconds.", min=30)] = 300.0,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A SAIR config YAML for the SAIR methods' runs instead of the "
                         "defaults (ablations apply on top; the seed is the run's), e.g. "
                         "policy.backend/url/model to bench or --regret a policy endpoint "
                         "(vLLM or any OpenAI-compatible server). Baselines ignore it.")
        ] = None,
    reuse: Annotated[Path | None, typer.Option(
        "--reuse", help="A results directory (or results.parquet) whose baseline runs of "
                        "this grid are taken as they are instead of re-run; SAIR methods "
                        "always run. For re-running SAIR after a change to SAIR: the "
                        "simulator is deterministic, so the rows are what a re-run would "
                        "give unless the simulator, a profile or a baseline changed.")
        ] = None,
) -> None:
    """Run methods x apps x patterns x seeds on the simulator; write results.parquet,
    results.md (means over seeds) and figures to --out.

    Ctrl-C stops and keeps finished runs. --sweep tunes the baselines, --ablation runs
    SAIR variants, --bottleneck-eval scores the bottleneck analyser, --log-dir keeps each
    run's decision log, --regret splits each round's regret into coverage gap and
    selection error. Bench your own pipeline on your own trace: sair bench --apps
    ./my_pipeline.yaml,nlp_analysis --workload trace:./my_trace.csv,rate_scale=2.5,loop=true
    (same tables and figures; --sweep --apps ./my_pipeline.yaml tunes the baselines for
    it, --tuned uses the result)."""
    command = _command_line()
    _check_modes(sweep=sweep, ablation=bool(ablation), bottleneck_eval=bottleneck_eval,
                 log_dir=log_dir)
    if regret and (sweep or bottleneck_eval or log_dir is not None):
        fail("--regret cannot be combined with --sweep, --bottleneck-eval or --log-dir")
    if reuse is not None and (sweep or bottleneck_eval or regret):
        fail("--reuse cannot be combined with --sweep, --bottleneck-eval or --regret")
    if patterns and workload:
        fail("give --patterns or --workload, not both (--workload also takes a pattern "
             "name: --workload poisson --workload trace:./t.csv)")
    if bottleneck_eval and workload:
        fail("--workload cannot be combined with --bottleneck-eval (it generates its own "
             "scenarios)")
    if bottleneck_eval:
        _bottleneck_eval(n, eval_seed, workers, out_dir, command, eval_set)
        return
    grid = _build_grid(apps=apps, patterns=patterns, workloads=workload, methods=methods,
                       ablation=ablation, sweep=sweep, seeds=seeds, hours=hours,
                       tuning_seed=tuning_seed, tuned=tuned, untuned=untuned)
    if config is not None:
        grid = _with_config(grid, config)
    if regret:
        _regret(grid, horizon, out_dir)
        return
    kept = _reused(grid, reuse) if reuse is not None else {}
    res = _run([sc for i, sc in enumerate(grid) if i not in kept], sweep=sweep,
               workers=workers, log_dir=log_dir)
    if kept:
        res = _merged(grid, kept, res)
    if not res.rows:
        error("no run finished; nothing written")
        for sc, e in res.failed[:3]:
            err.print(f"[red]failed:[/red] {sc}: {e}")
        raise typer.Exit(130 if res.interrupted else 1)
    if sweep:
        _write_sweep(res, out_dir, command)
    else:
        _write_grid(res, out_dir, command)
    if log_dir is not None:
        out.print(f"decision logs -> {log_dir}/<app>/<pattern>/<method>/seed<N>/"
                  "decisions.jsonl")
    _report_failures(res)


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated option values; None when not given."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _command_line() -> str:
    """The command as typed, written into the outputs so they say how to reproduce them;
    empty when not run as `sair` (tests, `python -m`)."""
    import shlex

    return shlex.join(["sair", *sys.argv[1:]]) if Path(sys.argv[0]).name == "sair" else ""


def _check_modes(*, sweep: bool, ablation: bool, bottleneck_eval: bool,
                 log_dir: Path | None) -> None:
    modes = [name for name, on in (("--sweep", sweep), ("--ablation", ablation),
                                   ("--bottleneck-eval", bottleneck_eval)) if on]
    if len(modes) > 1:
        fail(f"{' and '.join(modes)} cannot be combined")
    if log_dir is not None and (sweep or bottleneck_eval):
        # sweep candidates differ only in settings, so their logs would share a directory
        fail(f"--log-dir cannot be combined with {modes[0]}")


def _regret(grid: list[Scenario], horizon_s: float, out_dir: Path) -> None:
    from sair_ray.bench.regret import run_regret

    res = run_regret(grid, horizon_s=horizon_s, on_run=lambda r: out.print(
        f"{r.app} {r.pattern} {r.method} seed {r.seed}: {len(r.records)} rounds, "
        f"{r.alternatives} actions played, {r.wall_s:.0f} s"))
    paths = res.write(out_dir)
    out.print(res.format(), markup=False, highlight=False, soft_wrap=True)
    out.print("-> " + ", ".join(map(str, paths)))


def _bottleneck_eval(n: int, seed: int, workers: int, out_dir: Path, command: str,
                     eval_set: str = "both") -> None:
    from sair_ray.bench import bottleneck_eval as be

    if eval_set not in (*be.EVAL_SETS, "both"):
        fail(f"--eval-set must be easy, hard or both (got {eval_set!r})")
    if seed >= be.HARD_SEED_OFFSET:
        fail(f"--eval-seed must be below {be.HARD_SEED_OFFSET} (the hard set's seeds start "
             "there)")
    names = be.EVAL_SETS if eval_set == "both" else (eval_set,)
    sets = {}
    for name in names:
        with err.status(f"bottleneck evaluation, {name} set: {n} scenarios"):
            sets[name] = be.evaluate(n, seed, workers, name)
    paths = be.write_eval_outputs(sets, out_dir, command)
    out.print(paths["markdown"].read_text(), markup=False, highlight=False)
    out.print("-> " + ", ".join(str(p) for p in paths.values()))


def _build_grid(*, apps: list[str] | None, patterns: list[str] | None,
                workloads: list[str] | None, methods: list[str] | None,
                ablation: list[str] | None, sweep: bool, seeds: int, hours: float,
                tuning_seed: int, tuned: Path | None, untuned: bool) -> list[Scenario]:
    """The scenarios of the mode chosen (the list options as given: repeated and/or
    comma-separated; --workload only repeated, its commas separate a workload's options);
    a bad app, pattern, workload, method or ablation exits 2."""
    from sair_ray.bench import (
        APPS,
        DEFAULT_METHODS,
        PATTERNS,
        BenchError,
        build_grid,
        resolve_workloads,
    )
    from sair_ray.bench.grid import ABLATION_APP, build_ablation_grid
    from sair_ray.bench.tuned import TUNED, load_tuned

    try:
        wls = resolve_workloads(workloads) if workloads else None
        if wls:
            _note_workloads(wls, hours)
        if sweep:
            from sair_ray.bench.sweep import build_sweep

            return build_sweep(_names(apps) or APPS, _names(patterns) or PATTERNS, hours,
                               tuning_seed, workloads=wls)
        if ablation:
            return build_ablation_grid(_names(ablation) or [], _names(methods) or ["sair"],
                                       _names(patterns) or PATTERNS, seeds, hours,
                                       _names(apps) or [ABLATION_APP], workloads=wls)
        settings = None if untuned else (load_tuned(tuned) if tuned else TUNED)
        return build_grid(_names(apps) or APPS, _names(patterns) or PATTERNS,
                          _names(methods) or DEFAULT_METHODS, seeds, hours, tuned=settings,
                          workloads=wls)
    except (BenchError, ValueError) as e:
        fail(str(e))


def _reused(grid: list[Scenario], path: Path) -> dict[int, dict[str, Any]]:
    from sair_ray.bench.grid import reusable_rows
    from sair_ray.bench.report import read_rows

    try:
        rows = read_rows(path)
    except FileNotFoundError:
        fail(f"--reuse {path}: no results.parquet there (a directory `sair bench --out` "
             "wrote, or the file)")
    except (OSError, ValueError, KeyError) as e:
        fail(f"--reuse {path}: cannot read its results: {e}")
    kept = reusable_rows(grid, rows)
    err.print(f"reusing {len(kept)} baseline runs of {len(grid)} from {path}; running "
              f"{len(grid) - len(kept)}", highlight=False)
    return kept


def _merged(grid: list[Scenario], kept: dict[int, dict[str, Any]],
            res: GridResult) -> GridResult:
    """`res` (the runs made) with the reused rows, in grid order."""
    from sair_ray.bench.grid import row_key, scenario_key

    index = {scenario_key(sc): i for i, sc in enumerate(grid)}
    rows = dict(kept)
    for r in res.rows:
        rows[index[row_key(r)]] = r
    res.rows = [rows[i] for i in sorted(rows)]
    res.total = len(grid)
    return res


def _with_config(grid: list[Scenario], path: Path) -> list[Scenario]:
    """The grid with every run reading `path` (checked here, once, so a bad file is one
    clear error rather than a failure per run)."""
    import dataclasses

    from sair_ray.config import ConfigError, SAIRConfig

    try:
        SAIRConfig.from_yaml(path)
    except (ConfigError, OSError, ValueError) as e:
        fail(f"--config {path}: {e}")
    return [dataclasses.replace(sc, config=str(path.resolve())) for sc in grid]


def _note_workloads(wls: list[BenchWorkload], hours: float) -> None:
    """Credit the data a workload replays; warn when a trace ends before the runs do."""
    for credit in dict.fromkeys(w.credit for w in wls if w.credit):
        err.print(f"trace: {credit}", markup=False, highlight=False)
    run_s = hours * 3600.0
    for w in wls:
        if w.ends_at is not None and w.ends_at < run_s:
            err.print(f"[yellow]warning:[/yellow] workload {w.name} ends at "
                      f"{w.ends_at:.0f} s, before the end of each {run_s:.0f} s run "
                      f"(--hours {hours:g}): no requests after that; add loop=true to "
                      "repeat it, or shorten --hours", highlight=False)


def _run(grid: list[Scenario], *, sweep: bool, workers: int,
         log_dir: Path | None) -> GridResult:
    from sair_ray.bench import run_grid
    from sair_ray.progress import progress_bar

    with progress_bar(err) as progress:
        task = progress.add_task("sweep" if sweep else "bench", total=len(grid))

        def advance(sc: object, row: object) -> None:
            progress.advance(task)

        return run_grid(grid, workers=workers, on_result=advance, log_dir=log_dir)


def _write_sweep(res: GridResult, out_dir: Path, command: str) -> None:
    from sair_ray.bench.sweep import write_sweep_outputs

    paths = write_sweep_outputs(res.rows, out_dir, command)
    out.print(paths["markdown"].read_text(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"{len(res.rows)}/{res.total} runs -> {paths['parquet']}, "
              f"{paths['markdown']}, {paths['tuned']}")


def _write_grid(res: GridResult, out_dir: Path, command: str) -> None:
    """results.parquet, results.md and, with matplotlib, the figures."""
    from sair_ray.bench import figures
    from sair_ray.bench.report import to_markdown, write_outputs

    paths = write_outputs(res.rows, out_dir, command)
    out.print(to_markdown(res.rows), markup=False, highlight=False, soft_wrap=True)
    out.print(f"{len(res.rows)}/{res.total} runs -> {paths['parquet']}, "
              f"{paths['markdown']}")
    if not figures.available():
        err.print("no figures: matplotlib is not installed (pip install 'sair-ray[bench]')")
        return
    from sair_ray.profiles import load_profile

    # a profile file's rows carry its path; the shipped profiles are found by name
    sources = {r["app"]: r.get("profile") or r["app"] for r in res.rows}
    sla = {a: load_profile(src).pipeline.sla_ms for a, src in sources.items()}
    pngs = figures.write_figures(res.rows, out_dir, sla)
    out.print("figures -> " + ", ".join(str(p) for p in pngs))


def _report_failures(res: GridResult) -> None:
    """Name the runs that failed; exit 130 when interrupted, 1 when a run failed."""
    for sc, e in res.failed:
        err.print(f"[red]failed:[/red] {sc}: {e}")
    if res.interrupted:
        err.print(f"interrupted: kept {len(res.rows)} of {res.total} runs")
        raise typer.Exit(130)
    if res.failed:
        raise typer.Exit(1)
