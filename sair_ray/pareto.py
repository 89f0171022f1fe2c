"""Incremental 2-D Pareto frontiers for (latency, cost), both minimised (docs/algorithm.md §3).

A frontier is kept sorted by latency ascending, which makes cost strictly descending.
Dominance of a new point is one binary search; its exact hypervolume contribution only
touches the points it dominates plus its left neighbour, so an update is
O(log n + removed) and a full frontier is never re-scanned except for the weighted
distance of a dominated point (one vectorised pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

REF = 1.0  # reference point (1, 1) of the normalised objective space


@dataclass(frozen=True)
class ParetoVerdict:
    dominated: bool
    hv_contribution: float  # exact HV(F + {z}) - HV(F); 0 when dominated
    distance: float         # weighted distance to the nearest frontier point; 0 when not


class ParetoFrontier:
    """The non-dominated set of 2-D points in [0, 1]^2 (minimisation, reference (1, 1))."""

    def __init__(self) -> None:
        self._x = np.empty(0, dtype=np.float64)
        self._y = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._x)

    @property
    def points(self) -> np.ndarray:
        return np.column_stack([self._x, self._y])

    def hypervolume(self) -> float:
        if not len(self._x):
            return 0.0
        right = np.append(self._x[1:], REF)
        return float(np.sum((right - self._x) * (REF - self._y)))

    def _left_index(self, x: float) -> int:
        """Index of the point with the largest x' <= x (the lowest cost among x' <= x)."""
        return int(np.searchsorted(self._x, x, side="right")) - 1

    def evaluate(self, x: float, y: float, w_l: float, w_c: float) -> ParetoVerdict:
        """Classify z = (x, y) against the frontier without changing it."""
        i = self._left_index(x)
        if i >= 0 and self._y[i] <= y and not (self._x[i] == x and self._y[i] == y):
            dx = self._x - x
            dy = self._y - y
            d = np.sqrt(w_l * dx * dx + w_c * dy * dy)
            return ParetoVerdict(True, 0.0, float(min(1.0, d.min())))
        return ParetoVerdict(False, self._contribution(x, y, i), 0.0)

    def _dominated_run(self, x: float, y: float, left: int) -> tuple[int, int]:
        """[lo, hi): the frontier points a non-dominated z = (x, y) dominates (x' >= x and
        y' >= y). Points before the run have y' > y; the first point after it has y' < y."""
        lo = left if left >= 0 and self._x[left] == x else left + 1
        hi = int(np.searchsorted(-self._y, -y, side="right"))  # first index with y' < y
        return lo, max(hi, lo)

    def _contribution(self, x: float, y: float, left: int) -> float:
        lo, hi = self._dominated_run(x, y, left)
        right_x = self._x[hi] if hi < len(self._x) else REF
        before = 0.0
        start = lo - 1 if lo >= 1 else None
        if start is not None:  # the left neighbour's strip ends at the first removed point
            nxt = self._x[lo] if lo < len(self._x) else REF
            before += (nxt - self._x[start]) * (REF - self._y[start])
        for j in range(lo, hi):
            nxt = self._x[j + 1] if j + 1 < len(self._x) else REF
            before += (nxt - self._x[j]) * (REF - self._y[j])
        after = (right_x - x) * (REF - y)
        if start is not None:
            after += (x - self._x[start]) * (REF - self._y[start])
        return float(min(1.0, max(0.0, after - before)))

    def add(self, x: float, y: float) -> bool:
        """Insert z if it is non-dominated, dropping what it dominates. True if inserted."""
        i = self._left_index(x)
        if i >= 0 and self._y[i] <= y:
            return False  # dominated, or already on the frontier
        lo, hi = self._dominated_run(x, y, i)
        self._x = np.concatenate([self._x[:lo], [x], self._x[hi:]])
        self._y = np.concatenate([self._y[:lo], [y], self._y[hi:]])
        return True

    def to_list(self) -> list[list[float]]:
        return self.points.tolist()

    @classmethod
    def from_list(cls, pts: list[list[float]]) -> ParetoFrontier:
        f = cls()
        for x, y in pts:
            f.add(float(x), float(y))
        return f


class BucketedFrontiers:
    """One frontier per arrival-rate bucket b = floor(log(lambda) / log(base)) (§3).

    Quiet-hour outcomes would otherwise dominate every busy-hour one. With `global_=True`
    all outcomes share a single frontier (the paper's literal reading).
    """

    def __init__(self, base: float = 1.25, global_: bool = False) -> None:
        self.base = base
        self.global_ = global_
        self._fronts: dict[int, ParetoFrontier] = {}

    def bucket(self, arrival_rate: float) -> int:
        if self.global_:
            return 0
        lam = arrival_rate if math.isfinite(arrival_rate) and arrival_rate > 1e-3 else 1e-3
        return math.floor(math.log(lam) / math.log(self.base))

    def frontier(self, arrival_rate: float) -> ParetoFrontier:
        return self._fronts.setdefault(self.bucket(arrival_rate), ParetoFrontier())

    def __len__(self) -> int:
        return sum(len(f) for f in self._fronts.values())

    def state(self) -> dict[str, Any]:
        return {"base": self.base, "global": self.global_,
                "fronts": {str(b): f.to_list() for b, f in self._fronts.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BucketedFrontiers:
        bf = cls(float(state["base"]), bool(state["global"]))
        bf._fronts = {int(b): ParetoFrontier.from_list(pts) for b, pts in state["fronts"].items()}
        return bf
