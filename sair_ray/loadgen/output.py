"""Writing per-request results: Parquet (`.parquet`) or CSV (`.csv`), chosen by suffix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from sair_ray.loadgen.runner import RequestResult

COLUMNS = [f.name for f in fields(RequestResult)] + ["send_delay_ms"]


def write_results(results: Sequence[RequestResult], path: str | Path) -> Path:
    """One row per planned request (every status, `not_sent` included)."""
    p = Path(path)
    if p.suffix not in (".parquet", ".csv"):
        raise ValueError(f"results file {p} must end in .parquet or .csv")
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = [[getattr(r, c) for c in COLUMNS] for r in results]
    if p.suffix == ".csv":
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(rows)
        return p
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [row[i] for row in rows] for i, c in enumerate(COLUMNS)})
    pq.write_table(table, p)
    return p
