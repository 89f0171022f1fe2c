"""Closed-form queueing results: Erlang C (M/M/c), M/M/1/K blocking.

Used by the Oracle baseline to size stages and by the tests to validate the simulator.
"""

from __future__ import annotations

import math


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of M/M/c/c with offered load a = lambda / mu (stable recursion)."""
    if c < 0 or a < 0:
        raise ValueError(f"need c >= 0 and a >= 0 (got c={c}, a={a})")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a (1 when unstable)."""
    if c < 1:
        raise ValueError(f"need c >= 1 servers (got {c})")
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return c * b / (c - a * (1.0 - b))


def mmc_mean_wait(lam: float, mu: float, c: int) -> float:
    """Mean time in queue (excluding service) of M/M/c; inf when lambda >= c mu."""
    if lam <= 0:
        return 0.0
    if lam >= c * mu:
        return math.inf
    return erlang_c(c, lam / mu) / (c * mu - lam)


def mmc_wait_quantile(lam: float, mu: float, c: int, q: float) -> float:
    """q-quantile of the M/M/c waiting time: P(W > t) = C(c, a) exp(-(c mu - lambda) t)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1) (got {q})")
    if lam <= 0:
        return 0.0
    if lam >= c * mu:
        return math.inf
    pw = erlang_c(c, lam / mu)
    if pw <= 1 - q:
        return 0.0
    return math.log(pw / (1 - q)) / (c * mu - lam)


def mm1k_blocking(lam: float, mu: float, k: int) -> float:
    """Probability that an arrival finds M/M/1/K full (K = in service + waiting room)."""
    if k < 1:
        raise ValueError(f"need K >= 1 (got {k})")
    rho = lam / mu
    if math.isclose(rho, 1.0):
        return 1.0 / (k + 1)
    return (1 - rho) * rho ** k / (1 - rho ** (k + 1))
