"""The incremental frontier against brute force: dominance, exact HV contribution, distance."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.pareto import BucketedFrontiers, ParetoFrontier

unit = st.floats(0.0, 1.0, allow_nan=False)
grid = st.integers(0, 20).map(lambda i: i / 20)  # ties and equal coordinates on purpose
coord = st.one_of(unit, grid)
points = st.lists(st.tuples(coord, coord), max_size=40)


def dominates(a, b) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def nondominated(pts):
    uniq = sorted(set(pts))
    return [p for p in uniq if not any(dominates(q, p) for q in uniq)]


def hv(pts) -> float:
    front = sorted(nondominated(pts))
    total = 0.0
    for i, (x, y) in enumerate(front):
        nxt = front[i + 1][0] if i + 1 < len(front) else 1.0
        total += (nxt - x) * (1.0 - y)
    return total


def build(pts) -> ParetoFrontier:
    f = ParetoFrontier()
    for p in pts:
        f.add(*p)
    return f


@settings(max_examples=300, deadline=None)
@given(points, st.tuples(coord, coord))
def test_verdict_matches_brute_force(pts, z):
    f = build(pts)
    front = nondominated(pts)
    v = f.evaluate(z[0], z[1], 0.7, 0.3)
    assert v.dominated == any(dominates(p, z) for p in front)
    if v.dominated:
        d = min(math.sqrt(0.7 * (px - z[0]) ** 2 + 0.3 * (py - z[1]) ** 2) for px, py in front)
        assert math.isclose(v.distance, min(d, 1.0), abs_tol=1e-9)
        assert v.hv_contribution == 0.0
    else:
        assert math.isclose(v.hv_contribution, hv(pts + [z]) - hv(pts), abs_tol=1e-9)
        assert 0.0 <= v.hv_contribution <= 1.0


@settings(max_examples=300, deadline=None)
@given(points)
def test_frontier_is_the_nondominated_set_in_staircase_order(pts):
    f = build(pts)
    assert sorted(map(tuple, f.to_list())) == nondominated(pts)
    xs, ys = f.points[:, 0], f.points[:, 1]
    assert all(xs[i] < xs[i + 1] and ys[i] > ys[i + 1] for i in range(len(f) - 1))
    assert math.isclose(f.hypervolume(), hv(pts), abs_tol=1e-9)


def test_buckets_separate_loads_unless_global():
    b = BucketedFrontiers(1.25)
    assert b.bucket(10.0) != b.bucket(20.0)
    assert b.bucket(10.0) == b.bucket(10.5)
    assert b.bucket(0.0) == b.bucket(-1.0) == b.bucket(float("nan"))
    b.frontier(10.0).add(0.1, 0.1)
    assert len(b.frontier(20.0)) == 0
    g = BucketedFrontiers(1.25, global_=True)
    g.frontier(10.0).add(0.1, 0.1)
    assert len(g.frontier(20.0)) == 1


def test_state_round_trip():
    b = BucketedFrontiers(1.25)
    b.frontier(5).add(0.2, 0.5)
    b.frontier(50).add(0.4, 0.1)
    c = BucketedFrontiers.from_state(b.state())
    assert c.state() == b.state()
