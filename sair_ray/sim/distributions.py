"""Positive random variables parametrised by their mean: service times and work sizes.

Every distribution is described by its mean (plus a shape: coefficient of variation or
Pareto tail index) because the mean is what profiles are calibrated on and what queueing
analysis needs; the shape only decides the tail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("deterministic", "exponential", "lognormal", "gamma", "pareto")


@dataclass(frozen=True)
class Dist:
    """A positive distribution with mean `mean`.

    - deterministic: always `mean`.
    - exponential: cv 1.
    - lognormal / gamma: coefficient of variation `cv` (> 0).
    - pareto: classic Pareto (type I) with tail index `alpha` > 1 and scale
      x_m = mean * (alpha - 1) / alpha; alpha <= 2 has infinite variance.

    `cap` truncates samples (e.g. max_new_tokens); `mean` is the mean *before* the cap,
    `capped_mean()` the mean after it.
    """

    kind: str
    mean: float
    cv: float = 0.0
    alpha: float = 0.0
    cap: float = math.inf

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown distribution {self.kind!r}; choose one of {KINDS}")
        if not (math.isfinite(self.mean) and self.mean >= 0):
            raise ValueError(f"mean must be finite and >= 0 (got {self.mean})")
        if self.kind in ("lognormal", "gamma") and not self.cv > 0:
            raise ValueError(f"{self.kind} needs cv > 0 (got {self.cv})")
        if self.kind == "pareto" and not self.alpha > 1:
            raise ValueError(f"pareto needs alpha > 1 for a finite mean (got {self.alpha})")
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0 (got {self.cap})")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m = self.mean
        if self.kind == "deterministic" or m == 0:
            x = np.full(n, m, dtype=float)
        elif self.kind == "exponential":
            x = rng.exponential(m, n)
        elif self.kind == "lognormal":
            s2 = math.log1p(self.cv ** 2)
            x = rng.lognormal(math.log(m) - s2 / 2, math.sqrt(s2), n)
        elif self.kind == "gamma":
            k = 1.0 / self.cv ** 2
            x = rng.gamma(k, m / k, n)
        else:  # pareto: numpy's pareto() is Lomax (type II); +1 shifts it to type I
            xm = m * (self.alpha - 1) / self.alpha
            x = (rng.pareto(self.alpha, n) + 1.0) * xm
        if math.isfinite(self.cap):
            np.minimum(x, self.cap, out=x)
        return x

    @property
    def scv(self) -> float:
        """Squared coefficient of variation before the cap (inf for heavy Pareto tails)."""
        if self.kind == "deterministic":
            return 0.0
        if self.kind == "exponential":
            return 1.0
        if self.kind in ("lognormal", "gamma"):
            return self.cv ** 2
        a = self.alpha
        return math.inf if a <= 2 else 1.0 / (a * (a - 2))

    def capped_mean(self) -> float:
        """Mean after truncation at `cap` (closed form where cheap, else the plain mean)."""
        if not math.isfinite(self.cap) or self.kind == "deterministic":
            return min(self.mean, self.cap)
        c, m = self.cap, self.mean
        if self.kind == "exponential":
            return m * (1 - math.exp(-c / m))
        if self.kind == "pareto":
            a = self.alpha
            xm = m * (a - 1) / a
            if c <= xm:
                return c
            # E[min(X, c)] = xm + integral_xm^c (xm/x)^a dx
            return xm + xm ** a * (c ** (1 - a) - xm ** (1 - a)) / (1 - a)
        if self.kind == "lognormal":
            s2 = math.log1p(self.cv ** 2)
            s, mu = math.sqrt(s2), math.log(m) - s2 / 2
            z = (math.log(c) - mu) / s
            return m * _phi(z - s) + c * (1 - _phi(z))
        return m  # gamma: caps are not used with gamma in practice; document-level approx

    def to_dict(self) -> dict[str, float | str]:
        d: dict[str, float | str] = {"dist": self.kind, "mean": self.mean}
        if self.kind in ("lognormal", "gamma"):
            d["cv"] = self.cv
        if self.kind == "pareto":
            d["alpha"] = self.alpha
        if math.isfinite(self.cap):
            d["max"] = self.cap
        return d


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
