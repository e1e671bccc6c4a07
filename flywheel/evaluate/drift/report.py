"""``flywheel drift NAME``: a pipeline's recent traffic against the data its model was trained on.

``drift_report`` reads the two sides (``sides``: the training data, and the recent calls in
``[since, now)``, default the 7 days before now), each sampled deterministically to at most
``sample_limit`` calls (default 5,000). Then ``shifts`` compares input length (tokens), words,
novelty (MinHash near neighbours at the dedup step's threshold, on the text dedup compares,
boilerplate learned from the training side), and the mix of models and of each tag key
(``flywheel_*`` tags left out).

Verdict: ``retrain_due`` when the length, words or novelty are flagged; ``eval_due`` when the
pipeline's current model (its newest ``promotions`` row, else the configured ``base_model``) has
no finished eval run on the newest export's dataset version, or when any statistic is flagged.
Below ``min_recent`` recent calls (default 50) no statistic is computed ("not enough recent
traffic"), so a quiet week never raises a false alarm.

Invariant: read-only; the same store, pipeline and window give the same report.

The report (``DriftReport.as_dict()``, printed by ``flywheel drift NAME --json``)::

    {
      "pipeline": "classify", "dataset": "classify",
      "training_source": "export" | "dataset",   # the train split of an export, or the entries
      "dataset_version": 4, "export_id": 2 | null,
      "since": "...+00:00", "until": "...+00:00",
      "training": {"calls": 1600, "sampled": 1600},
      "recent":   {"calls": 312, "sampled": 312},
      "sample_limit": 5000, "min_recent": 50, "enough_traffic": true,
      "statistics": {                            # each null when not enough traffic
        "length": {"ks_statistic", "p_value", "training": {"median", "p95"},
                   "recent": {"median", "p95"}, "threshold", "flagged", "reason"},
        "words": {"jensen_shannon_bits", "chance_bits", "excess_bits", "p_value",
                  "training_words", "recent_words", "rising_words", "threshold", "flagged", "reason"},
        "novelty": {"novel", "compared", "share", "share_against_half" | null,
                    "baseline_share" | null, "p_value",
                    "near_threshold", "threshold", "flagged", "reason"},
        "model_mix": {"total_variation", "chance", "excess", "p_value", "training": {value: share},
                      "recent": {value: share}, "threshold", "flagged", "reason"},
        "tag_mix": {"<tag key>": {same fields as model_mix}}
      },
      "flagged": ["length", "words", "novelty", "model_mix", "tag:locale"],
      "current_model": "ft:..." | null,
      "retrain_due": true, "retrain_reasons": ["..."],
      "eval_due": true, "eval_reasons": ["..."],
      "notes": ["..."]
    }
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import datasets, eval_runs

from ...errors import UsageError
from ...near_duplicates import DEFAULT_THRESHOLD, Boilerplate, learn_boilerplate, near_duplicate_clusters
from ...query import as_utc, connect
from ...train.config import Pipeline
from ..promote import current_model
from .shifts import (
    LengthShift,
    MixShift,
    NoveltyShift,
    WordShift,
    length_shift,
    mix_shift,
    novelty_shift,
    word_shift,
    words_of,
)
from .sides import CallInput, TrainingSide, call_inputs, recent_side, training_side

__all__ = ["DEFAULT_WINDOW", "MAX_TAG_KEYS", "MIN_RECENT", "SAMPLE_LIMIT", "DriftReport", "drift_report"]

SAMPLE_LIMIT = 5000
"""Calls sampled per side at most: about 3 s of token counting and sketching for both sides."""
MIN_RECENT = 50
"""Recent calls needed before any statistic is judged."""
DEFAULT_WINDOW = timedelta(days=7)
MAX_TAG_KEYS = 20
"""Tag keys compared at most (the most frequent ones)."""
BASELINE_FROM = 40
"""Training inputs from which a novelty baseline is measured (two halves of at least 20)."""


@dataclass(slots=True)
class DriftReport:
    """What ``drift_report`` found; ``as_dict()`` is the JSON described in the module docstring."""

    pipeline: str
    dataset: str
    training_source: str
    dataset_version: int
    export_id: int | None
    since: datetime
    until: datetime
    training_calls: int
    training_sampled: int
    recent_calls: int
    recent_sampled: int
    sample_limit: int
    min_recent: int
    current_model: str | None
    length: LengthShift | None = None
    words: WordShift | None = None
    novelty: NoveltyShift | None = None
    model_mix: MixShift | None = None
    tag_mix: dict[str, MixShift] = field(default_factory=dict)
    retrain_reasons: list[str] = field(default_factory=list)
    eval_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def enough_traffic(self) -> bool:
        return self.recent_sampled >= self.min_recent

    @property
    def flagged(self) -> list[str]:
        """Names of the flagged statistics (``tag:KEY`` for a tag key)."""
        found = [
            name
            for name, shift in (
                ("length", self.length),
                ("words", self.words),
                ("novelty", self.novelty),
                ("model_mix", self.model_mix),
            )
            if shift is not None and shift.flagged
        ]
        return found + [f"tag:{key}" for key, shift in self.tag_mix.items() if shift.flagged]

    @property
    def retrain_due(self) -> bool:
        return any(shift is not None and shift.flagged for shift in (self.length, self.words, self.novelty))

    @property
    def eval_due(self) -> bool:
        return bool(self.eval_reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "dataset": self.dataset,
            "training_source": self.training_source,
            "dataset_version": self.dataset_version,
            "export_id": self.export_id,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "training": {"calls": self.training_calls, "sampled": self.training_sampled},
            "recent": {"calls": self.recent_calls, "sampled": self.recent_sampled},
            "sample_limit": self.sample_limit,
            "min_recent": self.min_recent,
            "enough_traffic": self.enough_traffic,
            "statistics": {
                "length": None if self.length is None else self.length.as_dict(),
                "words": None if self.words is None else self.words.as_dict(),
                "novelty": None if self.novelty is None else self.novelty.as_dict(),
                "model_mix": None if self.model_mix is None else self.model_mix.as_dict(),
                "tag_mix": {key: shift.as_dict() for key, shift in self.tag_mix.items()},
            },
            "flagged": self.flagged,
            "current_model": self.current_model,
            "retrain_due": self.retrain_due,
            "retrain_reasons": self.retrain_reasons,
            "eval_due": self.eval_due,
            "eval_reasons": self.eval_reasons,
            "notes": self.notes,
        }


def drift_report(
    database_url: str,
    pipeline: Pipeline,
    *,
    since: datetime | None = None,
    now: datetime | None = None,
    sample_limit: int = SAMPLE_LIMIT,
    min_recent: int = MIN_RECENT,
    near_threshold: float | None = None,
) -> DriftReport:
    """Compare ``pipeline``'s recent traffic (``since`` to ``now``) with its training data.

    ``near_threshold`` (default: the pipeline's dedup ``near_threshold``, else
    ``near_duplicates.DEFAULT_THRESHOLD``) is the similarity at which a training input counts as a
    recent one's near neighbour. Raises ``UsageError`` when the pipeline has no training data yet
    (no dataset, or an empty one) or the window is empty.
    """
    until = as_utc(now) if now is not None else datetime.now(UTC)
    start = as_utc(since) if since is not None else until - DEFAULT_WINDOW
    if start >= until:
        raise UsageError(
            f"the window is empty: {start.isoformat()} is not before {until.isoformat()}", "--since"
        )
    if sample_limit < 1 or min_recent < 1:
        raise UsageError("sample_limit and min_recent must be at least 1", "sample_limit")
    threshold = near_threshold or (pipeline.dedup.near_threshold if pipeline.dedup else DEFAULT_THRESHOLD)
    with connect(database_url) as conn:
        dataset = conn.execute(sa.select(datasets).where(datasets.c.name == pipeline.dataset)).one_or_none()
        if dataset is None:
            raise UsageError(
                _no_training(pipeline, f"its dataset {pipeline.dataset!r} does not exist yet"), pipeline.name
            )
        training = training_side(conn, dataset, sample_limit)
        if not training.sample:
            raise UsageError(
                _no_training(pipeline, f"its dataset {pipeline.dataset!r} is empty"), pipeline.name
            )
        recent = recent_side(conn, pipeline, dataset.id, training, start, until, sample_limit)
        current = current_model(conn, pipeline)
        report = DriftReport(
            pipeline=pipeline.name,
            dataset=pipeline.dataset,
            training_source=training.source,
            dataset_version=training.dataset_version,
            export_id=training.export_id,
            since=start,
            until=until,
            training_calls=training.total,
            training_sampled=len(training.sample),
            recent_calls=recent.total,
            recent_sampled=len(recent.sample),
            sample_limit=sample_limit,
            min_recent=min_recent,
            current_model=current,
        )
        report.eval_reasons.extend(_eval_gaps(conn, pipeline, training, current))
        if report.enough_traffic:
            training_inputs = call_inputs(conn, training.sample)
            if not training_inputs:
                raise UsageError(
                    _no_training(pipeline, "the calls of its training data are no longer in the store"),
                    pipeline.name,
                )
            report.training_sampled = len(training_inputs)
            _compare(report, training_inputs, call_inputs(conn, recent.sample), threshold, training)
    _conclude(report)
    return report


def _no_training(pipeline: Pipeline, why: str) -> str:
    return (
        f"pipeline {pipeline.name!r} has no training data yet: {why}; run 'flywheel train "
        f"{pipeline.name}' (or 'flywheel dataset create' and 'flywheel export') first"
    )


# --- comparing -------------------------------------------------------------------------------------


def _compare(
    report: DriftReport,
    training: list[CallInput],
    recent: list[CallInput],
    threshold: float,
    source: TrainingSide,
) -> None:
    boilerplate = learn_boilerplate(item.text for item in training)
    report.length = length_shift([item.tokens for item in training], [item.tokens for item in recent])
    report.words = word_shift(
        [words_of(boilerplate.without_lines(item.text)) for item in training],
        [words_of(boilerplate.without_lines(item.text)) for item in recent],
    )
    # One clustering of both training halves and the recent inputs answers every question: which
    # recent inputs have a neighbour in all of training, and, like with like for the baseline,
    # which held-out (odd) training inputs and which recent ones have one in the even half.
    halves = {"even": [item.text for item in training[0::2]], "odd": [item.text for item in training[1::2]]}
    found = _cluster_groups({**halves, "recent": [item.text for item in recent]}, threshold, boilerplate)
    novel = sum(1 for groups in found["recent"] if not groups & {"even", "odd"})
    if source.near_deduplicated or len(training) < BASELINE_FROM:
        why = (
            "the training data was deduplicated at near-duplicate level, so its inputs have no near "
            "neighbours among themselves"
            if source.near_deduplicated
            else f"fewer than {BASELINE_FROM} training inputs"
        )
        report.notes.append(f"novelty is judged without a baseline: {why}")
        report.novelty = novelty_shift(novel, len(recent), threshold=threshold)
    else:
        report.novelty = novelty_shift(
            novel,
            len(recent),
            threshold=threshold,
            baseline_novel=sum(1 for groups in found["odd"] if "even" not in groups),
            baseline_count=len(halves["odd"]),
            compared_novel=sum(1 for groups in found["recent"] if "even" not in groups),
        )
    report.model_mix = mix_shift("model", [item.model for item in training], [item.model for item in recent])
    report.tag_mix = {
        key: mix_shift(
            f"tag {key}", [item.tags.get(key) for item in training], [item.tags.get(key) for item in recent]
        )
        for key in _tag_keys([*training, *recent])
    }


def _tag_keys(items: Iterable[CallInput]) -> list[str]:
    counts: dict[str, int] = {}
    for item in items:
        for key in item.tags:
            counts[key] = counts.get(key, 0) + 1
    return sorted(sorted(counts, key=lambda key: (-counts[key], key))[:MAX_TAG_KEYS])


def _cluster_groups(
    groups: dict[str, list[str]], threshold: float, boilerplate: Boilerplate
) -> dict[str, list[frozenset[str]]]:
    """For each text of each group, the groups found in its near-duplicate cluster (none when it
    has no near neighbour at all).

    Clusters are connected components, so a text may reach a group through a third text close to
    both: a slight undercount of novelty, alike for the recent and the held-out inputs.
    """
    items = [((group, i), text) for group, texts in groups.items() for i, text in enumerate(texts)]
    alone: frozenset[str] = frozenset()
    found = {group: [alone] * len(texts) for group, texts in groups.items()}
    for cluster in near_duplicate_clusters(items, threshold=threshold, boilerplate=boilerplate):
        present = frozenset(group for group, _ in cluster)
        for group, index in cluster:
            found[group][index] = present
    return found


# --- the verdict ------------------------------------------------------------------------------------


def _eval_gaps(
    conn: Connection, pipeline: Pipeline, training: TrainingSide, current: str | None
) -> list[str]:
    """Why an eval is due regardless of drift: no test split yet, or no finished eval of the current
    model on the newest export."""
    if training.source != "export":
        return [f"dataset {pipeline.dataset!r} has no export yet, so no test split to evaluate on"]
    runs = conn.execute(
        sa.select(eval_runs.c.candidates).where(
            eval_runs.c.pipeline == pipeline.name,
            eval_runs.c.status == "finished",
            eval_runs.c.dataset_version == training.dataset_version,
        )
    ).scalars()
    evaluated: set[str] = set()
    any_run = False
    for candidates in runs:
        any_run = True
        for candidate in orjson.loads(candidates) if candidates else []:
            if isinstance(candidate, dict) and not candidate.get("few_shot"):
                evaluated.update(str(candidate[key]) for key in ("name", "model") if candidate.get(key))
    version = training.dataset_version
    if current is None:
        return [] if any_run else [f"no finished eval on dataset version {version} (the newest export)"]
    if current in evaluated:
        return []
    return [
        f"the current model {current} has no finished eval on dataset version {version} (the newest "
        f"export): flywheel eval {pipeline.name} --models {current}"
    ]


def _conclude(report: DriftReport) -> None:
    """The verdict's reasons and the notes on sampling, from what was measured."""
    if not report.enough_traffic:
        report.retrain_reasons.append(
            f"not enough recent traffic: {report.recent_sampled} calls since "
            f"{report.since:%Y-%m-%d %H:%M} UTC (at least {report.min_recent} are needed to judge drift)"
        )
    for shift in (report.length, report.words, report.novelty):
        if shift is not None and shift.flagged:
            report.retrain_reasons.append(shift.reason)
    if report.enough_traffic and not report.retrain_due:
        report.retrain_reasons.append("recent inputs are like the training inputs (length, words, novelty)")
    if report.flagged:
        report.eval_reasons.append(
            f"drift is flagged ({', '.join(report.flagged)}): the last eval may not reflect today's traffic"
        )
    for side, total, sampled in (
        ("training", report.training_calls, report.training_sampled),
        ("recent", report.recent_calls, report.recent_sampled),
    ):
        if sampled < total:
            report.notes.append(
                f"{side}: a deterministic sample of {sampled:,} of {total:,} calls "
                "(by the random part of the call id)"
            )
