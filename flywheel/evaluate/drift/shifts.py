"""The comparisons of ``flywheel drift``: is recent traffic still like the training data?

Pure functions over numbers and words, no store: ``sides`` reads the two samples, ``report`` hands
them here. Each comparison returns its value, the threshold it is held to, whether it is flagged
and a sentence saying why, so the report never has to reinterpret a number. The raw statistics
are in ``stats``.

The comparisons and their thresholds (the constants below; each documents its choice):

- **Input length** (``length_shift``): tokens of each input, compared with the two-sample
  Kolmogorov-Smirnov statistic ``D`` (largest gap between the two empirical distribution
  functions) and its asymptotic p-value (the Kolmogorov distribution with Stephens' small-sample
  correction; SciPy is not a dependency). Flagged when ``p < LENGTH_ALPHA`` *and*
  ``D >= LENGTH_MIN_D``: with thousands of inputs a trivial difference is "significant", so a
  material effect is required too.
- **Word distribution** (``word_shift``): the Jensen-Shannon divergence (base 2: 0 for the same
  distribution, 1 for disjoint vocabularies) between the unigram distributions of the words
  (``words_of``) of the two sides. A finite sample diverges from its own population by chance,
  more for rich vocabularies, so the divergence is tested by permutation
  (``stats.permutation_test``: the inputs' side labels shuffled ``stats.PERMUTATIONS`` times with
  a fixed seed) and its chance part (the mean over the permutations) is subtracted. Flagged when
  ``p <= WORDS_ALPHA`` and the excess is at least ``WORDS_MIN_EXCESS``.
- **Mix of a categorical value** (``mix_shift``: the model, each tag key): total variation
  distance between the value shares (the largest share of calls that would have to change value),
  tested by permutation the same way. Flagged when ``p <= MIX_ALPHA`` and the excess is at least
  ``MIX_MIN_EXCESS``. A key that is unique per call (a request id) has a large distance by chance
  alone, and no excess.
- **Novelty** (``novelty_shift``): the share of recent inputs with no near neighbour among the
  training inputs. With a baseline (the same share for held-out training inputs, i.e. what the
  training distribution itself gives), flagged when the recent share exceeds it by
  ``NOVELTY_MARGIN`` with a one-sided two-proportion z-test ``p < NOVELTY_ALPHA``; without one,
  when the share is significantly above ``NOVELTY_MAX_SHARE``.

Invariant: deterministic. The same samples give the same report on every run and machine (the
permutations use a fixed seed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .stats import (
    PermutationResult,
    above_p,
    jensen_shannon,
    ks_two_sample,
    p_text,
    permutation_test,
    total_variation,
    two_proportion_p,
)

__all__ = [
    "LENGTH_ALPHA",
    "LENGTH_MIN_D",
    "MIX_ALPHA",
    "MIX_MIN_EXCESS",
    "NOVELTY_ALPHA",
    "NOVELTY_MARGIN",
    "NOVELTY_MAX_SHARE",
    "NO_VALUE",
    "WORDS_ALPHA",
    "WORDS_MIN_EXCESS",
    "LengthShift",
    "MixShift",
    "NoveltyShift",
    "WordShift",
    "length_shift",
    "mix_shift",
    "novelty_shift",
    "word_shift",
    "words_of",
]

LENGTH_ALPHA = 0.01
"""Significance level of the length test."""
LENGTH_MIN_D = 0.1
"""Smallest KS statistic that counts: 10 % of inputs on the other side of some length."""
WORDS_ALPHA = 0.01
"""Significance level of the word distribution test (at 99 permutations: beyond every shuffle)."""
WORDS_MIN_EXCESS = 0.05
"""Jensen-Shannon divergence (bits) above chance that counts. Replacing 10 % of the traffic with
inputs of an unseen vocabulary gives about 0.05; a reworded system prompt (left out as boilerplate)
gives nothing."""
MIX_ALPHA = 0.01
"""Significance level of a mix test."""
MIX_MIN_EXCESS = 0.1
"""Total variation distance above chance that counts: 10 % of the calls moved to other values."""
NOVELTY_ALPHA = 0.01
"""Significance level of the novelty test."""
NOVELTY_MARGIN = 0.2
"""How far the recent share of novel inputs must exceed the baseline share (20 points)."""
NOVELTY_MAX_SHARE = 0.5
"""Without a baseline: the share of novel inputs above which training no longer covers the traffic."""

_LETTERS = re.compile(r"[^\W\d_]+")


def words_of(text: str) -> list[str]:
    """The lowercase words (runs of letters) of ``text``. Numbers are left out: ids, dates and
    amounts change all the time without the traffic changing."""
    return _LETTERS.findall(text.lower())


@dataclass(frozen=True, slots=True)
class LengthShift:
    """Input lengths (tokens) of the two sides, compared with the KS test."""

    statistic: float
    p_value: float
    training_median: float
    training_p95: float
    recent_median: float
    recent_p95: float
    flagged: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "ks_statistic": round(self.statistic, 4),
            "p_value": self.p_value,
            "training": {"median": self.training_median, "p95": self.training_p95},
            "recent": {"median": self.recent_median, "p95": self.recent_p95},
            "threshold": {"p_value_below": LENGTH_ALPHA, "ks_statistic_at_least": LENGTH_MIN_D},
            "flagged": self.flagged,
            "reason": self.reason,
        }


def length_shift(training: Sequence[float], recent: Sequence[float]) -> LengthShift:
    """Compare input lengths; see the module docstring for the rule."""
    statistic, p_value = ks_two_sample(training, recent)
    flagged = p_value < LENGTH_ALPHA and statistic >= LENGTH_MIN_D
    t_median, t_p95 = (float(np.percentile(training, q)) for q in (50, 95))
    r_median, r_p95 = (float(np.percentile(recent, q)) for q in (50, 95))
    sizes = f"median {r_median:g} tokens vs {t_median:g} in training, p95 {r_p95:g} vs {t_p95:g}"
    if flagged:
        reason = f"input lengths changed (KS D={statistic:.2f}, {p_text(p_value)}): {sizes}"
    else:
        reason = f"input lengths as in training (KS D={statistic:.2f}, {p_text(p_value)}): {sizes}"
    return LengthShift(statistic, p_value, t_median, t_p95, r_median, r_p95, flagged, reason)


@dataclass(frozen=True, slots=True)
class WordShift:
    """Word unigram distributions of the two sides, compared by Jensen-Shannon divergence."""

    divergence: PermutationResult
    training_words: int
    recent_words: int
    rising: tuple[str, ...]
    """The words that gained the most share in recent traffic, most first."""
    flagged: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "jensen_shannon_bits": round(self.divergence.statistic, 4),
            "chance_bits": round(self.divergence.chance, 4),
            "excess_bits": round(self.divergence.excess, 4),
            "p_value": self.divergence.p_value,
            "training_words": self.training_words,
            "recent_words": self.recent_words,
            "rising_words": list(self.rising),
            "threshold": {"p_value_at_most": WORDS_ALPHA, "excess_bits_at_least": WORDS_MIN_EXCESS},
            "flagged": self.flagged,
            "reason": self.reason,
        }


def word_shift(
    training: Sequence[Sequence[str]], recent: Sequence[Sequence[str]], *, show: int = 8
) -> WordShift:
    """Compare the words of the training inputs with those of the recent ones (lists of words)."""
    documents = [*training, *recent]
    flat = [word for words in documents for word in words]
    vocabulary, codes = np.unique(np.array(flat, dtype=np.str_), return_inverse=True)
    codes = codes.astype(np.intp).ravel()
    owners = np.repeat(np.arange(len(documents), dtype=np.intp), [len(words) for words in documents])
    labels = np.arange(len(documents)) >= len(training)
    t_words, r_words = int(np.sum(~labels[owners])), int(np.sum(labels[owners]))
    if not t_words or not r_words:
        empty = PermutationResult(0.0, 0.0, 1.0)
        return WordShift(empty, t_words, r_words, (), False, "no words to compare on one side")
    result = permutation_test(codes, owners, labels, jensen_shannon)
    words = vocabulary.tolist()
    t_counts = np.bincount(codes[~labels[owners]], minlength=len(words)) / t_words
    r_counts = np.bincount(codes[labels[owners]], minlength=len(words)) / r_words
    gain = r_counts - t_counts
    rising = tuple(words[i] for i in np.argsort(-gain, kind="stable")[:show] if gain[i] > 0)
    flagged = result.p_value <= WORDS_ALPHA and result.excess >= WORDS_MIN_EXCESS
    measured = f"JSD {result.statistic:.3f} bits, {result.excess:.3f} above chance, {p_text(result.p_value)}"
    if flagged:
        reason = f"the words of the inputs changed ({measured}); rising: {', '.join(rising[:5])}"
    else:
        reason = f"the words of the inputs are as in training ({measured})"
    return WordShift(result, t_words, r_words, rising, flagged, reason)


@dataclass(frozen=True, slots=True)
class MixShift:
    """Shares of a categorical value (the model, a tag's value) on the two sides."""

    what: str
    distance: PermutationResult
    training: dict[str, float]
    recent: dict[str, float]
    """The largest shares of each side (``(none)`` for calls without the value)."""
    flagged: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_variation": round(self.distance.statistic, 4),
            "chance": round(self.distance.chance, 4),
            "excess": round(self.distance.excess, 4),
            "p_value": self.distance.p_value,
            "training": self.training,
            "recent": self.recent,
            "threshold": {"p_value_at_most": MIX_ALPHA, "excess_at_least": MIX_MIN_EXCESS},
            "flagged": self.flagged,
            "reason": self.reason,
        }


NO_VALUE = "(none)"
"""The value of a call that has no such tag (or no model)."""


def mix_shift(
    what: str, training: Sequence[str | None], recent: Sequence[str | None], *, show: int = 5
) -> MixShift:
    """Compare the value shares of ``what`` (a label for the reason) between the two sides."""
    values: dict[str, int] = {}
    everything = [NO_VALUE if value is None else value for value in [*training, *recent]]
    codes = np.fromiter((values.setdefault(value, len(values)) for value in everything), np.intp)
    labels = np.arange(len(everything)) >= len(training)
    result = permutation_test(codes, np.arange(len(everything), dtype=np.intp), labels, total_variation)
    names = list(values)

    def top(side: NDArray[np.intp]) -> dict[str, float]:
        counts = np.bincount(side, minlength=len(names))
        order = np.argsort(-counts, kind="stable")[:show]
        return {names[i]: round(float(counts[i]) / side.size, 4) for i in order if counts[i]}

    training_top, recent_top = top(codes[~labels]), top(codes[labels])
    flagged = result.p_value <= MIX_ALPHA and result.excess >= MIX_MIN_EXCESS
    measured = f"TVD {result.statistic:.2f}, {result.excess:.2f} above chance, {p_text(result.p_value)}"
    if flagged:
        now, was = _shares_text(recent_top), _shares_text(training_top)
        reason = f"the {what} mix changed ({measured}): now {now}, was {was}"
    else:
        reason = f"the {what} mix is as in training ({measured})"
    return MixShift(what, result, training_top, recent_top, flagged, reason)


def _shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{value} {share:.0%}" for value, share in list(shares.items())[:3])


@dataclass(frozen=True, slots=True)
class NoveltyShift:
    """Recent inputs without a near neighbour in the training inputs, against a baseline."""

    novel: int
    count: int
    half_novel: int | None
    """With a baseline: the recent inputs with no near neighbour in the half of training that the
    held-out half is compared with."""
    baseline_novel: int | None
    baseline_count: int | None
    p_value: float
    threshold: float
    flagged: bool
    reason: str

    @property
    def share(self) -> float:
        return self.novel / self.count

    @property
    def baseline_share(self) -> float | None:
        if self.baseline_novel is None or not self.baseline_count:
            return None
        return self.baseline_novel / self.baseline_count

    def as_dict(self) -> dict[str, Any]:
        baseline = self.baseline_share
        return {
            "novel": self.novel,
            "compared": self.count,
            "share": round(self.share, 4),
            "share_against_half": None if self.half_novel is None else round(self.half_novel / self.count, 4),
            "baseline_share": None if baseline is None else round(baseline, 4),
            "p_value": self.p_value,
            "near_threshold": self.threshold,
            "threshold": (
                {"share_at_most": NOVELTY_MAX_SHARE, "p_value_below": NOVELTY_ALPHA}
                if baseline is None
                else {"above_baseline_by": NOVELTY_MARGIN, "p_value_below": NOVELTY_ALPHA}
            ),
            "flagged": self.flagged,
            "reason": self.reason,
        }


def novelty_shift(
    novel: int,
    count: int,
    *,
    threshold: float,
    baseline_novel: int | None = None,
    baseline_count: int | None = None,
    compared_novel: int | None = None,
) -> NoveltyShift:
    """Judge ``novel`` of ``count`` recent inputs lacking a near neighbour (at Jaccard ``threshold``).

    With a baseline (``baseline_novel`` of ``baseline_count`` held-out training inputs novel against
    the rest of the training inputs) the test compares like with like: ``compared_novel`` is the
    recent inputs' count against that same rest (default ``novel``).
    """
    if count <= 0:
        raise ValueError("novelty needs at least one recent input")
    share = novel / count
    if baseline_novel is None or not baseline_count:
        p_value = above_p(share, count, NOVELTY_MAX_SHARE)
        flagged = share > NOVELTY_MAX_SHARE and p_value < NOVELTY_ALPHA
        against = f"at most {NOVELTY_MAX_SHARE:.0%} expected"
        compared = None
    else:
        compared = novel if compared_novel is None else compared_novel
        base_share = baseline_novel / baseline_count
        p_value = two_proportion_p(compared, count, baseline_novel, baseline_count)
        flagged = compared / count - base_share >= NOVELTY_MARGIN and p_value < NOVELTY_ALPHA
        against = (
            f"against half of it {compared / count:.0%} of recent vs {base_share:.0%} of held-out "
            "training inputs"
        )
    measured = f"{share:.0%} of recent inputs ({novel} of {count}) have no near neighbour in training"
    if flagged:
        reason = f"new kinds of input: {measured}; {against} ({p_text(p_value)})"
    else:
        reason = f"training covers the inputs: {measured}; {against}"
    return NoveltyShift(
        novel, count, compared, baseline_novel, baseline_count, p_value, threshold, flagged, reason
    )
