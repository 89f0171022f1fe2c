"""Experience memory (SPEC 4): an Arrow table on disk as Parquet, a FAISS index in memory.

On-disk layout of one app's memory directory::

    segments/seg-00000001.parquet   immutable Parquet segments, each written to a temporary
    segments/seg-00000002.parquet   file, fsync'ed and renamed into place (never torn)
    journal.jsonl                   experiences acknowledged since the last segment, one
                                    CRC-checked JSON line each
    LOCK                            flock'ed by the one process that writes this memory

Durability: `add` returns only after the journal line is written and flushed to the OS
(and fsync'ed when `memory.fsync` is true, the default), so an acknowledged experience
survives a crash of the process (and, with fsync, of the machine). A torn final journal
line, the only thing a crash mid-write can leave, fails its CRC and is dropped on load;
earlier lines and all segments are untouched. Every `segment_rows` journal lines are
compacted into a new segment; a crash between the segment's rename and the journal's
reset leaves duplicates that load removes by id.

In memory: the phi vectors (float32), the rewards, a FAISS index (exact `IndexFlatL2` up
to `index_exact_max` entries, HNSW beyond), and each experience's `loo_k` nearest
neighbours (the graph the leave-one-out surprisal of SPEC 4 reads). While the index is
exact the neighbour lists are exact too: an insertion computes its distance to every
stored vector and updates every list it enters. Beyond `index_exact_max` they are
maintained from HNSW searches, as approximate as the index itself.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sair_ray.config import MemoryConfig, RewardConfig
from sair_ray.embedding import PHI_VERSION
from sair_ray.types import Experience

log = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
LINK_BATCH = 256  # rows linked per matrix product (256 x 100 000 float32 = 100 MB)


class MemoryStoreError(RuntimeError):
    """The memory directory cannot be used (corrupt, wrong dimension, locked)."""


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
    """Positive-only memory (SPEC 1 step 2); the `store_all` ablation keeps everything."""
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Journal:
    """Append-only JSON lines, each prefixed with the CRC32 of its payload."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._f = open(path, "ab")  # noqa: SIM115 - kept open for the memory's lifetime

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
                    "the end, so not a torn write). Move the memory aside with "
                    "`ExperienceMemory.quarantine(path)` to start fresh.")
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
        tmp.write_bytes(b"")
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._f = open(self.path, "ab")  # noqa: SIM115

    def truncate(self, length: int) -> None:
        self._f.truncate(length)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


class ExperienceMemory:
    def __init__(self, path: str | Path, dim: int, cfg: MemoryConfig | None = None, *,
                 loo_k: int = 10) -> None:
        self.path = Path(path)
        self.dim = dim
        self.cfg = cfg or MemoryConfig()
        self.loo_k = loo_k
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "segments").mkdir(exist_ok=True)
        self._lock = open(self.path / "LOCK", "w")  # noqa: SIM115
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
        self._segments: list[pa.Table] = []
        self._seg_ends: list[int] = []
        self._pending: list[dict[str, Any]] = []  # journal rows, oldest first
        self._ids: set[str] = set()
        self._linked = 0  # rows [0, _linked) are in the neighbour graph
        self._index: faiss.Index = faiss.IndexFlatL2(dim)
        self._load()
        self._journal = _Journal(self.path / "journal.jsonl", self.cfg.fsync)

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> None:
        t0 = time.perf_counter()
        tables = []
        for seg in sorted((self.path / "segments").glob("seg-*.parquet")):
            try:
                t = pq.read_table(seg)
            except Exception as e:
                raise MemoryStoreError(
                    f"memory segment {seg} cannot be read ({e}). Move the memory aside with "
                    "`ExperienceMemory.quarantine(path)` to start fresh.") from None
            self._check_schema(t, seg)
            tables.append(t)
        journal = self.path / "journal.jsonl"
        rows, good = _Journal.read(journal)
        if journal.exists() and good < journal.stat().st_size:
            with open(journal, "r+b") as f:
                f.truncate(good)
        for t in tables:
            ids = t.column("id").to_pylist()
            keep = [i for i, x in enumerate(ids) if x not in self._ids]
            if len(keep) < len(ids):
                t = t.take(keep)
            self._ids.update(ids)
            self._append_table(t)
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
        self._rebuild_index()
        if self._n:
            log.info("memory %s: loaded %d experiences in %.2fs", self.path, self._n,
                     time.perf_counter() - t0)

    def _check_schema(self, t: pa.Table, where: Path) -> None:
        want = schema(self.dim)
        if t.schema.remove_metadata() != want:
            got = t.schema.field("phi").type if "phi" in t.schema.names else "no phi column"
            raise MemoryStoreError(f"memory segment {where} has schema with phi {got}; this "
                               f"pipeline needs phi of {self.dim} floats ({want.field('phi')})")

    def _append_table(self, t: pa.Table) -> None:
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
        self._segments.append(t)
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

    @property
    def exact(self) -> bool:
        return self._n <= self.cfg.index_exact_max

    def _rebuild_index(self) -> None:
        """FAISS index and neighbour graph from the stored vectors (load, HNSW switch)."""
        n, x = self._n, self._vec[: self._n]
        if self.exact:
            self._index = faiss.IndexFlatL2(self.dim)
        else:
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_M)
            self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
        if n:
            self._index.add(x)
        self._nbr[:n], self._nd2[:n] = -1, np.inf
        # All-pairs neighbours through FAISS (BLAS-backed, exact for the flat index); the
        # batched linking of `_link_pending` is for the few rows added between reads.
        for lo in range(0, n, 16384):
            hi = min(n, lo + 16384)
            dd, ii = self._index.search(x[lo:hi], min(self.loo_k + 1, n))
            skip = (ii == np.arange(lo, hi)[:, None]) | (ii < 0)
            self._keep_nearest(np.arange(lo, hi), np.where(skip, 0, ii),
                               np.where(skip, np.inf, dd), replace_=True)
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
        row = _row(exp)
        self._journal.append(row)
        self._ids.add(exp.id)
        self._pending.append(row)
        self._grow(self._n + 1)
        self._put(phi, exp.reward)
        if self._n == self.cfg.index_exact_max + 1:
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
        self.flush_segment()
        seen = set()
        for e in exps:
            if e.id in self._ids or e.id in seen:
                raise ValueError(f"experience {e.id!r} is already in memory")
            seen.add(e.id)
        t = pa.Table.from_pylist([_row(e) for e in exps], schema=schema(self.dim))
        if not np.all(np.isfinite(np.asarray(t.column("phi").combine_chunks().flatten()))):
            raise ValueError("add_many: every phi must be finite")
        self._write_segment(t)
        self._ids |= seen
        self._append_table(t)
        self._rebuild_index()

    def _link_pending(self) -> None:
        """Bring rows added since the last call into the neighbour graph, in batches.

        Linking is deferred to the next read of the graph so that bursts of adds share
        one matrix product per batch instead of one pass over the memory per add.
        """
        n, k = self._n, self.loo_k
        for lo in range(self._linked, n, LINK_BATCH):
            hi = min(n, lo + LINK_BATCH)
            rows = np.arange(lo, hi)
            if self.exact:
                self._link_exact(lo, hi)
                continue
            # HNSW: the batch's own lists from a search restricted to rows before the
            # batch's end (later batches reach this one through their reverse update, so no
            # pair enters twice); reverse update only for the rows found, as approximate
            # as HNSW itself.
            dd, ii = self._index.search(self._vec[lo:hi], min(k + 1, hi), params=self._upto(hi))
            skip = (ii == rows[:, None]) | (ii < 0)
            self._keep_nearest(rows, np.where(skip, 0, ii), np.where(skip, np.inf, dd),
                               replace_=True)
            found = (~skip) & (ii < lo)
            found &= dd < self._nd2[np.where(found, ii, 0), k - 1]
            b_idx, c_idx = np.nonzero(found)
            if len(b_idx):
                self._merge(ii[b_idx, c_idx], lo + b_idx, dd[b_idx, c_idx])
        self._linked = n

    def _link_exact(self, lo: int, hi: int) -> None:
        """Exact lists for rows [lo, hi) among rows [0, hi), and the reverse update.

        One float32 matrix product gives the batch's squared distances to every earlier
        row. Instead of a top-k over each whole row, candidates are pruned with a
        triangle-inequality bound: with y the nearest already-linked row and r_y its k-th
        neighbour distance, y and its k neighbours all lie within d(x, y) + r_y of x, so
        x's k-th neighbour does too.
        """
        k, new = self.loo_k, self._vec[lo:hi]
        d2 = self._sq[lo:hi, None] + self._sq[None, :hi] - 2.0 * (new @ self._vec[:hi].T)
        np.maximum(d2, 0, out=d2)
        d2[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
        bound = np.full(hi - lo, np.inf, dtype=np.float32)
        if lo:
            y = np.argmin(d2[:, :lo], axis=1)
            r_y = self._nd2[y, k - 1]
            bound = (np.sqrt(d2[np.arange(hi - lo), y]) + np.sqrt(r_y)) ** 2 * (1 + 1e-5)
        b_idx, c_idx = np.nonzero(d2 <= bound[:, None])
        self._nbr[lo:hi], self._nd2[lo:hi] = -1, np.inf
        self._merge(lo + b_idx, c_idx, d2[b_idx, c_idx])
        if lo:
            b_idx, rows = np.nonzero(d2[:, :lo] < self._nd2[None, :lo, k - 1])
            if len(b_idx):
                self._merge(rows, lo + b_idx, d2[b_idx, rows])

    def _upto(self, hi: int) -> faiss.SearchParameters:
        sel = faiss.IDSelectorRange(0, hi)
        if self.exact:
            return faiss.SearchParameters(sel=sel)
        return faiss.SearchParametersHNSW(sel=sel, efSearch=HNSW_EF_SEARCH)

    def _merge(self, rows: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> None:
        """Merge candidate (row -> id at distance) pairs into the rows' lists."""
        order = np.argsort(rows, kind="stable")
        rows, ids, dist = rows[order], ids[order], dist[order]
        uniq, start, count = np.unique(rows, return_index=True, return_counts=True)
        pos = np.arange(len(rows)) - np.repeat(start, count)
        slot = np.repeat(np.arange(len(uniq)), count)
        ci = np.full((len(uniq), int(count.max())), -1, dtype=np.int64)
        cd = np.full((len(uniq), int(count.max())), np.inf, dtype=np.float32)
        ci[slot, pos], cd[slot, pos] = ids, dist
        self._keep_nearest(uniq, ci, cd, replace_=False)

    def _keep_nearest(self, rows: np.ndarray, cand: np.ndarray, d2: np.ndarray, *,
                      replace_: bool) -> None:
        """Set (or merge into) each row's list the k nearest of its candidates."""
        k = self.loo_k
        if not replace_:
            cand = np.concatenate([self._nbr[rows], cand], axis=1)
            d2 = np.concatenate([self._nd2[rows], d2], axis=1)
        if d2.shape[1] > k:
            part = np.argpartition(d2, k - 1, axis=1)[:, :k]
            d2, cand = np.take_along_axis(d2, part, 1), np.take_along_axis(cand, part, 1)
        order = np.argsort(d2, axis=1, kind="stable")
        d2, cand = np.take_along_axis(d2, order, 1), np.take_along_axis(cand, order, 1)
        cand = np.where(np.isfinite(d2), cand, -1)
        width = cand.shape[1]
        self._nbr[rows, :width], self._nd2[rows, :width] = cand, d2
        if width < k:
            self._nbr[rows, width:], self._nd2[rows, width:] = -1, np.inf

    def flush_segment(self) -> None:
        """Compact the journal into a new immutable Parquet segment."""
        if not self._pending:
            return
        t = pa.Table.from_pylist(self._pending, schema=schema(self.dim))
        self._write_segment(t)
        self._journal.reset()
        n0 = self._n - len(self._pending)
        self._segments.append(t)
        self._seg_ends.append(n0 + t.num_rows)
        self._pending = []

    def _write_segment(self, t: pa.Table) -> None:
        seg_dir = self.path / "segments"
        num = len(list(seg_dir.glob("seg-*.parquet"))) + 1
        final = seg_dir / f"seg-{num:08d}.parquet"
        while final.exists():
            num += 1
            final = seg_dir / f"seg-{num:08d}.parquet"
        tmp = seg_dir / f".{final.name}.tmp"
        pq.write_table(t, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(seg_dir)

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
        d2, idx = self._index.search(np.asarray(q, dtype=np.float32)[None, :], k)
        keep = idx[0] >= 0
        return d2[0][keep], idx[0][keep]

    def neighbours(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `loo_k` nearest other rows (-1 padded) and their squared distances."""
        self._link_pending()
        return self._nbr[rows], self._nd2[rows]

    def get(self, row: int) -> Experience:
        if not 0 <= row < self._n:
            raise IndexError(row)
        seg_start = 0
        for t, end in zip(self._segments, self._seg_ends, strict=True):
            if row < end:
                return _experience(t.slice(row - seg_start, 1).to_pylist()[0])
            seg_start = end
        return _experience(self._pending[row - seg_start])

    def iter_experiences(self) -> Iterable[Experience]:
        for row in range(self._n):
            yield self.get(row)

    def close(self) -> None:
        self._journal.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> ExperienceMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def quarantine(path: str | Path) -> Path:
        """Move a (corrupt) memory directory aside, keeping it for inspection."""
        src = Path(path)
        dst = src.with_name(f"{src.name}.quarantined-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(src, dst)
        return dst

