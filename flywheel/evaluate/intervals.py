"""95 % confidence intervals for the evaluation's estimates: Wilson for rates, Student t for means.

Every metric in an eval report is a fraction 0-1 over a few dozen to a few thousand items, with an
interval that says how far the true value may be from it. Pure functions, no I/O.

Why Wilson for proportions (``wilson``), not the usual ``p ± z·sqrt(p(1-p)/n)``: that normal
("Wald") interval collapses to a width of zero at 0 % and 100 % (0/12 correct reads as "certainly
0"), spills outside [0, 1] near the edges, and covers the true value far less often than 95 % at
the small n an eval set has. The Wilson score interval inverts the score test instead: it is never
empty, stays inside [0, 1] by construction, and keeps close to nominal coverage down to n ≈ 10
(Newcombe 1998, Brown, Cai & DasGupta 2001). The estimate itself stays the observed rate
``successes / n``; only the interval is Wilson's (whose centre is pulled toward 1/2).

``mean_interval`` is for scores that are not all 0 or 1 (user scorers may return any number 0-1):
the sample mean with a Student-t interval on ``n - 1`` degrees of freedom, clipped to [0, 1]. The t
quantile is computed exactly (the closed-form t distribution for integer degrees of freedom,
Abramowitz & Stegun 26.7.3-4, solved by Newton's method): neither ``statistics`` nor NumPy has a
t quantile, and SciPy is not a dependency. Scores that are all 0 or 1 get Wilson, so a binary
metric has the same interval whichever function computed it.

Invariant: ``0 <= ci_low <= value <= ci_high <= 1`` for every ``Estimate`` made here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Z95", "Estimate", "mean_interval", "student_t_quantile", "wilson"]

Z95 = statistics.NormalDist().inv_cdf(0.975)
"""The standard normal quantile for a two-sided 95 % interval (1.959963984540054)."""

_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated fraction 0-1 with its 95 % interval; ``n`` is the number of items behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """``{"value", "ci_low", "ci_high", "n"}`` as in the report (floats to 6 decimals)."""
        return {
            "value": round(self.value, _DECIMALS),
            "ci_low": round(self.ci_low, _DECIMALS),
            "ci_high": round(self.ci_high, _DECIMALS),
            "n": self.n,
        }


def wilson(successes: int, n: int, *, z: float = Z95) -> Estimate:
    """The rate ``successes / n`` with its Wilson score interval.

    ``low, high = (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``. Raises ``ValueError`` for
    ``n == 0`` (there is no rate) or ``successes`` outside ``0..n``.
    """
    if n <= 0:
        raise ValueError(f"a rate needs at least one item, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0 and n the formula's bound equals the rate exactly; rounding must not move it off.
    low = 0.0 if successes == 0 else max(0.0, min(p, centre - half_width))
    high = 1.0 if successes == n else min(1.0, max(p, centre + half_width))
    return Estimate(value=p, ci_low=low, ci_high=high, n=n)


def mean_interval(scores: Sequence[float]) -> Estimate:
    """The mean of scores in [0, 1] with a 95 % interval.

    All scores 0 or 1 (``True``/``False`` included): ``wilson`` on their count. Otherwise the mean
    ± ``t(0.975, n-1) · s / sqrt(n)`` (``s`` the sample standard deviation), clipped to [0, 1];
    a single score says nothing about spread, so ``n == 1`` gives the interval [0, 1]. Raises
    ``ValueError`` for no scores or a score outside [0, 1].
    """
    n = len(scores)
    if n == 0:
        raise ValueError("a mean needs at least one score")
    values = [float(score) for score in scores]
    if any(not 0.0 <= value <= 1.0 for value in values):  # also rejects NaN
        raise ValueError("scores must be numbers between 0 and 1")
    if all(value in (0.0, 1.0) for value in values):
        return wilson(sum(value == 1.0 for value in values), n)
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(value=mean, ci_low=0.0, ci_high=1.0, n=1)
    half_width = student_t_quantile(0.975, n - 1) * statistics.stdev(values, mean) / math.sqrt(n)
    return Estimate(value=mean, ci_low=max(0.0, mean - half_width), ci_high=min(1.0, mean + half_width), n=n)


@lru_cache(maxsize=256)
def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (0.5 < probability < 1) of Student's t with ``df`` >= 1 degrees
    of freedom, to about 12 significant digits (``student_t_quantile(0.975, 10)`` = 2.228139)."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must be between 0.5 and 1, got {probability}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    central_mass = 2 * probability - 1  # P(-t < T < t)
    # The central mass is increasing and concave in t > 0 and the normal quantile lies below the
    # t quantile, so Newton's steps from there approach the root from the left without overshoot.
    t = statistics.NormalDist().inv_cdf(probability)
    for _ in range(200):
        step = (central_mass - _t_central_mass(t, df)) / (2 * _t_density(t, df))
        t += step
        if step <= 1e-13 * t:
            break
    return t


def _t_central_mass(t: float, df: int) -> float:
    """P(-t < T < t) for T ~ Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    sine, cosine = math.sin(theta), math.cos(theta)
    cos2 = cosine * cosine
    if df % 2 == 0:
        # sin θ · (1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + ... up to cos^(df-2)θ)
        term, series = 1.0, 1.0
        for j in range(1, df // 2):
            term *= cos2 * (2 * j - 1) / (2 * j)
            series += term
        return sine * series
    # (2/π) · (θ + sin θ · (cos θ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + ... up to cos^(df-2)θ))
    series = 0.0
    if df > 1:
        term = cosine
        series = term
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            series += term
    return 2 / math.pi * (theta + sine * series)


def _t_density(t: float, df: int) -> float:
    """The density of Student's t with ``df`` degrees of freedom at ``t``."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
