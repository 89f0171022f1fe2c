"""Reading Prometheus metrics without a Prometheus client library (stdlib only).

Two readers return the same `Snapshot` (every sample of the families asked for, at one
time):

- `NodeAgents`: scrapes every alive Ray node's metrics agent, `http://<node ip>:<port>/
  metrics` (the port is the node's `MetricsExportPort` in `ray.nodes()`, fixed with
  `ray start --metrics-export-port=NNNN`). An agent only answers "now": a window over
  such snapshots runs from the previous scrape to this one (`ServeMetrics` keeps the last
  snapshot and differences against it), so its edges are the scrape times, not the times
  asked for.
- `PrometheusServer(url)`: instant queries against a Prometheus server's HTTP API
  (`GET /api/v1/query?query=...&time=t`), the usual KubeRay + Prometheus set-up; it can
  answer at any past time `t` (to the server's scrape interval).

Parts: `parse_text` (the text exposition format, version 0.0.4: `name{l="v",...} value
[timestamp]`, `# HELP` / `# TYPE` lines skipped), `Histogram` (cumulative `le` buckets,
summed over series, differenced between snapshots) with `Histogram.quantile`, which
interpolates linearly inside the bucket like PromQL's `histogram_quantile`, and
`counter_delta` (reset-aware, like PromQL's `increase` without extrapolation).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sair_ray import net

Labels = tuple[tuple[str, str], ...]          # sorted (name, value) pairs
Series = dict[Labels, float]                  # one family: labels -> value
Match = Mapping[str, str | Callable[[str], bool]]

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MetricsReadError(RuntimeError):
    """No metrics could be read (no agent or server answered, or the answer was not
    Prometheus data); the message names the address(es) and the fix."""


# -- the text format -------------------------------------------------------------------------
def parse_labels(text: str) -> Labels:
    """`a="1",b="x\\"y"` -> (("a", "1"), ("b", 'x"y')), sorted by name."""
    out = []
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            if text[pos:].strip(" ,"):
                raise ValueError(f"bad label set: {text!r}")
            break
        value = m.group(2)
        if "\\" in value:
            value = re.sub(r'\\[\\"n]', lambda e: _ESCAPES[e.group(0)], value)
        out.append((m.group(1), value))
        pos = m.end()
    return tuple(sorted(out))


def parse_value(text: str) -> float:
    low = text.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    return float(text)  # "NaN" parses


def parse_text(text: str, prefixes: Sequence[str] | None = None) -> dict[str, Series]:
    """The Prometheus text format as {metric name: {labels: value}}. `prefixes`: keep only
    the samples whose name starts with one of them (a Ray agent exports ~2000 series, most
    of them irrelevant here; the prefix test is much cheaper than parsing). A sample repeated
    with the same labels keeps the last value; malformed lines are skipped."""
    out: dict[str, Series] = {}
    pre = tuple(prefixes) if prefixes else None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if pre is not None and not line.startswith(pre):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            labels = parse_labels(m.group(2)) if m.group(2) else ()
            value = parse_value(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), {})[labels] = value
    return out


def label(labels: Labels, name: str, default: str = "") -> str:
    for k, v in labels:
        if k == name:
            return v
    return default


def matches(labels: Labels, match: Match | None) -> bool:
    """Every `match` entry holds: an exact label value, or a predicate on it (a missing
    label reads as "")."""
    if not match:
        return True
    d = dict(labels)
    for k, want in match.items():
        got = d.get(k, "")
        if callable(want):
            if not want(got):
                return False
        elif got != want:
            return False
    return True


def _merge(a: dict[str, Series], b: Mapping[str, Series], source: str) -> None:
    """Add b's series to a, each with an `instance` label naming its source (as
    Prometheus labels its targets), which keeps two nodes' equal label sets apart."""
    for name, series in b.items():
        dst = a.setdefault(name, {})
        for labels, value in series.items():
            dst[tuple(sorted((*labels, ("instance", source))))] = value


# -- snapshots ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """The samples of some metric families at one time, from one or more sources."""

    time: float
    families: dict[str, Series] = field(default_factory=dict)
    sources: tuple[str, ...] = ()            # addresses that answered
    failed: dict[str, str] = field(default_factory=dict)   # address -> why not

    def series(self, name: str, match: Match | None = None) -> Series:
        fam = self.families.get(name, {})
        if not match:
            return fam
        return {k: v for k, v in fam.items() if matches(k, match)}

    def has(self, name: str, match: Match | None = None) -> bool:
        return bool(self.series(name, match))

    def total(self, name: str, match: Match | None = None) -> float:
        """Sum over the matching series (a gauge's total); 0 if none."""
        return float(sum(v for v in self.series(name, match).values() if math.isfinite(v)))

    def histogram(self, name: str, match: Match | None = None) -> Histogram:
        """The histogram family `name` (`name_bucket`, `name_sum`, `name_count`), summed
        over the matching series."""
        return Histogram.from_series(self.series(f"{name}_bucket", match),
                                     self.series(f"{name}_sum", match),
                                     self.series(f"{name}_count", match))


def align(start: Snapshot, end: Snapshot) -> Snapshot:
    """`start` as a baseline for `end`: the series of sources that answered at `end` but
    not at `start` (a node new, or back after a failed scrape; `instance` label) are
    added with their `end` values, so they count no increase instead of their whole
    cumulative value. Returns `start` itself when nothing is missing."""
    fresh = set(end.sources) - set(start.sources)
    if not fresh:
        return start
    families = {name: dict(series) for name, series in start.families.items()}
    for name, series in end.families.items():
        for labels, value in series.items():
            if label(labels, "instance") in fresh:
                families.setdefault(name, {})[labels] = value
    return Snapshot(start.time, families, start.sources + tuple(sorted(fresh)), start.failed)


def counter_delta(start: Series | None, end: Series) -> float:
    """Increase of a counter family between two snapshots, summed over series: a series
    new at `end` counts from 0, one that went down was reset (its new value is the
    increase); a series gone at `end` adds nothing. `start=None`: 0 (nothing to
    difference against)."""
    if start is None:
        return 0.0
    total = 0.0
    for labels, v in end.items():
        if not math.isfinite(v):
            continue
        before = start.get(labels, 0.0)
        total += v - before if v >= before else v
    return total


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets (upper bound `le` -> count of observations <= le), with the
    count and sum of the observations."""

    buckets: tuple[tuple[float, float], ...] = ()   # sorted by le; the last is +Inf
    count: float = 0.0
    sum: float = 0.0

    @staticmethod
    def from_series(buckets: Series, sums: Series, counts: Series) -> Histogram:
        by_le: dict[float, float] = {}
        for labels, v in buckets.items():
            le = label(labels, "le")
            if not le:
                continue
            by_le[parse_value(le)] = by_le.get(parse_value(le), 0.0) + v
        return Histogram(tuple(sorted(by_le.items())), float(sum(counts.values())),
                         float(sum(sums.values())))

    @staticmethod
    def delta(start: Snapshot | None, end: Snapshot, name: str,
              match: Match | None = None) -> Histogram:
        """The observations made between two snapshots (per series, reset-aware like
        `counter_delta`, then summed); empty if `start` is None."""
        if start is None:
            return Histogram()
        parts = {}
        for suffix in ("_bucket", "_sum", "_count"):
            a, b = start.series(name + suffix, match), end.series(name + suffix, match)
            parts[suffix] = {k: _inc(a.get(k, 0.0), v) for k, v in b.items()}
        return Histogram.from_series(parts["_bucket"], parts["_sum"], parts["_count"])

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count > 0 else math.nan

    def bucket_of(self, q: float) -> tuple[float, float]:
        """The bounds (lower, upper) of the bucket `quantile(q)` interpolates in; (nan,
        nan) without observations. How far that quantile can be off."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0 or not math.isfinite(total):
            return math.nan, math.nan
        rank = min(max(q, 0.0), 1.0) * total
        prev_le = 0.0
        for le, count in self.buckets:
            if count >= rank:
                return prev_le, le
            prev_le = le
        return prev_le, math.inf

    def quantile(self, q: float) -> float:
        """PromQL `histogram_quantile(q, ...)`: the bucket holding rank q * count, linear
        interpolation between its lower and upper bound (lower bound 0 for the first
        bucket); in the +Inf bucket, the highest finite bound. NaN without observations."""
        if not self.buckets:
            return math.nan
        total = self.buckets[-1][1]
        if total <= 0 or not math.isfinite(total):
            return math.nan
        if q <= 0:
            return 0.0 if self.buckets[0][0] > 0 else self.buckets[0][0]
        if q >= 1:
            q = 1.0
        rank = q * total
        prev_le, prev_count = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return prev_le
                if count == prev_count:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
            prev_le, prev_count = le, count
        return prev_le


def _inc(before: float, after: float) -> float:
    """One series' increase; a series that went down was reset: its new value counts."""
    return after - before if after >= before else after


# -- readers -----------------------------------------------------------------------------------
def _get(url: str, timeout_s: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with net.urlopen(req, timeout=timeout_s) as resp:
        return resp.read().decode("utf-8", errors="replace")


def ray_agent_addresses() -> list[str]:
    """`host:port` of every alive node's metrics agent, from `ray.nodes()` (needs a
    connected Ray driver)."""
    import ray

    if not ray.is_initialized():
        raise MetricsReadError(
            "NodeAgents: no agent addresses given and no Ray driver connected to discover "
            "them (ray.init(address=...) first, or pass addresses=['<node ip>:<metrics "
            "export port>', ...])")
    out = []
    for n in ray.nodes():
        if not n.get("Alive", n.get("alive")):
            continue
        port = n.get("MetricsExportPort")
        if port:
            out.append(f"{n['NodeManagerAddress']}:{port}")
    return out


class NodeAgents:
    """Scrapes every alive Ray node's metrics agent (in parallel).

    `addresses`: `host:port` list, or None to discover them from `ray.nodes()` (again
    every `rediscover_s`, and after a round in which any agent failed). `prefixes`: the
    metric-name prefixes kept (see `parse_text`). A scrape in which no agent answers
    raises `MetricsReadError` naming every address and the fix; one in which some answer
    returns their samples and lists the others in `Snapshot.failed`.
    """

    def __init__(self, addresses: Sequence[str] | None = None, *, timeout_s: float = 2.0,
                 prefixes: Sequence[str] | None = None, rediscover_s: float = 30.0,
                 discover: Callable[[], list[str]] = ray_agent_addresses,
                 clock: Callable[[], float] = time.time) -> None:
        self._fixed = list(addresses) if addresses is not None else None
        self.timeout_s = timeout_s
        self.prefixes = tuple(prefixes) if prefixes else None
        self.rediscover_s = rediscover_s
        self._discover = discover
        self._clock = clock
        self._found: list[str] = []
        self._found_at = -math.inf
        # per address, the last scrape's (HTTP ms, parse ms, bytes): where a read's time goes
        self.timings: dict[str, tuple[float, float, int]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                           thread_name_prefix="sair-scrape")

    def __repr__(self) -> str:
        return f"NodeAgents({self._fixed if self._fixed is not None else 'ray.nodes()'})"

    def addresses(self) -> list[str]:
        if self._fixed is not None:
            return self._fixed
        now = time.monotonic()
        if now - self._found_at > self.rediscover_s or not self._found:
            self._found = self._discover()
            self._found_at = now
        return self._found

    def _scrape(self, address: str) -> dict[str, Series]:
        url = address if "://" in address else f"http://{address}"
        t0 = time.perf_counter()
        text = _get(url.rstrip("/") + "/metrics", self.timeout_s)
        t1 = time.perf_counter()
        out = parse_text(text, self.prefixes)
        self.timings[address] = (1000 * (t1 - t0), 1000 * (time.perf_counter() - t1),
                                 len(text))
        return out

    def snapshot(self) -> Snapshot:
        addrs = self.addresses()
        if not addrs:
            raise MetricsReadError(
                "no Ray node with a metrics agent was found (ray.nodes() lists no alive "
                "node with a MetricsExportPort)")
        t = self._clock()
        futures = {a: self._pool.submit(self._scrape, a) for a in addrs}
        families: dict[str, Series] = {}
        ok, failed = [], {}
        for a, f in futures.items():
            try:
                _merge(families, f.result(), a)
                ok.append(a)
            except (urllib.error.URLError, OSError, ValueError) as e:
                failed[a] = str(getattr(e, "reason", e))
        if failed:
            self._found_at = -math.inf   # a node may have gone or moved: look again
        if not ok:
            raise MetricsReadError(
                "no Ray metrics agent answered: "
                + "; ".join(f"http://{a}/metrics: {why}" for a, why in failed.items())
                + ". Start every Ray node with a fixed, reachable metrics port (`ray start "
                "--metrics-export-port=8080`, or `_metrics_export_port=8080` in ray.init; "
                "on KubeRay the metrics port 8080 is set by default) and make sure this "
                "machine can reach it")
        return Snapshot(t, families, tuple(ok), failed)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class PrometheusServer:
    """Instant queries against a Prometheus server (`GET {url}/api/v1/query`).

    `snapshot(t, selectors)` runs `sel1 or sel2 or ...` at time `t` (one HTTP request)
    and returns every series of the answer; a selector is PromQL, e.g.
    `{__name__=~"ray_serve_.*",application="app"}`. The server's own staleness rules
    apply (a series not scraped in its lookback, 5 min by default, is absent).
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None) -> None:
        if "://" not in url:
            url = f"http://{url}"
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        if net.has_credentials(self.headers):   # https or this machine only (sair_ray.net)
            try:
                net.check_credentials_url(self.url, "the Prometheus credentials")
            except net.InsecureURL as e:
                raise MetricsReadError(str(e)) from None

    def __repr__(self) -> str:
        return f"PrometheusServer({self.url!r})"

    def query(self, promql: str, t: float) -> list[dict]:
        """The raw `data.result` of an instant query (resultType vector)."""
        qs = urllib.parse.urlencode({"query": promql, "time": f"{t:.3f}"})
        req = urllib.request.Request(f"{self.url}/api/v1/query?{qs}", headers=self.headers)
        try:
            with net.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise MetricsReadError(f"Prometheus at {self.url} refused the query "
                                   f"{promql!r}: HTTP {e.code} {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise MetricsReadError(
                f"cannot reach Prometheus at {self.url}: {getattr(e, 'reason', e)} (check "
                "the URL, e.g. http://prometheus-server.monitoring:9090, and that this "
                "machine can reach it)") from None
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            raise MetricsReadError(f"{self.url}/api/v1/query did not answer JSON: is it a "
                                   f"Prometheus server? ({body[:120]!r})") from None
        if doc.get("status") != "success":
            raise MetricsReadError(f"Prometheus at {self.url}: query {promql!r} failed: "
                                   f"{doc.get('errorType')}: {doc.get('error')}")
        data = doc.get("data") or {}
        if data.get("resultType") != "vector":
            raise MetricsReadError(f"Prometheus at {self.url}: expected a vector, got "
                                   f"{data.get('resultType')!r}")
        return list(data.get("result") or [])

    def snapshot(self, t: float, selectors: Iterable[str]) -> Snapshot:
        families: dict[str, Series] = {}
        for item in self.query(" or ".join(selectors), t):
            metric = dict(item.get("metric") or {})
            name = metric.pop("__name__", "")
            try:
                value = parse_value(str(item["value"][1]))
            except (KeyError, IndexError, ValueError):
                continue
            families.setdefault(name, {})[tuple(sorted(metric.items()))] = value
        return Snapshot(t, families, (self.url,))
