"""The expensive half of ``flywheel export``: entries to checked JSONL lines, here or on other cores.

An entry (its call's request and response, its newer output, its split key) becomes its chat line
and, when it has a newer output, its preference line, each with its validation issues and token
count, and its side of the split. All of it is pure: the same entry gives the same bytes in any
process. ``prepared_batches`` runs it in the calling process, or in ``workers`` spawned processes
(``flywheel.parallel``); the results come back in order.
What needs the whole file (line numbers, counts, the minimum, writing) stays with the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, NamedTuple

import orjson

from .finetune_format import (
    PruneRule,
    TrainOn,
    UnconvertibleCallError,
    chat_example,
    output_message,
    preference_example,
    prune_rule_from_dict,
)
from .parallel import ordered_map
from .split import Side, split_key, stable_split
from .validate import DatasetValidator, Issue

__all__ = ["EntryRow", "ExportJob", "PreparedEntry", "job_rules", "prepare_entries", "prepared_batches"]

EntryRow = tuple[int, str, str | None, str | None, str, str | None, str | None, str | None]
"""``(entry id, call id, cluster key, input hash, request, response, newer output, stratum)``; the
three bodies as JSON text."""


@dataclass(frozen=True, slots=True)
class ExportJob:
    """What turning an entry into lines depends on (sent to each worker once per batch)."""

    test_fraction: float
    salt: str
    stratify: bool
    train_on: TrainOn
    prune_rules: tuple[tuple[tuple[str, Any], ...], ...]
    """The rules' ``as_dict()`` forms, as sorted item tuples (hashable, for the per-process cache)."""
    base_model: str | None


class PreparedEntry(NamedTuple):
    """One entry, ready to be numbered and written; ``side`` is ``None`` when it cannot be converted.

    A named tuple: it crosses a process boundary per entry, and tuples pickle several times faster
    than (slotted, frozen) dataclasses."""

    entry: int
    call_id: str
    side: Side | None
    reason: str | None = None
    line: bytes = b""
    issues: tuple[Issue, ...] = ()
    tokens: int | None = None
    pair: bytes | None = None
    pair_issues: tuple[Issue, ...] = ()
    pair_tokens: int | None = None


def prepare_entries(job: ExportJob, rows: Sequence[EntryRow]) -> list[PreparedEntry]:
    """Convert, split and check ``rows`` (pure; the unit of work of a worker process)."""
    chat_check, pair_check = _checkers(job.base_model)
    rules = _rules(job.prune_rules)
    prepared = []
    for entry, call_id, cluster_key, input_hash, request_text, response_text, newer_text, stratum in rows:
        request = orjson.loads(request_text)
        response = orjson.loads(response_text) if response_text is not None else None
        newer = orjson.loads(newer_text) if newer_text is not None else None
        try:
            example = chat_example(request, response, output=newer, train_on=job.train_on, prune_rules=rules)
            pair = (
                preference_example(request, newer, output_message(response), prune_rules=rules)
                if newer is not None and response is not None
                else None
            )
        except UnconvertibleCallError as exc:
            prepared.append(PreparedEntry(entry, call_id, None, reason=str(exc)))
            continue
        key = split_key(cluster_key, input_hash, call_id)
        side = stable_split(key, job.test_fraction, salt=job.salt, stratum=stratum if job.stratify else None)
        issues, tokens = chat_check.check(example)
        pair_issues: list[Issue] = []
        pair_tokens = None
        if pair is not None:
            pair_issues, pair_tokens = pair_check.check(pair)
        prepared.append(
            PreparedEntry(
                entry,
                call_id,
                side,
                line=orjson.dumps(example) + b"\n",
                issues=tuple(issues),
                tokens=tokens,
                pair=None if pair is None else orjson.dumps(pair) + b"\n",
                pair_issues=tuple(pair_issues),
                pair_tokens=pair_tokens,
            )
        )
    return prepared


def prepared_batches(
    job: ExportJob, batches: Iterable[Sequence[EntryRow]], workers: int
) -> Iterator[list[PreparedEntry]]:
    """``prepare_entries`` of each batch, in order, in ``workers`` processes (``flywheel.parallel``)."""
    return ordered_map(partial(prepare_entries, job), (list(batch) for batch in batches), workers)


@cache
def _checkers(base_model: str | None) -> tuple[DatasetValidator, DatasetValidator]:
    # Only their stateless ``check`` is used here (the encoding is loaded once per process).
    return (
        DatasetValidator(method="supervised", base_model=base_model),
        DatasetValidator(method="dpo", base_model=base_model),
    )


def job_rules(rules: Sequence[PruneRule]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Prune rules in the hashable form ``ExportJob.prune_rules`` holds."""
    return tuple(
        tuple(
            sorted(
                (key, tuple(value) if isinstance(value, list) else value)
                for key, value in rule.as_dict().items()
            )
        )
        for rule in rules
    )


@cache
def _rules(rules: tuple[tuple[tuple[str, Any], ...], ...]) -> list[PruneRule]:
    return [
        prune_rule_from_dict({key: list(value) if isinstance(value, tuple) else value for key, value in rule})
        for rule in rules
    ]
