"""Arrival processes: Poisson, ramp, burst and trace replay, shared by the simulator
(`sair_ray.sim`) and the load generator (`sair load`).

Every workload answers three questions:

- `sample(t0, t1, rng)`: the arrivals in [t0, t1) (sorted times plus optional per-request
  attributes such as token counts);
- `rate_at(t)`: the instantaneous arrival rate (req/s);
- `expected_arrivals(t0, t1)`: the integral of the rate, which the clairvoyant Oracle
  baseline uses to know the next interval's load.

Workloads are YAML-describable (`workload_from_dict`, `load_workload`):

    {kind: poisson, rate: 50}
    {kind: ramp, from: 10, to: 100, duration_s: 1800}
    {kind: burst, base: 20, spike: 100, period_s: 300, spike_s: 60}
    {kind: trace, path: azure, time_scale: 1.0, rate_scale: 1.0, loop: true}

Trace replay works out of the box with the Azure LLM inference trace 2023 (code
completion): "Azure Public Dataset" (github.com/Azure/AzurePublicDataset), CC-BY 4.0.
Nothing of it is shipped here; `find_trace()` locates the CSV.
"""

from __future__ import annotations

import csv
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sair_ray.schema import Fields, SchemaError

AZURE_TRACE_FILE = "azure_llm_code_2023.csv"
TRACE_ENV = "SAIR_TRACE"
AZURE_CREDIT = ("Azure LLM inference trace 2023 (code): Azure Public Dataset, "
                "github.com/Azure/AzurePublicDataset, CC-BY 4.0")


class WorkloadError(SchemaError):
    """A workload description or trace file is malformed."""


@dataclass(frozen=True)
class Arrivals:
    """Arrival times (sorted, seconds) and per-request attributes of equal length."""

    times: np.ndarray
    attrs: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)


class Workload(ABC):
    """Base class; subclasses give the rate function, sampling is by thinning."""

    kind: str = ""

    @abstractmethod
    def rates(self, t: np.ndarray) -> np.ndarray:
        """Vectorised instantaneous rate."""

    @abstractmethod
    def expected_arrivals(self, t0: float, t1: float) -> float:
        """Integral of the rate over [t0, t1)."""

    @abstractmethod
    def peak_rate(self, t0: float, t1: float) -> float:
        """An upper bound of the rate over [t0, t1) (exact for these workloads)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The YAML description this workload was (or could be) built from."""

    def rate_at(self, t: float) -> float:
        return float(self.rates(np.asarray([t], dtype=float))[0])

    def mean_rate(self, t0: float, t1: float) -> float:
        return self.expected_arrivals(t0, t1) / (t1 - t0) if t1 > t0 else self.rate_at(t0)

    def sample(self, t0: float, t1: float, rng: np.random.Generator) -> Arrivals:
        """Non-homogeneous Poisson arrivals in [t0, t1) by thinning (Lewis-Shedler)."""
        if t1 <= t0:
            return Arrivals(np.empty(0))
        peak = self.peak_rate(t0, t1)
        if peak <= 0:
            return Arrivals(np.empty(0))
        n = rng.poisson(peak * (t1 - t0))
        cand = np.sort(rng.uniform(t0, t1, n))
        keep = rng.uniform(0.0, peak, n) < self.rates(cand)
        return Arrivals(cand[keep])

    def sample_attrs(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Per-request attributes drawn like the workload's (none for synthetic ones)."""
        return {}

    def attr_means(self) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class Poisson(Workload):
    rate: float
    kind = "poisson"

    def __post_init__(self) -> None:
        _check_rate("rate", self.rate)

    def rates(self, t: np.ndarray) -> np.ndarray:
        return np.full(np.shape(t), self.rate, dtype=float)

    def expected_arrivals(self, t0: float, t1: float) -> float:
        return self.rate * max(0.0, t1 - t0)

    def peak_rate(self, t0: float, t1: float) -> float:
        return self.rate

    def sample(self, t0: float, t1: float, rng: np.random.Generator) -> Arrivals:
        # Given the count, Poisson arrival times are i.i.d. uniform: exact and cheaper.
        if t1 <= t0:
            return Arrivals(np.empty(0))
        n = rng.poisson(self.rate * (t1 - t0))
        return Arrivals(np.sort(rng.uniform(t0, t1, n)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate}


@dataclass(frozen=True)
class Ramp(Workload):
    """Rate goes linearly from `start_rate` to `end_rate` over [start_s, start_s + duration_s],
    and stays at the end values outside it."""

    start_rate: float
    end_rate: float
    duration_s: float
    start_s: float = 0.0
    kind = "ramp"

    def __post_init__(self) -> None:
        _check_rate("from", self.start_rate)
        _check_rate("to", self.end_rate)
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise WorkloadError(f"duration_s must be > 0 (got {self.duration_s})")

    def rates(self, t: np.ndarray) -> np.ndarray:
        x = np.clip((np.asarray(t, dtype=float) - self.start_s) / self.duration_s, 0.0, 1.0)
        return self.start_rate + (self.end_rate - self.start_rate) * x

    def _cum(self, t: float) -> float:
        a, d = self.start_s, self.duration_s
        r0, r1 = self.start_rate, self.end_rate
        if t <= a:
            return r0 * (t - a)
        if t >= a + d:
            return (r0 + r1) / 2 * d + r1 * (t - a - d)
        x = t - a
        return r0 * x + (r1 - r0) * x * x / (2 * d)

    def expected_arrivals(self, t0: float, t1: float) -> float:
        return max(0.0, self._cum(t1) - self._cum(t0))

    def peak_rate(self, t0: float, t1: float) -> float:
        return float(max(self.rates(np.asarray([t0, t1]))))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "from": self.start_rate, "to": self.end_rate,
                "duration_s": self.duration_s, "start_s": self.start_s}


@dataclass(frozen=True)
class Burst(Workload):
    """`base` req/s, with `spike` req/s for the first `spike_s` of every `period_s`
    (shifted by `phase_s`)."""

    base: float
    spike: float
    period_s: float
    spike_s: float
    phase_s: float = 0.0
    kind = "burst"

    def __post_init__(self) -> None:
        _check_rate("base", self.base)
        _check_rate("spike", self.spike)
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise WorkloadError(f"period_s must be > 0 (got {self.period_s})")
        if not 0 <= self.spike_s <= self.period_s:
            raise WorkloadError(f"spike_s must be in [0, period_s] (got {self.spike_s})")

    def rates(self, t: np.ndarray) -> np.ndarray:
        x = np.mod(np.asarray(t, dtype=float) - self.phase_s, self.period_s)
        return np.where(x < self.spike_s, self.spike, self.base)

    def _spiky_time(self, t: float) -> float:
        """Time spent in spikes over [phase, t] (negative before the phase)."""
        x = t - self.phase_s
        k = math.floor(x / self.period_s)
        return k * self.spike_s + min(x - k * self.period_s, self.spike_s)

    def expected_arrivals(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        spiky = self._spiky_time(t1) - self._spiky_time(t0)
        return self.base * (t1 - t0) + (self.spike - self.base) * spiky

    def peak_rate(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return self.rate_at(t0)
        spiky = self._spiky_time(t1) - self._spiky_time(t0)
        if spiky <= 0:
            return self.base
        if spiky >= t1 - t0:
            return self.spike
        return max(self.base, self.spike)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "spike": self.spike,
                "period_s": self.period_s, "spike_s": self.spike_s, "phase_s": self.phase_s}


class TraceReplay(Workload):
    """Replays recorded arrival times, with optional time and rate scaling.

    - `time_scale`: simulated time = trace time * time_scale, so 0.5 plays the trace twice
      as fast (doubling every rate and halving its duration).
    - `rate_scale`: keeps the time axis and scales the rate: each request is kept with
      probability rate_scale (< 1), or replicated floor(rate_scale) times plus once more
      with the fractional probability (> 1). Copies are shifted by a uniform jitter of up
      to one mean inter-arrival gap, so they do not arrive at the same instant. The
      resampling is seeded by `seed`, fixed at construction: the replay is deterministic
      and identical for every policy.
    - `loop`: repeat the (scaled) trace forever with its own period; otherwise the rate is
      zero after the last arrival.

    Per-request columns (e.g. token counts) become `attrs`, so a text-generation stage can
    use them as the work size of each request.
    """

    kind = "trace"

    def __init__(self, times: Sequence[float] | np.ndarray,
                 attrs: Mapping[str, Sequence[float] | np.ndarray] | None = None, *,
                 time_scale: float = 1.0, rate_scale: float = 1.0, loop: bool = False,
                 seed: int = 0, rate_window_s: float = 10.0, source: str = "") -> None:
        t = np.asarray(times, dtype=float)
        if t.ndim != 1 or len(t) == 0:
            raise WorkloadError("a trace needs at least one arrival time")
        if not np.all(np.isfinite(t)):
            raise WorkloadError("trace arrival times must be finite")
        for name, val in (("time_scale", time_scale), ("rate_scale", rate_scale),
                          ("rate_window_s", rate_window_s)):
            if not (math.isfinite(val) and val > 0):
                raise WorkloadError(f"{name} must be > 0 (got {val})")
        cols = {k: np.asarray(v, dtype=float) for k, v in (attrs or {}).items()}
        for k, v in cols.items():
            if v.shape != t.shape:
                raise WorkloadError(f"trace column {k!r} has {len(v)} values for "
                                    f"{len(t)} arrivals")
        order = np.argsort(t, kind="stable")
        t = (t[order] - t[order][0]) * time_scale
        cols = {k: v[order] for k, v in cols.items()}
        self.time_scale, self.rate_scale, self.loop = time_scale, rate_scale, loop
        self.seed, self.rate_window_s, self.source = seed, rate_window_s, source
        self._raw_attrs = cols
        mean_gap = t[-1] / (len(t) - 1) if len(t) > 1 and t[-1] > 0 else 1.0
        if rate_scale != 1.0:
            t, cols = _rescale(t, cols, rate_scale, mean_gap, np.random.default_rng(seed))
        self.times = t
        self.attrs = cols
        # Looping period: the trace span plus one mean gap, so the seam is not a burst.
        self.period = float(t[-1] + mean_gap) if len(t) else mean_gap

    # -- construction from files ----------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | Path, *, time_column: str | None = None,
                 **kwargs: Any) -> TraceReplay:
        """Read a CSV with a header: one time column, any numeric columns as attributes.

        Times may be numbers (seconds) or date-times ("2023-11-16 18:17:03.9799600").
        Attribute names are snake_cased ("GeneratedTokens" -> "generated_tokens").
        """
        p = Path(path)
        try:
            with p.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                rows = list(reader)
        except OSError as e:
            raise WorkloadError(f"cannot read trace {p}: {e.strerror or e}") from None
        if not header:
            raise WorkloadError(f"{p}: empty trace file (a header row is required)")
        header = [h.strip() for h in header]
        col = _time_column(header, time_column, p)
        rows = [r for r in rows if any(x.strip() for x in r)]
        if not rows:
            raise WorkloadError(f"{p}: the trace has a header but no rows")
        for i, r in enumerate(rows):
            if len(r) != len(header):
                raise WorkloadError(f"{p}: line {i + 2} has {len(r)} fields, the header "
                                    f"has {len(header)}")
        times = _parse_times([r[col].strip() for r in rows], p)
        attrs: dict[str, np.ndarray] = {}
        for j, name in enumerate(header):
            if j == col:
                continue
            try:
                attrs[_snake(name)] = np.array([float(r[j]) for r in rows])
            except ValueError:
                continue  # non-numeric column: not a work size
        return cls(times, attrs, source=str(p), **kwargs)

    # -- Workload ---------------------------------------------------------------------------
    def _window(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, indices into the trace) of the arrivals in [t0, t1), loops included."""
        if t1 <= t0:
            return np.empty(0), np.empty(0, dtype=int)
        if not self.loop:
            i0, i1 = np.searchsorted(self.times, [t0, t1], side="left")
            return self.times[i0:i1], np.arange(i0, i1)
        out_t, out_i = [], []
        for k in range(math.floor(t0 / self.period), math.floor(t1 / self.period) + 1):
            off = k * self.period
            i0, i1 = np.searchsorted(self.times, [t0 - off, t1 - off], side="left")
            out_t.append(self.times[i0:i1] + off)
            out_i.append(np.arange(i0, i1))
        return np.concatenate(out_t), np.concatenate(out_i)

    def sample(self, t0: float, t1: float, rng: np.random.Generator) -> Arrivals:
        t, idx = self._window(t0, t1)
        return Arrivals(t, {k: v[idx] for k, v in self.attrs.items()})

    def expected_arrivals(self, t0: float, t1: float) -> float:
        return float(len(self._window(t0, t1)[0]))

    def rates(self, t: np.ndarray) -> np.ndarray:
        w = self.rate_window_s
        return np.array([self.expected_arrivals(x - w / 2, x + w / 2) / w
                         for x in np.asarray(t, dtype=float).ravel()]).reshape(np.shape(t))

    def peak_rate(self, t0: float, t1: float) -> float:
        grid = np.arange(t0, max(t1, t0 + 1e-9), self.rate_window_s / 2)
        return float(self.rates(grid).max()) if len(grid) else 0.0

    @property
    def duration(self) -> float:
        return self.period

    def sample_attrs(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        if not self.attrs:
            return {}
        idx = rng.integers(0, len(self.times), n)
        return {k: v[idx] for k, v in self.attrs.items()}

    def attr_means(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.attrs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.source, "time_scale": self.time_scale,
                "rate_scale": self.rate_scale, "loop": self.loop, "seed": self.seed}


def _rescale(t: np.ndarray, cols: dict[str, np.ndarray], scale: float, jitter: float,
             rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    whole, frac = int(math.floor(scale)), scale - math.floor(scale)
    copies = np.full(len(t), whole) + (rng.uniform(size=len(t)) < frac)
    idx = np.repeat(np.arange(len(t)), copies)
    first = np.r_[True, idx[1:] != idx[:-1]] if len(idx) else np.empty(0, dtype=bool)
    shift = np.where(first, 0.0, rng.uniform(0.0, jitter, len(idx)))
    new_t = t[idx] + shift
    order = np.argsort(new_t, kind="stable")
    return new_t[order], {k: v[idx][order] for k, v in cols.items()}


def _time_column(header: list[str], wanted: str | None, p: Path) -> int:
    if wanted is not None:
        if wanted not in header:
            raise WorkloadError(f"{p}: no column {wanted!r}; columns: {', '.join(header)}")
        return header.index(wanted)
    for name in ("TIMESTAMP", "timestamp", "time", "Time", "arrival", "arrival_time"):
        if name in header:
            return header.index(name)
    return 0


def _parse_times(values: list[str], p: Path) -> np.ndarray:
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        pass
    try:
        stamps = np.array([v.replace(" ", "T", 1) for v in values], dtype="datetime64[ns]")
    except ValueError as e:
        raise WorkloadError(f"{p}: arrival times are neither numbers nor date-times: {e}") \
            from None
    return (stamps - stamps.min()).astype("int64") / 1e9


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name.strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()


def _check_rate(name: str, r: float) -> None:
    if not (isinstance(r, int | float) and math.isfinite(r) and r >= 0):
        raise WorkloadError(f"{name} must be a rate >= 0 req/s (got {r!r})")


# -- locating the Azure trace ----------------------------------------------------------------
def find_trace(filename: str = AZURE_TRACE_FILE) -> Path | None:
    """Find a trace file: `$SAIR_TRACE` (a file, or a directory holding `filename`), else
    `shared/data/<filename>` next to any parent of this package or of the working
    directory (the repository's `../shared/data`). None when nowhere to be found."""
    env = os.environ.get(TRACE_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            p = p / filename
        return p if p.is_file() else None
    seen: set[Path] = set()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if parent in seen:
                continue
            seen.add(parent)
            for cand in (parent / "shared" / "data" / filename, parent / "data" / filename):
                if cand.is_file():
                    return cand
    return None


def azure_llm_trace(path: str | Path | None = None, **kwargs: Any) -> TraceReplay:
    """The Azure LLM inference trace 2023 (code completion) as a trace-replay workload.

    Data: "Azure Public Dataset" (github.com/Azure/AzurePublicDataset,
    `AzureLLMInferenceTrace_code.csv`), licensed CC-BY 4.0; credit it wherever it is used.
    Columns TIMESTAMP, ContextTokens, GeneratedTokens become arrival times and the request
    attributes `context_tokens` and `generated_tokens`. About one hour, 8 818 requests,
    2.6 req/s on average with minute-scale bursts. `kwargs` go to `TraceReplay`.
    """
    p = Path(path) if path is not None else find_trace()
    if p is None:
        raise WorkloadError(
            f"cannot find {AZURE_TRACE_FILE}: set ${TRACE_ENV} to the file (or its directory) "
            "or put it in ../shared/data relative to the repository")
    return TraceReplay.from_csv(p, **kwargs)


# -- YAML ------------------------------------------------------------------------------------
def workload_from_dict(data: Any, where: str = "workload",
                       base_dir: str | Path | None = None) -> Workload:
    """Build a workload from its YAML description; errors name the key (`workload.rate`)."""
    try:
        return _from_fields(Fields(data, where), base_dir)
    except WorkloadError:
        raise
    except SchemaError as e:
        raise WorkloadError(str(e)) from None


def _from_fields(f: Fields, base_dir: str | Path | None) -> Workload:
    kind = f.text("kind", choices=("poisson", "ramp", "burst", "trace"))
    w: Workload
    try:
        if kind == "poisson":
            w = Poisson(f.num("rate", lo=0))
        elif kind == "ramp":
            w = Ramp(f.num("from", lo=0), f.num("to", lo=0),
                     f.num("duration_s", lo=0, lo_open=True), f.num("start_s", 0.0))
        elif kind == "burst":
            period = f.num("period_s", lo=0, lo_open=True)
            w = Burst(f.num("base", lo=0), f.num("spike", lo=0), period,
                      f.num("spike_s", lo=0, hi=period), f.num("phase_s", 0.0))
        else:
            w = _trace_from_fields(f, base_dir)
    except WorkloadError as e:
        msg = str(e)
        raise WorkloadError(msg if msg.startswith(f.path) else f"{f.path}: {msg}") from None
    f.done()
    return w


def _trace_from_fields(f: Fields, base_dir: str | Path | None) -> TraceReplay:
    raw = f.text("path", "azure")
    kwargs = dict(time_scale=f.num("time_scale", 1.0, lo=0, lo_open=True),
                  rate_scale=f.num("rate_scale", 1.0, lo=0, lo_open=True),
                  loop=f.flag("loop", False), seed=f.num("seed", 0, lo=0, integer=True),
                  rate_window_s=f.num("rate_window_s", 10.0, lo=0, lo_open=True))
    time_column = f.text("time_column", None)
    if raw == "azure":
        return azure_llm_trace(time_column=time_column, **kwargs)
    p = Path(raw).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    return TraceReplay.from_csv(p, time_column=time_column, **kwargs)


def load_workload(spec: str | Path | Mapping[str, Any]) -> Workload:
    """A workload from a mapping or a YAML file holding one."""
    if isinstance(spec, Mapping):
        return workload_from_dict(spec)
    p = Path(spec)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise WorkloadError(f"cannot read workload file {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise WorkloadError(f"{p}: not valid YAML: {e}") from None
    try:
        return workload_from_dict(data, "workload", base_dir=p.parent)
    except WorkloadError as e:
        raise WorkloadError(f"{p}: {e}") from None


# -- a workload named on the command line (`sair bench --workload`) ----------------------------
WORKLOAD_FILE_SUFFIXES = (".yaml", ".yml", ".json")
WORKLOAD_ARG_HELP = ("kind:options (trace:./trace.csv,rate_scale=2.5,loop=true or "
                     "poisson:rate=50) or a YAML/JSON file of a workload mapping (kind: ...)")


@dataclass(frozen=True)
class NamedWorkload:
    """A workload given as one string: its name (what tables show), the mapping it was
    built from (`workload_from_dict` rebuilds it; a trace's path is made absolute) and the
    workload itself."""

    name: str
    spec: dict[str, Any]
    workload: Workload

    @property
    def credit(self) -> str:
        """The data credit the workload needs ("" when none): the Azure trace's."""
        if isinstance(self.workload, TraceReplay) and \
                Path(self.workload.source).name == AZURE_TRACE_FILE:
            return AZURE_CREDIT
        return ""

    @property
    def ends_at(self) -> float | None:
        """When a trace that does not loop runs out (seconds); None for a workload that
        goes on."""
        w = self.workload
        return w.duration if isinstance(w, TraceReplay) and not w.loop else None


def parse_workload_arg(text: str) -> NamedWorkload:
    """A workload from one command-line string:

    - `KIND:OPTIONS`, OPTIONS being comma-separated `key=value` of the YAML keys of that
      kind; a trace also takes its path first: `trace:./t.csv,rate_scale=2.5,loop=true`
      (`trace:azure` is the Azure LLM trace). Named `trace:<file stem>` for a trace, the
      string itself otherwise.
    - a YAML or JSON file holding one workload mapping (`kind: ...`), plus an optional
      `name:`; named by it, else `<kind>:<file stem>`. A relative trace path in it is
      relative to the file.

    Errors (`WorkloadError`) name the string, the bad key and what is allowed."""
    s = text.strip()
    p = Path(s).expanduser()
    if p.is_file():
        return _workload_file(p)
    kind, sep, rest = s.partition(":")
    if sep and kind in ("poisson", "ramp", "burst", "trace"):
        return _workload_inline(s, kind, rest)
    if s.lower().endswith(WORKLOAD_FILE_SUFFIXES):
        raise WorkloadError(f"{s!r}: no such workload file ({p.resolve()})")
    raise WorkloadError(f"{s!r}: not a workload; give {WORKLOAD_ARG_HELP}")


def _workload_inline(s: str, kind: str, rest: str) -> NamedWorkload:
    spec: dict[str, Any] = {"kind": kind}
    for i, item in enumerate(x.strip() for x in rest.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            if kind == "trace" and i == 0:
                key, value = "path", item
            else:
                raise WorkloadError(f"{s!r}: {item!r} is not key=value (e.g. "
                                    f"{'rate_scale=2.5' if kind == 'trace' else 'rate=50'})")
        if key in spec:
            raise WorkloadError(f"{s!r}: {key!r} is given twice")
        spec[key] = value.strip() if key in ("path", "time_column") else _scalar(value)
    if kind == "trace" and "path" not in spec:
        raise WorkloadError(f"{s!r}: which trace? give its CSV path first "
                            "(trace:./trace.csv) or trace:azure")
    w = _build_named(spec, f"{s!r}", None, key_path="")
    name = f"trace:{_trace_stem(spec['path'])}" if kind == "trace" else s
    return NamedWorkload(name, _absolute(spec, w), w)


def _workload_file(p: Path) -> NamedWorkload:
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise WorkloadError(f"cannot read workload file {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise WorkloadError(f"{p}: not valid YAML or JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise WorkloadError(f"{p}: expected a workload mapping (kind: poisson | ramp | burst "
                            f"| trace, and its keys), got {type(data).__name__}")
    spec = dict(data)
    name = spec.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
        raise WorkloadError(f"{p}: name: expected a non-empty string without '/', "
                            f"got {name!r}")
    w = _build_named(spec, str(p), p.parent, key_path="workload")
    return NamedWorkload(name.strip() if name else f"{w.kind}:{p.stem}", _absolute(spec, w), w)


def _build_named(spec: dict[str, Any], where: str, base_dir: Path | None, *,
                 key_path: str) -> Workload:
    try:
        return workload_from_dict(spec, key_path, base_dir=base_dir)
    except WorkloadError as e:
        raise WorkloadError(f"{where}: {e}") from None


def _absolute(spec: dict[str, Any], w: Workload) -> dict[str, Any]:
    """The spec with a trace's path replaced by the file read, absolute, so the mapping
    rebuilds the same workload from any directory."""
    if isinstance(w, TraceReplay):
        return {**spec, "path": str(Path(w.source).resolve())}
    return spec


def _trace_stem(path: str) -> str:
    return "azure" if path == "azure" else Path(path).stem


def _scalar(value: str) -> Any:
    try:
        v = yaml.safe_load(value)
    except yaml.YAMLError:
        return value.strip()
    return value.strip() if v is None else v
