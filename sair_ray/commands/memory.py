"""`sair memory`: inspect an experience memory directory, or move a corrupt one aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sair_ray.commands.console import fail, out

memory_app = typer.Typer(help="Inspect and manage an experience memory directory.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")


@memory_app.command("stats")
def memory_stats(path: Path, dim: Annotated[int | None, typer.Option(
        help="phi dimension to expect (7 x stages + 3); default: what the memory holds.")]
        = None) -> None:
    """Load a memory directory and print its size and reward distribution."""
    from sair_ray.memory import ExperienceMemory, MemoryStoreError

    if not path.is_dir():
        fail(f"{path} is not a memory directory")
    try:
        dim = dim or ExperienceMemory.stored_dim(path)
        if dim is None:
            out.print_json(json.dumps({"experiences": 0}))
            return
        with ExperienceMemory(path, dim) as m:
            r = m.rewards
            stats: dict[str, int | float] = {"experiences": len(m), "exact_index": m.exact}
            if len(m):
                stats |= {"reward_min": float(r.min()), "reward_mean": float(r.mean()),
                          "reward_max": float(r.max())}
    except MemoryStoreError as e:
        fail(str(e))
    out.print_json(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in stats.items()}))


@memory_app.command("quarantine")
def memory_quarantine(path: Path) -> None:
    """Move a (corrupt) memory directory aside so SAIR starts with a fresh one."""
    from sair_ray.memory import ExperienceMemory

    if not path.is_dir():
        fail(f"{path} is not a directory")
    moved = ExperienceMemory.quarantine(path)
    out.print(f"moved {path} -> {moved}")
