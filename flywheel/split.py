"""The stable train/test split: an entry's side is a pure function of its key and the fraction.

Each key is hashed (blake2b, 64 bits) to a point in ``[0, 1)``; the entry is in ``test`` when its
point is below the test fraction. Guarantees, all of which follow from that one rule:

- **Growth never moves an entry.** The side depends on the key, the fraction, the salt and the
  stratum only, never on the other entries, so adding data (a new dataset version) keeps every
  existing entry where it was, in any process and on any Python version (no built-in ``hash()``).
- **Raising the fraction only moves train to test.** A point below 0.1 is also below 0.2, so going
  from 10% to 20% moves some train entries to test and never a test entry to train: nothing the
  model was already trained on can enter the held-out set. (Lowering it moves test to train.)
- **Near-duplicates never straddle the split.** The caller passes the dedup cluster key, so every
  member of a cluster gets the same point and the same side (``assign_splits`` does this for a
  whole dataset).
- **A different salt gives an independent split** (e.g. a second holdout); changing it reshuffles.

Stratification (``stratum=``, e.g. the value of a tag): the point is drawn from the hash of
``(salt, stratum, key)``, i.e. an independent draw within each stratum, so every stratum receives
the fraction in expectation, whatever the mix of strata, and all the guarantees above hold within
a stratum. What a stable rule cannot promise is an exact per-stratum share: that would need
ranking entries against each other, and then adding one entry could push another out of the test
set. A small stratum's test share is binomial around the fraction (``split_counts`` reports it).
An entry moves only if its stratum value changes, so ``assign_splits`` gives each cluster one
stratum (its members' most common value) to keep near-duplicates together.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import UsageError

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "Side",
    "SplitEntry",
    "assign_splits",
    "split_counts",
    "split_key",
    "split_point",
    "stable_split",
]

Side = Literal["train", "test"]

DEFAULT_TEST_FRACTION = 0.1

_SEPARATOR = b"\x1f"  # unit separator: cannot be confused with text inside a key, salt or stratum
_SCALE = float(2**64)


def split_point(key: str, *, salt: str = "", stratum: str | None = None) -> float:
    """The key's uniform point in ``[0, 1)``: the first 64 bits of blake2b over salt, stratum, key."""
    parts = [salt.encode(), b"" if stratum is None else b"s" + stratum.encode(), key.encode()]
    digest = hashlib.blake2b(_SEPARATOR.join(parts), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def split_key(cluster_key: str | None, input_hash: str | None, call_id: str) -> str:
    """The key an entry's side is drawn from: its dedup cluster, else its input hash, else its call
    id. Export, dedup and the training thresholds all use this one rule, so the train side a
    threshold counts is the one the export writes."""
    return cluster_key or input_hash or call_id


def stable_split(
    key: str,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    *,
    salt: str = "",
    stratum: str | None = None,
) -> Side:
    """``"test"`` when the key's ``split_point`` is below ``test_fraction``, else ``"train"``.

    ``key`` is the entry's dedup cluster key, so near-duplicates share a side. Raises
    ``UsageError`` when ``test_fraction`` is not within ``[0, 1]``.
    """
    _check_fraction(test_fraction)
    return "test" if split_point(key, salt=salt, stratum=stratum) < test_fraction else "train"


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction <= 1.0:
        raise UsageError(f"test fraction must be between 0 and 1, got {test_fraction!r}", "--test-fraction")


@dataclass(frozen=True, slots=True)
class SplitEntry:
    """One dataset entry as the split sees it.

    Parameters:
        entry_id: the entry's own id (what the result is keyed by).
        cluster_key: its dedup cluster key; an entry that is no near-duplicate of anything is its
            own cluster (pass its id or input hash).
        stratum: the value of the stratification tag, or ``None`` when not stratifying.
    """

    entry_id: str
    cluster_key: str
    stratum: str | None = None


def assign_splits(
    entries: Iterable[SplitEntry],
    test_fraction: float = DEFAULT_TEST_FRACTION,
    *,
    salt: str = "",
    stratify: bool = False,
) -> dict[str, Side]:
    """The side of every entry, keyed by ``entry_id``; all members of a cluster share one side.

    With ``stratify``, each cluster's stratum is its members' most common ``stratum`` (a tie goes
    to ``None``, then to the smallest value), and the side comes from ``stable_split`` within that
    stratum. Without it, strata are ignored. Raises ``UsageError`` for a fraction outside [0, 1].
    """
    _check_fraction(test_fraction)
    members = list(entries)
    strata: dict[str, Counter[str | None]] = {}
    for entry in members:
        strata.setdefault(entry.cluster_key, Counter())[entry.stratum] += 1
    cluster_side: dict[str, Side] = {}
    for cluster_key, votes in strata.items():
        stratum = _majority(votes) if stratify else None
        cluster_side[cluster_key] = stable_split(cluster_key, test_fraction, salt=salt, stratum=stratum)
    return {entry.entry_id: cluster_side[entry.cluster_key] for entry in members}


def _majority(votes: Counter[str | None]) -> str | None:
    # Deterministic whatever the order entries arrive in: most votes, then the smallest value.
    return min(votes, key=lambda value: (-votes[value], value is not None, value or ""))


def split_counts(
    sides: Mapping[str, Side], strata: Mapping[str, str | None] | None = None
) -> dict[str | None, dict[Side, int]]:
    """How many entries each stratum has on each side (one ``None`` stratum when ``strata`` is not
    given), to report how close each stratum came to the fraction."""
    counts: dict[str | None, dict[Side, int]] = {}
    for entry_id, side in sides.items():
        stratum = strata.get(entry_id) if strata is not None else None
        bucket = counts.setdefault(stratum, {"train": 0, "test": 0})
        bucket[side] += 1
    return counts
