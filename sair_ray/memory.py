"""Experience memory (docs/algorithm.md §4): an Arrow table on disk as Parquet, a FAISS
index in memory.

On-disk layout of one app's memory directory::

    segments/seg-00000001.parquet   immutable Parquet segments, each written to a temporary
    segments/seg-00000002.parquet   file, fsync'ed and renamed into place (never torn)
    journal.jsonl                   experiences acknowledged since the last segment, one
                                    CRC-checked JSON line each
    snapshot.bin                    the index and neighbour lists of the first rows, so that
                                    opening need not rebuild them (memory_snapshot.py)
    LOCK                            flock'ed by the one process that writes this memory

The directories are 0700 and the files 0600 (`sair_ray.files.private_dir`): the contexts
and actions are the pipeline's operating history.

Durability: `add` returns only after the journal line is written and flushed to the OS
(and fsync'ed when `memory.fsync` is true, the default), so an acknowledged experience
survives a crash of the process (and, with fsync, of the machine). A torn final journal
line, the only thing a crash mid-write can leave, fails its CRC and is dropped on load;
earlier lines and all segments are untouched. Every `segment_rows` journal lines are
compacted into a new segment; a crash between the segment's rename and the journal's
reset leaves duplicates that load removes by id.

In memory: the phi vectors (float32), the rewards, a FAISS index (exact `IndexFlatL2` up
to `index_exact_max` entries, HNSW beyond), and each experience's `loo_k` nearest
neighbours (the graph the leave-one-out surprisal of docs/algorithm.md §4 reads). The
lists are kept lazily: a new row gets its own list the first time a read needs it
(`_link_pending`), and older rows learn of the newer ones then (`_refresh`). While the
index is exact the lists are exact too; beyond `index_exact_max` they come from HNSW
searches, as approximate as the index itself.

Opening reads the ids, vectors and rewards of every Parquet segment (a segment's JSON
contexts and actions are read the first time one of its rows is asked for); the index and
the lists come from the snapshot when it matches those rows, with rows added after it (a
crash after some adds) indexed and linked incrementally. The snapshot is rewritten with
every new segment, after a compaction or bulk import, and on close; it is only ever a
cache, so a damaged or mismatched one is logged and rebuilt. A rebuild of at least
`background_rebuild_rows` rows runs in a thread so that the controller is not blocked for
minutes: until it is done, `search` scans every stored vector exactly and `neighbours`
computes the lists it is asked for exactly (0.3-0.4 s for a retrieval's 64 candidates at
1 000 000 rows on one core), so decisions use the whole memory, only slower.

Threads: not thread-safe; one thread (the controller's) calls it. The rebuild thread only
reads vector rows that never change while it runs (compaction and bulk import stop it
first) and fills arrays of its own, which the caller's thread takes over at its next call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sair_ray import memory_snapshot as snapshot
from sair_ray.config import MemoryConfig, RewardConfig
from sair_ray.embedding import PHI_VERSION
from sair_ray.files import private_dir, private_open
from sair_ray.types import Experience

log = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
LINK_BATCH = 256  # rows linked per matrix product (256 x 100 000 float32 = 100 MB)
REBUILD_BATCH = 4096  # rows per step of a rebuild: the granularity of cancelling one
# A load-time rebuild of at least this many rows runs in a thread (module docstring); below
# it the rebuild takes about a second or less on 2 cores and is done in place.
BACKGROUND_REBUILD_ROWS = 20_000
INDEX_COLUMNS = ["id", "phi", "reward"]  # what opening reads of a segment (class _Segment)


class MemoryStoreError(RuntimeError):
    """The memory directory cannot be used (corrupt, wrong dimension, locked)."""


def quarantine_advice(path: Path) -> str:
    """What to do about a corrupt memory: named the same way by the library and the CLI."""
    return (f"Move it aside and start fresh with `sair memory quarantine {path}` "
            "(or `ExperienceMemory.quarantine(path)`).")


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("time", pa.float64()),
        ("app", pa.string()),
        ("phi", pa.list_(pa.float32(), dim)),
        ("context", pa.string()),   # JSON of Context.to_dict()
        ("action", pa.string()),    # JSON of the validated Action
        ("reward", pa.float64()),
        ("latency_ms", pa.float64()),
        ("cost_rate", pa.float64()),
        ("phi_version", pa.int16()),
    ])


def should_store(reward: float, cfg: RewardConfig) -> bool:
    """Positive-only memory (docs/algorithm.md §1, step 2); the `store_all` ablation keeps
    everything."""
    return cfg.store_all or reward > cfg.reward_threshold


def _row(e: Experience) -> dict[str, Any]:
    return {"id": e.id, "time": float(e.time), "app": e.app,
            "phi": [float(x) for x in e.phi], "context": json.dumps(e.context),
            "action": json.dumps(e.action), "reward": float(e.reward),
            "latency_ms": float(e.latency_ms), "cost_rate": float(e.cost_rate),
            "phi_version": PHI_VERSION}


def _experience(r: dict[str, Any]) -> Experience:
    return Experience(id=r["id"], time=r["time"], app=r["app"], phi=r["phi"],
                      context=json.loads(r["context"]), action=json.loads(r["action"]),
                      reward=r["reward"], latency_ms=r["latency_ms"], cost_rate=r["cost_rate"])


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run a one-query FAISS call on one thread: on a small machine, OpenMP workers
    spinning against BLAS threads made a 100 000-row search 5-10x slower (measured)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


_fsync_dir = snapshot.fsync_dir


class _Cancelled(Exception):
    pass


def _new_index(dim: int, exact: bool) -> faiss.Index:
    if exact:
        return faiss.IndexFlatL2(dim)
    index = faiss.IndexHNSWFlat(dim, HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _ranked(rows: np.ndarray, ids: np.ndarray, dist: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest of each row's candidate pairs (row -> id at squared distance): the
    distinct rows, and their lists (-1 / inf padded). Pairs are sorted once by (row,
    distance): no padded matrices, which matters when a few rows have thousands of
    candidates."""
    order = np.lexsort((ids, dist, rows))
    rows, ids, dist = rows[order], ids[order], dist[order]
    uniq, start, count = np.unique(rows, return_index=True, return_counts=True)
    rank = np.arange(len(rows)) - np.repeat(start, count)
    keep = (rank < k) & np.isfinite(dist)
    at = np.repeat(np.arange(len(uniq)), count)[keep]
    nbr = np.full((len(uniq), k), -1, dtype=np.int64)
    nd2 = np.full((len(uniq), k), np.inf, dtype=np.float32)
    nbr[at, rank[keep]] = ids[keep]
    nd2[at, rank[keep]] = dist[keep]
    return uniq, nbr, nd2


def build_graph(x: np.ndarray, exact: bool, loo_k: int, cancel: threading.Event | None = None
                ) -> tuple[faiss.Index, np.ndarray, np.ndarray]:
    """The FAISS index of `x` and each row's `loo_k` nearest other rows, from scratch.

    All-pairs neighbours through FAISS (BLAS-backed, exact for the flat index), in steps of
    REBUILD_BATCH rows; `cancel` set between two steps abandons the build (_Cancelled)."""
    n, dim = x.shape
    index = _new_index(dim, exact)
    nbr = np.full((n, loo_k), -1, dtype=np.int64)
    nd2 = np.full((n, loo_k), np.inf, dtype=np.float32)
    steps = [(lo, min(n, lo + REBUILD_BATCH)) for lo in range(0, n, REBUILD_BATCH)]
    for lo, hi in steps:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        index.add(x[lo:hi])
    for lo, hi in steps:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        dd, ii = index.search(x[lo:hi], min(loo_k + 1, n))
        b_idx, c_idx = np.nonzero((ii != np.arange(lo, hi)[:, None]) & (ii >= 0))
        rows, lists, dists = _ranked(lo + b_idx, ii[b_idx, c_idx], dd[b_idx, c_idx], loo_k)
        nbr[rows], nd2[rows] = lists, dists
    return index, nbr, nd2


class _Rebuild:
    """A load-time rebuild in its own thread. It builds over rows [0, rows) (a view that no
    one writes while it runs), writes their snapshot, and only then publishes `result`, so
    that the caller's thread never shares the index with it."""

    def __init__(self, x: np.ndarray, exact: bool, loo_k: int,
                 save: Callable[[np.ndarray, faiss.Index, np.ndarray, np.ndarray], bool]
                 ) -> None:
        self.rows, self.exact = len(x), exact
        self.cancel = threading.Event()
        self.result: tuple[faiss.Index, np.ndarray, np.ndarray, bool] | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(x, loo_k, save), daemon=True,
                                       name="sair-memory-rebuild")
        self.thread.start()

    def _run(self, x: np.ndarray, loo_k: int,
             save: Callable[[np.ndarray, faiss.Index, np.ndarray, np.ndarray], bool]) -> None:
        try:
            index, nbr, nd2 = build_graph(x, self.exact, loo_k, self.cancel)
            saved = save(x, index, nbr, nd2)  # the next open is fast even if this one crashes
            self.result = (index, nbr, nd2, saved)
        except _Cancelled:
            pass
        except Exception as e:  # reported on the caller's thread, at its next call
            self.error = e

    def stop(self) -> None:
        self.cancel.set()
        self.thread.join()


class _Segment:
    """One Parquet segment. Opening reads only its INDEX_COLUMNS (ids, vectors, rewards);
    the JSON contexts and actions, most of the decoding time (0.6 s instead of 1.5-5 s for
    1 000 000 rows on 2 shared cores) and of the RAM, are read the first time one of its
    rows is asked for, then kept. `keep`: the rows left after dropping duplicates at load."""

    def __init__(self, path: Path, table: pa.Table | None = None,
                 keep: pa.Array | None = None) -> None:
        self.path, self._table, self._keep = path, table, keep

    def table(self) -> pa.Table:
        if self._table is None:
            try:
                t = pq.read_table(self.path)
            except Exception as e:
                raise MemoryStoreError(
                    f"memory segment {self.path} cannot be read ({e}). "
                    f"{quarantine_advice(self.path.parent.parent)}") from None
            self._table = t if self._keep is None else t.take(self._keep)
        return self._table


class _Journal:
    """Append-only JSON lines, each prefixed with the CRC32 of its payload."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._f = private_open(path, "ab")  # kept open for the memory's lifetime

    @staticmethod
    def encode(row: dict[str, Any]) -> bytes:
        payload = json.dumps(row, separators=(",", ":")).encode()
        return b"%08x " % zlib.crc32(payload) + payload + b"\n"

    @staticmethod
    def valid(line: bytes) -> bool:
        if len(line) < 10 or line[8:9] != b" ":
            return False
        try:
            return int(line[:8], 16) == zlib.crc32(line[9:])
        except ValueError:
            return False

    @classmethod
    def read(cls, path: Path) -> tuple[list[dict[str, Any]], int]:
        """Rows and the byte length of the valid prefix; a torn final line is dropped."""
        if not path.exists():
            return [], 0
        *complete, tail = path.read_bytes().split(b"\n")
        rows: list[dict[str, Any]] = []
        good = 0
        for i, line in enumerate(complete):
            if not cls.valid(line):
                if i == len(complete) - 1 and not tail:
                    tail = line  # the final line is garbage: a torn write, not corruption
                    break
                raise MemoryStoreError(
                    f"memory journal {path} is corrupt at line {i + 1} (CRC mismatch before "
                    f"the end, so not a torn write). {quarantine_advice(path.parent)}")
            rows.append(json.loads(line[9:]))
            good += len(line) + 1
        if tail:
            log.warning("memory journal %s: dropping a torn final line (%d bytes)", path,
                        len(tail))
        return rows, good

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(self.encode(row))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def reset(self) -> None:
        """Atomically replace the journal with an empty one."""
        self._f.close()
        tmp = self.path.with_suffix(".tmp")
        with private_open(tmp, "wb"):
            pass
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._f = private_open(self.path, "ab")

    def close(self) -> None:
        self._f.close()


class ExperienceMemory:
    def __init__(self, path: str | Path, dim: int, cfg: MemoryConfig | None = None, *,
                 loo_k: int = 10,
                 background_rebuild_rows: int = BACKGROUND_REBUILD_ROWS) -> None:
        self.path = Path(path)
        self.dim = dim
        self.cfg = cfg or MemoryConfig()
        self.loo_k = loo_k
        self.background_rebuild_rows = background_rebuild_rows
        private_dir(self.path, tighten=True)
        private_dir(self.path / "segments", tighten=True)
        self._lock = private_open(self.path / "LOCK", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise MemoryStoreError(f"memory {self.path} is in use by another process "
                               "(one controller per app)") from None
        self._n = 0
        self._vec = np.zeros((1024, dim), dtype=np.float32)
        self._sq = np.zeros(1024, dtype=np.float32)
        self._rew = np.zeros(1024, dtype=np.float64)
        self._nbr = np.full((1024, self.loo_k), -1, dtype=np.int64)
        self._nd2 = np.full((1024, self.loo_k), np.inf, dtype=np.float32)
        self._ver = np.zeros(1024, dtype=np.int64)  # row i's list is exact over rows < _ver[i]
        self._segments: list[_Segment] = []
        self._seg_ends: list[int] = []
        self._pending: list[dict[str, Any]] = []  # journal rows, oldest first
        self._ids: set[str] = set()
        self._linked = 0  # rows [0, _linked) are in the neighbour graph
        self._index: faiss.Index = faiss.IndexFlatL2(dim)
        self._rebuild: _Rebuild | None = None  # a rebuild in progress (module docstring)
        self._snap_rows: int | None = None     # rows the snapshot on disk covers, if known
        # How this open got its index: "empty", "snapshot", "stale snapshot" (+ rows linked
        # incrementally), "rebuilt" or "rebuilding" (in the background); and why the
        # snapshot was not used, if it was not.
        self.index_source = "empty"
        self.snapshot_problem: str | None = None
        try:
            self._load()
        except BaseException:
            self._lock.close()  # a refused memory must not stay locked by this process
            raise
        self._journal = _Journal(self.path / "journal.jsonl", self.cfg.fsync)

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> None:
        t0 = time.perf_counter()
        tables = [(seg, self._read_index_columns(seg))
                  for seg in sorted((self.path / "segments").glob("seg-*.parquet"))]
        journal = self.path / "journal.jsonl"
        rows, good = _Journal.read(journal)
        if journal.exists() and good < journal.stat().st_size:
            with open(journal, "r+b") as f:
                f.truncate(good)
        # Sized once: growing by doubling copied every array ~20 times at 1 000 000 rows.
        self._grow(sum(t.num_rows for _, t in tables) + len(rows))
        for seg, t in tables:
            ids = t.column("id").to_pylist()
            keep = None
            if not self._ids.isdisjoint(ids):  # duplicates only after a crash (docstring)
                keep = pa.array([i for i, x in enumerate(ids) if x not in self._ids],
                                type=pa.int64())  # [] must stay typed
                t = t.take(keep)
            self._ids.update(ids)
            self._append_rows(t, _Segment(seg, keep=keep))
        fresh = []
        for r in rows:
            if r["id"] in self._ids:
                continue  # already compacted into a segment before a crash
            if len(r["phi"]) != self.dim:
                raise MemoryStoreError(f"memory journal {journal}: phi has {len(r['phi'])} "
                                       f"values, this pipeline needs {self.dim}")
            self._ids.add(r["id"])
            fresh.append(r)
        self._pending = fresh
        if fresh:
            self._grow(self._n + len(fresh))
            for r in fresh:
                self._put(np.asarray(r["phi"], dtype=np.float32), r["reward"])
        self._restore_index()
        if self._n:
            log.info("memory %s: loaded %d experiences in %.2fs (index: %s)", self.path,
                     self._n, time.perf_counter() - t0, self.index_source)

    @property
    def _snapshot_path(self) -> Path:
        return self.path / snapshot.FILENAME

    def _snapshot_key(self, rows: int) -> dict[str, Any]:
        """What the index and lists of `rows` rows depend on, besides the vectors."""
        if rows <= self.cfg.index_exact_max:
            return {"dim": self.dim, "loo_k": self.loo_k, "index": "flat"}
        return {"dim": self.dim, "loo_k": self.loo_k, "index": "hnsw", "hnsw_m": HNSW_M,
                "hnsw_ef_construction": HNSW_EF_CONSTRUCTION, "hnsw_ef_search": HNSW_EF_SEARCH}

    def _restore_index(self) -> None:
        """Index and neighbour lists at open: from the snapshot if it fits, else rebuilt
        (in the background when that is long)."""
        n = self._n
        self._snapshot_path.with_name(f".{snapshot.FILENAME}.tmp").unlink(missing_ok=True)
        if not n:
            self._snapshot_path.unlink(missing_ok=True)
            return
        try:
            snap = snapshot.read(self._snapshot_path, self._snapshot_key(n), self.vectors)
        except snapshot.SnapshotError as e:
            self.snapshot_problem = str(e)
            if self._snapshot_path.exists():
                log.warning("memory %s: index snapshot not used, it %s; rebuilding the index "
                            "from the Parquet rows", self.path, e)
        else:
            self._adopt(snap)
            return
        if n >= self.background_rebuild_rows:
            self.index_source = "rebuilding"
            log.info("memory %s: rebuilding the index of %d rows in the background; exact "
                     "scans answer until it is done", self.path, n)
            self._rebuild = _Rebuild(self.vectors, self.exact, self.loo_k, self._save_built)
            return
        self.index_source = "rebuilt"
        self._rebuild_index()
        self._save_snapshot()

    def _adopt(self, snap: snapshot.Snapshot) -> None:
        """Take over a snapshot of rows [0, m); rows [m, n) join as if just added."""
        n, m = self._n, snap.rows
        if snap.index is None:
            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(self.vectors)
        else:
            self._index = snap.index
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
            if n > m:
                self._index.add(self._vec[m:n])
        self._nbr[:m], self._nd2[:m], self._ver[:m] = snap.nbr, snap.nd2, snap.ver
        self._linked = m  # the next read links rows [m, n), as after `add`
        self._snap_rows = m
        self.index_source = "snapshot" if m == n else "stale snapshot"
        if m < n:
            log.info("memory %s: index snapshot covers %d of %d rows; the other %d are "
                     "indexed incrementally", self.path, m, n, n - m)

    def _save_built(self, x: np.ndarray, index: faiss.Index, nbr: np.ndarray,
                    nd2: np.ndarray) -> bool:
        """The rebuild thread's snapshot of what it built (it touches nothing of self's)."""
        n = len(x)
        return self._write_snapshot(n, x, nbr, nd2, np.full(n, n, dtype=np.int64),
                                    None if n <= self.cfg.index_exact_max else index)

    def _write_snapshot(self, n: int, x: np.ndarray, nbr: np.ndarray, nd2: np.ndarray,
                        ver: np.ndarray, index: faiss.Index | None) -> bool:
        t0 = time.perf_counter()
        try:
            size = snapshot.write(self._snapshot_path, self._snapshot_key(n), x, nbr, nd2,
                                  ver, index, fsync=self.cfg.fsync)
        except (OSError, RuntimeError, MemoryError) as e:
            # disk full, ...: the snapshot is a cache, only the next open gets slower
            log.warning("memory %s: index snapshot not written (%r); the next open will "
                        "rebuild", self.path, e)
            return False
        log.debug("memory %s: index snapshot of %d rows, %.1f MB, in %.2f s", self.path, n,
                  size / 1e6, time.perf_counter() - t0)
        return True

    def _save_snapshot(self) -> None:
        """Bring the snapshot up to date with every row (a no-op if it is)."""
        if self._rebuild is not None or self._snap_rows == self._n:
            return  # a rebuilding memory's thread writes its own
        n = self._n
        if not n:
            self._snapshot_path.unlink(missing_ok=True)
            self._snap_rows = 0
            return
        self._link_pending()
        ok = self._write_snapshot(n, self.vectors, self._nbr[:n], self._nd2[:n],
                                  self._ver[:n], None if self.exact else self._index)
        self._snap_rows = n if ok else None

    def _settle(self, wait: bool = False) -> None:
        """Take over a background rebuild if it is done (or, with `wait`, once it is)."""
        r = self._rebuild
        if r is None or (r.thread.is_alive() and not wait):
            return
        r.thread.join()
        self._rebuild = None
        if r.result is None:
            log.error("memory %s: background index rebuild failed (%r); rebuilding in place",
                      self.path, r.error)
            self._rebuild_index()
            self.index_source = "rebuilt"
            self._save_snapshot()
        else:
            self._take_over(r)

    def _take_over(self, r: _Rebuild) -> None:
        assert r.result is not None
        index, nbr, nd2, saved = r.result
        n0, n = r.rows, self._n
        if r.exact != self.exact:  # crossed index_exact_max meanwhile: what `add` does there
            self._rebuild_index()
        else:
            self._index = index
            if n > n0:
                self._index.add(self._vec[n0:n])
            self._nbr[:n0], self._nd2[:n0], self._ver[:n0] = nbr, nd2, n0
            self._linked = n0  # the next read links rows [n0, n), as after `add`
        self._snap_rows = n0 if saved else None
        self.index_source = "rebuilt"
        log.info("memory %s: background index rebuild of %d rows done", self.path, n0)

    def _stop_rebuild(self) -> bool:
        """Abandon a rebuild in progress, True if there was one: the caller rebuilds or
        closes. One that is already done is taken over (cheap), one that failed dropped."""
        r = self._rebuild
        if r is None:
            return False
        r.stop()
        self._rebuild = None
        if r.result is None:
            return True
        self._take_over(r)
        return False

    @property
    def ready(self) -> bool:
        """False while the index is rebuilt in the background (module docstring)."""
        self._settle()
        return self._rebuild is None

    def wait_ready(self) -> None:
        """Block until a background rebuild is done and taken over."""
        self._settle(wait=True)

    def _read_index_columns(self, seg: Path) -> pa.Table:
        try:
            f = pq.ParquetFile(seg)
        except Exception as e:
            raise MemoryStoreError(f"memory segment {seg} cannot be read ({e}). "
                                   f"{quarantine_advice(self.path)}") from None
        with f:
            self._check_schema(f.schema_arrow, seg)
            try:
                return f.read(columns=INDEX_COLUMNS)
            except Exception as e:
                raise MemoryStoreError(f"memory segment {seg} cannot be read ({e}). "
                                       f"{quarantine_advice(self.path)}") from None

    def _check_schema(self, got: pa.Schema, where: Path) -> None:
        want = schema(self.dim)
        if got.remove_metadata() != want:
            phi = got.field("phi").type if "phi" in got.names else "no phi column"
            raise MemoryStoreError(f"memory segment {where} has schema with phi {phi}; this "
                               f"pipeline needs phi of {self.dim} floats ({want.field('phi')})")

    def _append_rows(self, t: pa.Table, seg: _Segment) -> None:
        """The vectors and rewards of segment `seg`'s rows `t` (INDEX_COLUMNS at least)."""
        if not t.num_rows:
            return
        phi = np.asarray(t.column("phi").combine_chunks().flatten(), dtype=np.float32)
        phi = phi.reshape(-1, self.dim)
        self._grow(self._n + t.num_rows)
        n0 = self._n
        self._vec[n0:n0 + t.num_rows] = phi
        self._sq[n0:n0 + t.num_rows] = np.einsum("ij,ij->i", phi, phi)
        self._rew[n0:n0 + t.num_rows] = t.column("reward").to_numpy()
        self._n += t.num_rows
        self._segments.append(seg)
        self._seg_ends.append(self._n)

    def _put(self, phi: np.ndarray, reward: float) -> None:
        self._vec[self._n] = phi
        self._sq[self._n] = float(phi @ phi)
        self._rew[self._n] = reward
        self._n += 1

    def _grow(self, need: int) -> None:
        cap = len(self._vec)
        if need <= cap:
            return
        while cap < need:
            cap *= 2

        def grown(a: np.ndarray, fill: float) -> np.ndarray:
            b = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
            b[: len(a)] = a
            return b

        self._vec, self._sq, self._rew = grown(self._vec, 0), grown(self._sq, 0), grown(
            self._rew, 0)
        self._nbr, self._nd2 = grown(self._nbr, -1), grown(self._nd2, np.inf)
        self._ver = grown(self._ver, 0)

    @property
    def exact(self) -> bool:
        return self._n <= self.cfg.index_exact_max

    def _rebuild_index(self) -> None:
        """FAISS index and neighbour graph from the stored vectors (load, HNSW switch,
        compaction); the batched linking of `_link_pending` is for the few rows added
        between reads."""
        n = self._n
        self._index, self._nbr[:n], self._nd2[:n] = build_graph(self.vectors, self.exact,
                                                               self.loo_k)
        self._ver[:n] = n
        self._linked = n

    # -- adding --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __contains__(self, exp_id: str) -> bool:
        return exp_id in self._ids

    def remember(self, exp: Experience, cfg: RewardConfig) -> bool:
        """Store `exp` if the positive-only filter lets it in. True if stored."""
        if not should_store(exp.reward, cfg):
            return False
        self.add(exp)
        return True

    def add(self, exp: Experience) -> None:
        """Store one experience; durable when this returns (see the module docstring)."""
        if exp.id in self._ids:
            raise ValueError(f"experience {exp.id!r} is already in memory")
        phi = np.asarray(exp.phi, dtype=np.float32)
        if phi.shape != (self.dim,) or not np.all(np.isfinite(phi)):
            raise ValueError(f"experience {exp.id!r}: phi must be {self.dim} finite floats")
        self._settle()
        row = _row(exp)
        self._journal.append(row)
        self._ids.add(exp.id)
        self._pending.append(row)
        self._grow(self._n + 1)
        self._put(phi, exp.reward)
        if self._rebuild is not None:
            pass  # taking the rebuild over indexes the rows added meanwhile
        elif self._n == self.cfg.index_exact_max + 1:
            log.info("memory %s: %d entries, switching FAISS to HNSW", self.path, self._n)
            self._rebuild_index()
        else:
            self._index.add(phi[None, :])
        if len(self._pending) >= self.cfg.segment_rows:
            self.flush_segment()

    def add_many(self, exps: Sequence[Experience]) -> None:
        """Bulk import (migration, benchmarks): one new segment, then one index rebuild."""
        if not exps:
            return
        seen = set()
        for e in exps:
            if e.id in self._ids or e.id in seen:
                raise ValueError(f"experience {e.id!r} is already in memory")
            seen.add(e.id)
        t = pa.Table.from_pylist([_row(e) for e in exps], schema=schema(self.dim))
        if not np.all(np.isfinite(np.asarray(t.column("phi").combine_chunks().flatten()))):
            raise ValueError("add_many: every phi must be finite")
        self._stop_rebuild()  # the rebuild below replaces it
        self._flush_journal()
        final = self._write_segment(t)
        self._ids |= seen
        self._append_rows(t, _Segment(final, table=t))
        self._rebuild_index()
        self._snap_rows = None
        self._save_snapshot()

    def _link_pending(self) -> None:
        """Give rows added since the last read their own neighbour lists, in batches.

        A new row's list is exact over the rows before it (FAISS brute-force k-NN, BLAS
        backed). Older rows learn about newer ones lazily, in `_refresh`, when a query
        reads their list: an insertion then costs one k-NN search instead of a pass that
        updates every list it would enter.
        """
        n, k = self._n, self.loo_k
        for lo in range(self._linked, n, LINK_BATCH):
            hi = min(n, lo + LINK_BATCH)
            new = self._vec[lo:hi]
            kk = min(k + 1, hi)
            if self.exact:
                dd, ii = faiss.knn(new, self._vec[:hi], kk)
            else:  # HNSW restricted to rows before the batch's end
                dd, ii = self._index.search(new, kk, params=self._upto(hi))
            b_idx, c_idx = np.nonzero((ii != np.arange(lo, hi)[:, None]) & (ii >= 0))
            self._set_lists(lo + b_idx, ii[b_idx, c_idx], dd[b_idx, c_idx])
            self._ver[lo:hi] = hi
            if not self.exact:
                # Beyond the exact limit, older lists learn only from the rows found here:
                # as approximate as HNSW itself, and no refresh pass over the whole memory.
                rows, dist = ii[b_idx, c_idx], dd[b_idx, c_idx]
                old = (rows < lo) & (dist < self._nd2[rows, k - 1])
                if old.any():
                    self._merge(rows[old], (lo + b_idx)[old], dist[old])
                self._ver[:hi] = np.maximum(self._ver[:hi], hi)
        self._linked = n

    def _refresh(self, rows: np.ndarray) -> None:
        """Bring the lists of `rows` up to date with every row added after them (exact)."""
        n, k = self._n, self.loo_k
        stale = rows[self._ver[rows] < n]
        if not len(stale):
            return
        start = int(self._ver[stale].min())
        q = self._vec[stale]
        d2 = self._sq[stale, None] + self._sq[None, start:n] - 2.0 * (q @ self._vec[start:n].T)
        cols = np.arange(start, n)
        hit = (d2 < self._nd2[stale, k - 1][:, None]) & (cols[None, :] >= self._ver[stale, None])
        hit &= cols[None, :] != stale[:, None]
        r_idx, c_idx = np.nonzero(hit)
        if len(r_idx):
            self._merge(stale[r_idx], cols[c_idx], np.maximum(d2[r_idx, c_idx], 0))
        self._ver[stale] = n

    def _upto(self, hi: int) -> faiss.SearchParameters:
        sel = faiss.IDSelectorRange(0, hi)
        # faiss's stubs give SearchParameters no keyword constructor (the SWIG wrapper
        # accepts one) and omit SearchParametersHNSW.
        if self.exact:
            return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
        return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            sel=sel, efSearch=HNSW_EF_SEARCH)

    def _merge(self, rows: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> None:
        """Merge candidate pairs (row -> id at squared distance) into the rows' lists."""
        uniq = np.unique(rows)
        valid = self._nbr[uniq] >= 0
        old_rows = np.repeat(uniq, valid.sum(axis=1))
        self._set_lists(np.concatenate([old_rows, rows]),
                        np.concatenate([self._nbr[uniq][valid], ids]),
                        np.concatenate([self._nd2[uniq][valid], dist]))

    def _set_lists(self, rows: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> None:
        """Each row's list becomes the k nearest of its candidate pairs (rows not named
        keep theirs)."""
        uniq, nbr, nd2 = _ranked(rows, ids, dist, self.loo_k)
        self._nbr[uniq], self._nd2[uniq] = nbr, nd2

    def flush_segment(self) -> None:
        """Compact the journal into a new immutable Parquet segment, and bring the index
        snapshot up to date (measured in docs/benchmarks.md: the segment is the cheap part
        at 1 000 000 rows)."""
        self._settle()
        self._flush_journal()
        self._save_snapshot()

    def _flush_journal(self) -> None:
        if not self._pending:
            return
        t = pa.Table.from_pylist(self._pending, schema=schema(self.dim))
        final = self._write_segment(t)
        self._journal.reset()
        n0 = self._n - len(self._pending)
        self._segments.append(_Segment(final, table=t))
        self._seg_ends.append(n0 + t.num_rows)
        self._pending = []

    def _write_segment(self, t: pa.Table) -> Path:
        seg_dir = self.path / "segments"
        # Numbered after the highest existing one, so that file order stays row order
        # after a compaction too (the snapshot covers rows in that order).
        nums = [int(p.name[4:-8]) for p in seg_dir.glob("seg-*.parquet")
                if p.name[4:-8].isdigit()]
        num = max(nums, default=0) + 1
        final = seg_dir / f"seg-{num:08d}.parquet"
        tmp = seg_dir / f".{final.name}.tmp"
        with private_open(tmp, "wb") as f:
            pq.write_table(t, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(seg_dir)
        return final

    def compact(self, keep: np.ndarray) -> int:
        """Rewrite the memory as rows `keep` only (eviction); returns how many were dropped.

        Crash-safe by ordering: the kept rows go to a new segment (temp file, fsync,
        rename) before the old segments are deleted. A crash in between leaves old and new
        segments side by side; load drops duplicate ids, so nothing acknowledged is lost
        (the eviction is merely undone). Rebuilds the index and neighbour graph: O(n)."""
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        if len(keep) and (keep[0] < 0 or keep[-1] >= self._n):
            raise IndexError(f"compact: rows must be in [0, {self._n})")
        self._stop_rebuild()
        self._flush_journal()
        seg_dir = self.path / "segments"
        old = sorted(seg_dir.glob("seg-*.parquet"))
        kept = self.table().take(pa.array(keep))
        final = self._write_segment(kept) if kept.num_rows else None
        for f in old:
            f.unlink()
        _fsync_dir(seg_dir)
        dropped = self._n - kept.num_rows
        self._n, self._segments, self._seg_ends, self._linked = 0, [], [], 0
        self._ids = set(kept.column("id").to_pylist())
        if final is not None:
            self._append_rows(kept, _Segment(final, table=kept))
        self._rebuild_index()
        # Until this is written, the old snapshot no longer matches the rows: an open after
        # a crash here sees that (vectors checksum) and rebuilds.
        self._snap_rows = None
        self._save_snapshot()
        return dropped

    def table(self) -> pa.Table:
        """Every stored experience as one Arrow table, in row order."""
        parts = [seg.table() for seg in self._segments]
        if self._pending:
            parts.append(pa.Table.from_pylist(self._pending, schema=schema(self.dim)))
        return pa.concat_tables(parts) if parts else \
            pa.Table.from_pylist([], schema=schema(self.dim))

    # -- reading -------------------------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        return self._vec[: self._n]

    @property
    def rewards(self) -> np.ndarray:
        return self._rew[: self._n]

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and row indices of the k nearest stored vectors."""
        k = min(k, self._n)
        if k == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        self._settle()
        q = np.asarray(q, dtype=np.float32)[None, :]
        with _single_threaded():
            if self._rebuild is not None:  # no index yet: an exact scan (~10 ms at 1M rows)
                d2, idx = faiss.knn(q, self.vectors, k)
            else:
                d2, idx = self._index.search(q, k)
        keep = idx[0] >= 0
        return d2[0][keep], idx[0][keep]

    def neighbours(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `loo_k` nearest other rows (-1 padded) and their squared distances."""
        self._settle()
        if self._rebuild is not None:
            return self._scanned_lists(np.asarray(rows, dtype=np.int64))
        self._link_pending()
        if self.exact:
            self._refresh(np.unique(np.asarray(rows, dtype=np.int64)))
        return self._nbr[rows], self._nd2[rows]

    def _scanned_lists(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lists of `rows` by an exact scan of every stored vector, while the graph is
        rebuilt: what a full rebuild gives while the index is exact, better than it beyond
        (0.3-0.4 s for 64 rows at 1 000 000 on one core)."""
        n, k = self._n, self.loo_k
        uniq = np.unique(rows)
        nbr = np.full((len(uniq), k), -1, dtype=np.int64)
        nd2 = np.full((len(uniq), k), np.inf, dtype=np.float32)
        if len(uniq) and n > 1:
            with _single_threaded():
                dd, ii = faiss.knn(self._vec[uniq], self.vectors, min(k + 1, n))
            b_idx, c_idx = np.nonzero((ii != uniq[:, None]) & (ii >= 0))
            at, lists, dists = _ranked(b_idx, ii[b_idx, c_idx], dd[b_idx, c_idx], k)
            nbr[at], nd2[at] = lists, dists
        pos = np.searchsorted(uniq, rows)
        return nbr[pos], nd2[pos]

    def get(self, row: int) -> Experience:
        if not 0 <= row < self._n:
            raise IndexError(row)
        seg_start = 0
        for seg, end in zip(self._segments, self._seg_ends, strict=True):
            if row < end:
                return _experience(seg.table().slice(row - seg_start, 1).to_pylist()[0])
            seg_start = end
        return _experience(self._pending[row - seg_start])

    def iter_experiences(self) -> Iterable[Experience]:
        for row in range(self._n):
            yield self.get(row)

    def close(self) -> None:
        """Stop a rebuild in progress, bring the snapshot up to date, release the memory."""
        try:
            if not self._stop_rebuild():  # else there is no index to save
                self._save_snapshot()
        finally:
            self._journal.close()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> ExperienceMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def stored_dim(path: str | Path) -> int | None:
        """The phi dimension a memory directory was written with (None if it is empty)."""
        p = Path(path)
        for seg in sorted((p / "segments").glob("seg-*.parquet")):
            try:  # a corrupt segment is refused with advice here too, not a pyarrow traceback
                typ = pq.read_schema(seg).field("phi").type
            except Exception as e:
                raise MemoryStoreError(f"memory segment {seg} cannot be read ({e}). "
                                       f"{quarantine_advice(p)}") from None
            return int(typ.list_size)
        rows, _ = _Journal.read(p / "journal.jsonl")
        return len(rows[0]["phi"]) if rows else None

    @staticmethod
    def quarantine(path: str | Path) -> Path:
        """Move a (corrupt) memory directory aside, keeping it for inspection."""
        src = Path(path)
        dst = src.with_name(f"{src.name}.quarantined-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(src, dst)
        return dst

