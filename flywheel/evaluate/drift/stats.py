"""The raw statistics of ``flywheel drift``: two-sample tests and distances, no thresholds.

Pure functions over numbers, no store and no judgement: ``shifts`` holds these values to its
thresholds. SciPy is not a dependency, so the Kolmogorov-Smirnov p-value is computed here from the
Kolmogorov distribution (with Stephens' small-sample correction).

- ``ks_two_sample``, ``kolmogorov_survival``: the two-sample Kolmogorov-Smirnov statistic ``D``
  (largest gap between the two empirical distribution functions) and its asymptotic p-value;
- ``jensen_shannon`` (base 2: 0 for the same distribution, 1 for disjoint categories) and
  ``total_variation`` (the largest share that would have to change category): distances between
  two count vectors;
- ``permutation_test``: a statistic of two samples against the same statistic with the items' side
  labels shuffled ``PERMUTATIONS`` times with a fixed seed, giving its chance part and a p-value;
- ``above_p``, ``two_proportion_p``: one-sided z-tests on shares;
- ``p_text``: a p-value as the reasons print it.

Invariant: deterministic. The same samples give the same values on every run and machine (the
permutations use a fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PERMUTATIONS",
    "PermutationResult",
    "above_p",
    "jensen_shannon",
    "kolmogorov_survival",
    "ks_two_sample",
    "p_text",
    "permutation_test",
    "total_variation",
    "two_proportion_p",
]

PERMUTATIONS = 99
"""Label shuffles of a permutation test: the smallest p-value it can give is 1 / (1 + 99) = 0.01."""

_SEED = 20_241_010
_NORMAL = NormalDist()


def kolmogorov_survival(scaled: float) -> float:
    """``P(K > scaled)`` for the Kolmogorov distribution: ``2 * sum((-1)**(j-1) * exp(-2 j² x²))``.

    The series converges fast above 0.3; below, the probability is 1 to six decimals.
    """
    if scaled < 0.3:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2 * (-1) ** (j - 1) * math.exp(-2 * j * j * scaled * scaled)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_two_sample(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic ``D`` and its asymptotic two-sided p-value.

    ``D`` is exact; the p-value is ``kolmogorov_survival((√ne + 0.12 + 0.11/√ne) · D)`` with
    ``ne = n·m/(n+m)`` (Stephens 1970, as in Numerical Recipes), close for ``ne`` >= 4 and
    conservative for tied values such as token counts.
    """
    a = np.sort(np.asarray(first, dtype=np.float64))
    b = np.sort(np.asarray(second, dtype=np.float64))
    if not a.size or not b.size:
        raise ValueError("both samples need at least one value")
    grid = np.concatenate([a, b])
    below_a = np.searchsorted(a, grid, side="right") / a.size
    below_b = np.searchsorted(b, grid, side="right") / b.size
    statistic = float(np.max(np.abs(below_a - below_b)))
    root = math.sqrt(a.size * b.size / (a.size + b.size))
    return statistic, kolmogorov_survival((root + 0.12 + 0.11 / root) * statistic)


def _shares(counts: NDArray[Any]) -> NDArray[np.float64]:
    total = float(np.sum(counts))
    if total <= 0:
        raise ValueError("a distribution needs a positive total")
    return np.asarray(counts, dtype=np.float64) / total


def jensen_shannon(first: NDArray[Any], second: NDArray[Any]) -> float:
    """Jensen-Shannon divergence in bits between two count (or share) vectors over the same
    categories: 0 when the shares are equal, 1 when no category is shared."""
    p, q = _shares(first), _shares(second)
    middle = (p + q) / 2

    def divergence(shares: NDArray[np.float64]) -> float:
        present = shares > 0
        return float(np.sum(shares[present] * np.log2(shares[present] / middle[present])))

    return max(0.0, min(1.0, (divergence(p) + divergence(q)) / 2))


def total_variation(first: NDArray[Any], second: NDArray[Any]) -> float:
    """Total variation distance, ``½ Σ |p - q|``, between two count (or share) vectors."""
    return float(np.sum(np.abs(_shares(first) - _shares(second))) / 2)


@dataclass(frozen=True, slots=True)
class PermutationResult:
    """A statistic of two samples, its mean over shuffled side labels, and the permutation p-value."""

    statistic: float
    chance: float
    p_value: float

    @property
    def excess(self) -> float:
        """The statistic above what chance alone gives."""
        return self.statistic - self.chance


def permutation_test(
    codes: NDArray[np.intp],
    owners: NDArray[np.intp],
    recent: NDArray[np.bool_],
    statistic: Callable[[NDArray[np.int64], NDArray[np.int64]], float],
    *,
    permutations: int = PERMUTATIONS,
    seed: int = _SEED,
) -> PermutationResult:
    """``statistic(training counts, recent counts)`` and how often shuffled labels reach it.

    ``codes`` are the categories (word or value indexes) of the units counted, ``owners`` the item
    (input, call) each unit belongs to, ``recent[item]`` its side. Items keep their units when
    labels are shuffled, so an input's words move together (they are not independent draws).
    p-value: ``(1 + shuffles at least as large) / (1 + permutations)``.
    """
    size = int(codes.max(initial=-1)) + 1
    total = np.bincount(codes, minlength=size).astype(np.int64)

    def value(labels: NDArray[np.bool_]) -> float:
        second = np.bincount(codes[labels[owners]], minlength=size).astype(np.int64)
        return statistic(total - second, second)

    observed = value(recent)
    rng = np.random.default_rng(seed)
    shuffled = np.array([value(rng.permutation(recent)) for _ in range(permutations)])
    reached = int(np.sum(shuffled >= observed - 1e-12))
    return PermutationResult(observed, float(shuffled.mean()), (1 + reached) / (1 + permutations))


def above_p(share: float, count: int, limit: float) -> float:
    """One-sided p-value that a share seen over ``count`` items comes from a true share <= ``limit``."""
    spread = math.sqrt(limit * (1 - limit) / count)
    return 1 - _NORMAL.cdf((share - limit) / spread)


def two_proportion_p(novel: int, count: int, base_novel: int, base_count: int) -> float:
    """One-sided p-value (pooled z-test) that the first share exceeds the second by chance alone."""
    pooled = (novel + base_novel) / (count + base_count)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / count + 1 / base_count))
    if spread == 0:
        return 1.0
    return 1 - _NORMAL.cdf((novel / count - base_novel / base_count) / spread)


def p_text(p_value: float) -> str:
    """A p-value for people: ``p=0.012`` (two significant digits), ``p<0.0001`` below that."""
    return "p<0.0001" if p_value < 1e-4 else f"p={p_value:.2g}"
