"""Near-duplicate detection for ``flywheel dedup``: MinHash sketches, LSH banding, clusters.

Pure functions over texts: no store, no I/O (sketching may run in worker processes). The
pipeline, for items fed oldest first:

1. ``input_text`` turns a chat request into the text that is compared.
2. ``learn_boilerplate`` finds what most inputs share (a long system prompt, the fixed words of a
   template) from a sample; it is left out before comparing, so two inputs are compared on their
   variable parts only.
3. Each text becomes the set of its word bigrams (each word with the next, the last word with an
   end mark) after normalization (lowercase, runs of non-word characters as one space), hashed to
   64 bits; boilerplate shingles are dropped. Word bigrams, unlike character n-grams, are rarely
   shared by unrelated texts, which keeps LSH candidates (and false matches) few. A
   ``NUM_BINS``-slot MinHash signature is built from 8 independent one-permutation sketches of 16
   slots each, with rotation densification (Shrivastava & Li, 2014): 8 hashes per shingle instead
   of one per slot, vectorized with NumPy, yet about as precise as 128 permutations for the short
   texts (a dozen words) that prompts' variable parts often are. Only the top 8 bits of each slot
   are kept (b-bit MinHash), so 1,000,000 signatures take 128 MB.
4. LSH banding (``lsh_bands``) proposes candidate pairs; each is verified against ``threshold``
   with the Jaccard similarity estimated from the two signatures; verified pairs are joined into
   connected components, which are the clusters.

Invariants:

- Deterministic: no salted or process-dependent hash anywhere; the same items in the same order
  with the same boilerplate give the same clusters on every run and machine.
- Texts whose compared parts normalize to the same string (exact copies in particular) always
  land in one cluster, whatever the threshold (their signatures are equal). Exact duplicates need
  no separate pass, but callers with an ``input_hash`` may collapse them first to save work.
- Memory is bounded by the number of items, not their length: texts are sketched in batches and
  dropped; per item only its key, a ``NUM_BINS``-byte signature and 4 bytes per LSH band (168 at
  the default threshold) are kept, about 300 MB per million items.

The representative of a cluster is chosen by ``choose_representative``, whose rule keeps an entry
that was already exported, so that a later near-copy never replaces it as data grows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from hashlib import sha256
from itertools import chain, islice
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray

from .parallel import ordered_map

__all__ = [
    "BOILERPLATE_SAMPLE",
    "DEFAULT_BOILERPLATE_SHARE",
    "DEFAULT_THRESHOLD",
    "NUM_BINS",
    "Boilerplate",
    "choose_representative",
    "input_text",
    "learn_boilerplate",
    "lsh_bands",
    "near_duplicate_clusters",
    "sketch_texts",
]

K = TypeVar("K", bound=Hashable)
_Number = TypeVar("_Number", bound=np.integer[Any])

DEFAULT_THRESHOLD = 0.5
"""Estimated Jaccard similarity of word-bigram sets at or above which inputs are near-duplicates.

Changing one word of an n-word variable part replaces two of its n bigrams: Jaccard
``(n - 2) / (n + 2)``, 0.78 at 16 words; two changed words give about ``(n - 4) / (n + 4)``, 0.6
at 16 words. Unrelated requests on the same topic share almost no bigrams (below 0.1). 0.5 sits in
that gap with room for the estimate's noise (standard deviation about 0.045 with ``NUM_BINS``
slots, more for texts under 16 words). Very short variable parts fall below it on purpose: "the
capital of France" and "the capital of Spain" are different questions.
"""

DEFAULT_BOILERPLATE_SHARE = 0.5
"""A line or shingle present in at least this share of the sampled inputs is boilerplate."""

BOILERPLATE_SAMPLE = 10_000
"""How many inputs (the first ones given, i.e. the oldest) boilerplate is learned from by default."""

NUM_BINS = 128
"""MinHash signature length (slots)."""

_BATCH = 8192
_RECALL_AT_THRESHOLD = 0.95
_EMPTY_SLOT = np.uint32(0xFFFFFFFF)
_NON_WORD = re.compile(r"[\W_]+")
_ASCII_WORDS = bytes(
    byte + 32 if 65 <= byte <= 90 else byte if 48 <= byte <= 57 or 97 <= byte <= 122 else 32
    for byte in range(128)
) + bytes(range(128, 256))
_END = np.uint64(0x2545F4914F6CDD1D)
_WORD_BASE = np.uint64(0x100000001B3)
_REPETITIONS = 8
_BINS_PER_REPETITION = NUM_BINS // _REPETITIONS
_BIN_SHIFT = np.uint64(64 - int(math.log2(_BINS_PER_REPETITION)))
_REPETITION_SEEDS = np.arange(1, _REPETITIONS + 1, dtype=np.uint64)[:, None] * np.uint64(0xD6E8FEB86659FD93)


def input_text(
    messages: Iterable[Mapping[str, Any]], tools: Iterable[Mapping[str, Any]] | None = None
) -> str:
    """The text of a chat input that near-duplicate detection compares, one part per line.

    In order: each message's text (a string ``content``, or the ``text``/``refusal`` of each content
    part), then each of its tool calls as ``name arguments``, then one line per tool the request
    offers (``tool NAME``). Non-text parts (images, audio, files) become a line with their type and
    a short digest of the part, so inputs that differ only in an attached image are not taken for
    copies. Roles are left out: they are the same in every input of a dataset.
    """
    lines: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            lines.append(content)
        elif isinstance(content, list):
            lines.extend(_part_text(part) for part in content if isinstance(part, Mapping))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                lines.append(f"{function.get('name', '')} {function.get('arguments', '')}")
    for tool in tools or ():
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        lines.append(f"tool {name}")
    return "\n".join(lines)


def _part_text(part: Mapping[str, Any]) -> str:
    for field in ("text", "refusal"):
        if isinstance(part.get(field), str):
            return str(part[field])
    digest = sha256(orjson.dumps(part, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]
    return f"[{part.get('type', 'part')} {digest}]"


@dataclass(frozen=True, slots=True)
class Boilerplate:
    """What most inputs of a dataset share, left out before comparing.

    ``lines`` are whole lines (a system prompt, a template's fixed lines), removed as text before
    shingling, which also saves hashing them. ``shingles`` are 64-bit shingle hashes of the text
    that remains (the fixed words of a template line such as ``"Classify this ticket: {ticket}"``).
    """

    lines: frozenset[str] = frozenset()
    shingles: frozenset[int] = frozenset()

    def without_lines(self, text: str) -> str:
        """``text`` without its boilerplate lines (and without empty lines)."""
        if not self.lines:
            return text
        return "\n".join([line for line in text.split("\n") if line and line not in self.lines])


def learn_boilerplate(texts: Iterable[str], *, min_share: float = DEFAULT_BOILERPLATE_SHARE) -> Boilerplate:
    """The lines, then the shingles, present in at least ``min_share`` of ``texts`` (and in two).

    Lines are counted first and removed; shingles are counted on what remains, as
    ``near_duplicate_clusters`` will see it. Each text counts once per line or shingle. Learn from
    a sample (``BOILERPLATE_SAMPLE`` texts are plenty: boilerplate is, by definition, frequent);
    the result depends only on the texts, not their order.
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    sample = list(texts)
    needed = max(2, math.ceil(min_share * len(sample)))
    line_counts = Counter(line for text in sample for line in set(text.split("\n")) if line)
    lines = Boilerplate(frozenset(line for line, count in line_counts.items() if count >= needed))
    # Texts that are all boilerplate lines are compared whole (see _sketches): no shingles here.
    variable = [_normalized(part) for text in sample if (part := lines.without_lines(text))]
    if not variable:
        return lines
    hashes, owners, _ = _shingles(variable)
    order = np.lexsort((owners, hashes))
    hashes, owners = hashes[order], owners[order]
    first_in_text = np.concatenate([[True], (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])])
    values, counts = _runs(hashes[first_in_text])
    return Boilerplate(lines.lines, frozenset(int(value) for value in values[counts >= needed]))


def lsh_bands(threshold: float, num_bins: int = NUM_BINS) -> tuple[int, int]:
    """``(bands, rows)`` for LSH over ``num_bins``-slot signatures at ``threshold``.

    The most rows per band (fewest chance candidates to verify) such that a pair exactly at the
    threshold is still proposed with probability >= 95% (``1 - (1 - t**rows)**bands``); pairs above
    it are proposed even more surely. At the default 0.5 that is 42 bands of 3 rows (99.6%).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    best = (num_bins, 1)
    for rows in range(1, num_bins + 1):
        bands = num_bins // rows
        if 1 - (1 - threshold**rows) ** bands >= _RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def near_duplicate_clusters(
    items: Iterable[tuple[K, Any]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    boilerplate: Boilerplate | None = None,
    text_of: Callable[[Any], str] | None = None,
    workers: int = 1,
) -> list[list[K]]:
    """Clusters (two members or more) of near-duplicate texts among ``(key, text)`` items.

    Two texts are near-duplicates when the Jaccard similarity of their shingle sets, boilerplate
    left out and estimated from MinHash signatures, is at least ``threshold``; a cluster is a
    connected component of that relation. Each cluster lists its keys in the order given, and
    clusters come in the order of their first member: feed items oldest first and
    ``cluster[0]`` is the oldest member.

    ``items`` may be a one-pass iterator. Without ``boilerplate``, it is learned from the first
    ``BOILERPLATE_SAMPLE`` items (which are buffered), so it stays the same as later data arrives.
    A text that is nothing but boilerplate is compared by its whole normalized text, so only its
    exact copies match it. For clear-cut data the clusters do not depend on the input order;
    a member whose similarity is borderline to some members may join or stay out depending on it.

    With ``text_of`` (a picklable function), items are ``(key, payload)`` and ``text_of(payload)``
    is the text: with ``workers`` > 1 it runs, with the sketching, in that many processes
    (``flywheel.parallel``); the clusters are the same.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    stream = iter(items)
    head = list(islice(stream, BOILERPLATE_SAMPLE))
    if boilerplate is None:
        boilerplate = learn_boilerplate(_texts([payload for _, payload in head], text_of))
    frequent = np.array(sorted(boilerplate.shingles), dtype=np.uint64)
    _, rows = lsh_bands(threshold)
    keys: list[K] = []

    def payloads() -> Iterator[list[Any]]:
        for batch in _batches(chain(head, stream)):
            keys.extend(key for key, _ in batch)
            yield [payload for _, payload in batch]

    sketch = partial(_sketch_batch, boilerplate=boilerplate, frequent=frequent, rows=rows, text_of=text_of)
    signatures: list[NDArray[np.uint8]] = []
    band_keys: list[NDArray[np.uint32]] = []
    for batch_signatures, batch_band_keys in ordered_map(sketch, payloads(), workers):
        signatures.append(batch_signatures)
        band_keys.append(batch_band_keys)
    if not keys:
        return []
    labels = _components(np.concatenate(signatures), band_keys, threshold)
    return _groups(keys, labels)


def sketch_texts(texts: Sequence[str], *, boilerplate: Boilerplate) -> NDArray[np.uint8]:
    """The b-bit MinHash signatures ``(len(texts), NUM_BINS)`` that clustering compares: the share of
    equal slots of two signatures estimates the Jaccard similarity of the texts (for ranking, e.g.
    the most similar training inputs; ``near_duplicate_clusters`` does the thresholded search)."""
    frequent = np.array(sorted(boilerplate.shingles), dtype=np.uint64)
    _, rows = lsh_bands(DEFAULT_THRESHOLD)
    return _sketches(list(texts), boilerplate, frequent, rows)[0]


def choose_representative(cluster: Sequence[K], exported: Collection[K] = ()) -> K:
    """The member of ``cluster`` that dedup keeps: the first exported one, else the first one.

    ``cluster`` is in the order items are fed (oldest first, as ``near_duplicate_clusters``
    returns them); ``exported`` holds keys of entries already exported (or kept) by an earlier
    run. The rule is stable as data grows: new entries arrive later in the order, so they can
    never come before the current representative; and an exported entry outranks every entry
    that is not, so a later near-copy never replaces it.
    """
    if not cluster:
        raise ValueError("a cluster has at least one member")
    return next((key for key in cluster if key in exported), cluster[0])


def _batches(items: Iterator[tuple[K, Any]]) -> Iterator[list[tuple[K, Any]]]:
    while batch := list(islice(items, _BATCH)):
        yield batch


def _texts(payloads: list[Any], text_of: Callable[[Any], str] | None) -> list[str]:
    return payloads if text_of is None else [text_of(payload) for payload in payloads]


def _sketch_batch(
    payloads: list[Any],
    *,
    boilerplate: Boilerplate,
    frequent: NDArray[np.uint64],
    rows: int,
    text_of: Callable[[Any], str] | None,
) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
    # The unit of work of a worker process: a batch of payloads to signatures and band keys.
    return _sketches(_texts(payloads, text_of), boilerplate, frequent, rows)


def _normalized(text: str) -> bytes:
    """Lowercase UTF-8 words separated by one space."""
    if text.isascii():
        # Same result as the regex for ASCII text, about ten times faster.
        words = text.encode().translate(_ASCII_WORDS).split()
    else:
        words = _NON_WORD.sub(" ", text.lower()).encode().split()
    return b" ".join(words)


def _mix64(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # splitmix64's finalizer: a fixed, well-spread bijection (uint64 arithmetic wraps).
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _shingles(normalized: Sequence[bytes]) -> tuple[NDArray[np.uint64], NDArray[np.intp], NDArray[np.intp]]:
    """Hashes of each text's word bigrams, the index of the text each belongs to, per-text counts.

    A text of n words has n shingles (the last word pairs with an end mark); a text without words
    has one, the end mark alone, so that all empty texts are alike.
    """
    words = np.fromiter(
        (text.count(b" ") + 1 if text else 0 for text in normalized), np.intp, len(normalized)
    )
    data = np.frombuffer(b" ".join(text for text in normalized if text), dtype=np.uint8)
    space = data == 32
    word_starts = np.flatnonzero(np.concatenate([[data.size > 0], space[:-1]]))
    letters = np.flatnonzero(~space)
    # A word's hash: a polynomial over its bytes (sum of byte * P**position, mod 2**64), mixed.
    offset = letters - word_starts[np.cumsum(space)[letters]]
    powers = np.cumprod(np.full(int(offset.max(initial=0)) + 1, _WORD_BASE, dtype=np.uint64))
    terms = (data[letters].astype(np.uint64) + np.uint64(1)) * powers[offset]
    first_letters = word_starts - np.arange(word_starts.size)
    word_hashes = _mix64(np.add.reduceat(terms, first_letters) if letters.size else terms)
    # Each word followed by the next one of its text, or by the end mark after a text's last word.
    following = np.append(word_hashes[1:], _END)
    following[np.cumsum(words[words > 0]) - 1] = _END
    bigrams = _mix64(word_hashes * np.uint64(0x9E3779B97F4A7C15) + following)
    counts = np.maximum(words, 1)
    owners = np.repeat(np.arange(len(normalized), dtype=np.intp), counts)
    hashes = np.full(owners.size, _mix64(np.array([_END]))[0], dtype=np.uint64)
    hashes[np.repeat(words > 0, counts)] = bigrams
    return hashes, owners, counts


def _sketches(
    texts: Sequence[str], boilerplate: Boilerplate, frequent: NDArray[np.uint64], rows: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
    """b-bit MinHash signatures ``(len(texts), NUM_BINS)`` and LSH band keys ``(bands, len(texts))``.

    Band keys hash the full slot values of ``rows`` consecutive slots, so that texts share one only
    by sharing those slots (not by a chance match of their 8-bit remainders).
    """
    variable = [boilerplate.without_lines(text) for text in texts]
    hashes, owners, counts = _shingles(
        [_normalized(part or text) for part, text in zip(variable, texts, strict=True)]
    )
    keep = np.fromiter(map(bool, variable), dtype=np.bool_, count=len(texts))[owners]
    if frequent.size:
        found = np.minimum(np.searchsorted(frequent, hashes), frequent.size - 1)
        keep &= frequent[found] != hashes
    # A text that is all boilerplate (lines or shingles) is one shingle standing for its whole
    # normalized text, so that only its copies match it.
    whole = np.flatnonzero(np.bincount(owners[keep], minlength=len(texts)) == 0)
    if whole.size:
        combined = _mix64(np.add.reduceat(hashes, np.cumsum(counts) - counts)[whole])
        hashes = np.concatenate([hashes[keep], combined])
        owners = np.concatenate([owners[keep], whole])
    else:
        hashes, owners = hashes[keep], owners[keep]
    # _REPETITIONS independent one-permutation sketches of _BINS_PER_REPETITION slots each: a short
    # text (a dozen shingles) fills most slots of each, so the estimate rests on ~NUM_BINS samples.
    # Shingle hashes are already well mixed: one multiply-xorshift round per repetition will do.
    repeated = (hashes[None, :] ^ _REPETITION_SEEDS) * np.uint64(0xBF58476D1CE4E5B9)
    repeated ^= repeated >> np.uint64(31)
    first_slot = np.arange(_REPETITIONS, dtype=np.intp)[:, None] * _BINS_PER_REPETITION
    slot = owners[None, :] * NUM_BINS + first_slot + (repeated >> _BIN_SHIFT).astype(np.intp)
    slots = np.full(len(texts) * NUM_BINS, _EMPTY_SLOT, dtype=np.uint32)
    np.minimum.at(slots, slot.ravel(), (repeated & np.uint64(0x7FFFFFFF)).astype(np.uint32).ravel())
    values = _densified(slots.reshape(-1, _BINS_PER_REPETITION)).reshape(len(texts), NUM_BINS)
    bands = NUM_BINS // rows
    grouped = values[:, : bands * rows].reshape(len(texts), bands, rows)
    folded = grouped[:, :, 0]
    for row in range(1, rows):
        folded = folded * _WORD_BASE + grouped[:, :, row]
    band_keys = (_mix64(folded) >> np.uint64(32)).astype(np.uint32).T.copy()
    # The top 8 bits of a multiplicative hash of each slot: its b-bit remainder.
    return ((values * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(56)).astype(np.uint8), band_keys


def _densified(slots: NDArray[np.uint32]) -> NDArray[np.uint64]:
    """Each slot's value (31-bit minimum) with, above it, how far it was borrowed from (0: its own)."""
    # Rotation densification: an empty slot takes the next non-empty slot to its right (circularly),
    # offset by the distance, which keeps P(slot equal) = Jaccard. Every row (one repetition of one
    # text) has a non-empty slot, since each text has a shingle.
    width = slots.shape[1]
    column = np.arange(width, dtype=np.int16)
    nearest = np.where(slots != _EMPTY_SLOT, column, np.int16(2 * width))
    nearest = np.minimum.accumulate(nearest[:, ::-1], axis=1)[:, ::-1]
    # No non-empty slot to the right: wrap around to the row's first one.
    nearest = np.where(nearest == 2 * width, nearest[:, :1] + np.int16(width), nearest)
    source = np.take_along_axis(slots, nearest % width, axis=1).astype(np.uint64)
    distance = (nearest - column).astype(np.uint64)
    return source | (distance << np.uint64(32))


def _components(
    signatures: NDArray[np.uint8], band_keys: Sequence[NDArray[np.uint32]], threshold: float
) -> NDArray[np.intp]:
    """For each signature, the smallest index of its cluster (itself when it has no near-duplicate).

    ``band_keys`` holds one ``(bands, batch size)`` array per batch, joined one band at a time.
    """
    count, width = signatures.shape
    # b-bit slots also agree by chance (1 in 256): the estimate corrects for it.
    chance = 1 / 256
    needed = math.ceil(width * (threshold * (1 - chance) + chance) - 1e-9)
    index = np.arange(count, dtype=np.uint64)
    proposals: list[NDArray[np.int64]] = []
    for band in range(band_keys[0].shape[0]):
        keys = np.concatenate([batch[band] for batch in band_keys])
        # Sorting (key, index) packed in one integer: each run of a key comes out smallest index first.
        packed = np.sort((keys.astype(np.uint64) << np.uint64(32)) | index)
        ordered = (packed >> np.uint64(32)).astype(np.uint32)
        members = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        run_starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        anchors = np.repeat(members[run_starts], np.diff(np.append(run_starts, count)))
        proposed = members != anchors
        # Every member of a run is checked against the run's smallest index.
        proposals.append(members[proposed] * count + anchors[proposed])
    # A pair proposed by several bands is verified once.
    candidates, _ = _runs(np.concatenate(proposals))
    return _connected(count, _verified(signatures, candidates, needed))


def _verified(signatures: NDArray[np.uint8], pairs: NDArray[np.int64], needed: int) -> NDArray[np.int64]:
    """The pairs (``member * count + anchor``) whose signatures agree in at least ``needed`` slots."""
    count = signatures.shape[0]
    kept: list[NDArray[np.int64]] = [np.empty(0, dtype=np.int64)]
    for start in range(0, pairs.size, 1 << 16):
        chunk = pairs[start : start + (1 << 16)]
        agree = (signatures[chunk // count] == signatures[chunk % count]).sum(axis=1) >= needed
        kept.append(chunk[agree])
    return np.concatenate(kept)


def _connected(count: int, edges: NDArray[np.int64]) -> NDArray[np.intp]:
    """Connected components by min-label hooking and pointer jumping; a label is the smallest index."""
    labels = np.arange(count, dtype=np.intp)
    left, right = (edges // count).astype(np.intp), (edges % count).astype(np.intp)
    while left.size:
        low = np.minimum(labels[left], labels[right])
        np.minimum.at(labels, labels[left], low)
        np.minimum.at(labels, labels[right], low)
        while not np.array_equal(jumped := labels[labels], labels):
            labels = jumped
        unsettled = labels[left] != labels[right]
        if not unsettled.any():
            break
        left, right = left[unsettled], right[unsettled]
    return labels


def _runs(values: NDArray[_Number]) -> tuple[NDArray[_Number], NDArray[np.intp]]:
    """The distinct values, sorted, and how often each occurs (``np.unique``'s hash path is slow here)."""
    ordered = np.sort(values)
    starts = np.flatnonzero(np.concatenate([[ordered.size > 0], ordered[1:] != ordered[:-1]]))
    return ordered[starts], np.diff(np.append(starts, ordered.size))


def _groups(keys: list[K], labels: NDArray[np.intp]) -> list[list[K]]:
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [ordered.size]])
    positions = order.tolist()
    return [
        [keys[i] for i in positions[start:end]]
        for start, end in zip(
            starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True
        )
    ]
