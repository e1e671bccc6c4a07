"""When a pipeline trains: its thresholds against the dataset's training examples and its last job.

- The first job needs ``min_examples`` training examples: entries of the dataset's newest version
  on the train side of its split (the side the export will put them on, from the same stable rule).
- A later job needs ``retrain_after_new`` *new* training examples: train-side entries added after
  the dataset version the last job was trained on (so a dedup that removes old entries neither
  helps nor hurts the count).
- Never while a job of the pipeline is still unfinished, never twice for one dataset version, and
  at most once per ``min_interval``.

``decide`` is the pure rule; ``train_side_counts`` reads what it needs (keys only, no bodies).
The counts are what the split gives before validation: the export may still leave out invalid
examples (the job records the exact number written).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import call_tags, calls, dataset_entries

from ..datasets import entries_at
from ..export import SplitRules
from ..split import split_key, stable_split
from .config import ExportStep, Pipeline, TrainSettings
from .job_rows import TrackedJob, jobs_of, last_sent

__all__ = [
    "Decision",
    "TrainSideCounts",
    "current_decision",
    "decide",
    "split_rules",
    "train_side_counts",
]


@dataclass(frozen=True, slots=True)
class TrainSideCounts:
    """Train-side entries of a dataset version: all of them, and those added after a version."""

    total: int
    added_after: int


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to launch now, and the reason in words (what ``watch`` logs)."""

    launch: bool
    reason: str
    examples: int
    needed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "launch": self.launch,
            "reason": self.reason,
            "examples": self.examples,
            "needed": self.needed,
        }


def decide(
    train: TrainSettings,
    counts: TrainSideCounts,
    dataset_version: int,
    last: TrackedJob | None,
    unfinished: TrackedJob | None,
    now: datetime,
) -> Decision:
    """The thresholds' verdict for a dataset at ``dataset_version`` (pure)."""
    if last is None:
        needed, have = train.min_examples, counts.total
        enough = f"{have} of {needed} examples"
    else:
        needed = train.retrain_after_new if train.retrain_after_new is not None else train.min_examples
        have = counts.added_after
        enough = (
            f"{have} of {needed} new examples since job {last.id} (dataset version {last.dataset_version})"
        )
    if unfinished is not None:
        return Decision(False, f"job {unfinished.id} is {unfinished.status}; {enough}", have, needed)
    if last is not None and last.dataset_version >= dataset_version:
        return Decision(False, f"no new dataset version since job {last.id}", have, needed)
    if have < needed:
        return Decision(False, f"{enough}, not launching", have, needed)
    if last is not None and train.min_interval is not None:
        wait_until = last.created_at + train.min_interval
        if now < wait_until:
            left = _duration(wait_until - now)
            return Decision(False, f"{enough}, but min_interval leaves {left} to wait", have, needed)
    return Decision(True, f"{enough}, launching", have, needed)


def current_decision(conn: Connection, pipeline: Pipeline, dataset: sa.Row[Any], now: datetime) -> Decision:
    """The thresholds' verdict on ``pipeline``'s ``dataset`` row as the store has it now."""
    history = jobs_of(conn, pipeline.name)
    last = last_sent(history)
    unfinished = next((job for job in history if not job.finished), None)
    rules = split_rules(dataset.settings, pipeline.export)
    after = last.dataset_version if last is not None else None
    counts = train_side_counts(conn, int(dataset.id), int(dataset.version), rules, after)
    return decide(pipeline.training(), counts, int(dataset.version), last, unfinished, now)


def split_rules(dataset_settings: str, export: ExportStep) -> SplitRules:
    """The split the export will use: the dataset's stored rules (``datasets.settings``, JSON) with
    the pipeline's changes."""
    stored = SplitRules.from_dict(orjson.loads(dataset_settings).get("split", {}))
    return stored.changed(
        test_fraction=export.test_fraction, stratify_by=export.stratify_by, salt=export.salt
    )


def train_side_counts(
    conn: Connection, dataset_id: int, version: int, rules: SplitRules, after_version: int | None
) -> TrainSideCounts:
    """Count the train-side entries of the dataset at ``version`` (and those added after
    ``after_version``), reading only their split keys."""
    e, c = dataset_entries.c, calls.c
    stratum: Any = sa.null()
    if rules.stratify_by is not None:
        stratum = (
            sa.select(call_tags.c.value)
            .where(call_tags.c.call_id == e.call_id, call_tags.c.key == rules.stratify_by)
            .scalar_subquery()
        )
    statement = (
        sa.select(e.cluster_key, c.input_hash, e.call_id, e.added_in, stratum)
        .select_from(dataset_entries.join(calls, calls.c.id == e.call_id))
        .where(entries_at(dataset_id, version))
        .execution_options(stream_results=True, yield_per=10_000)
    )
    total = added_after = 0
    for cluster_key, input_hash, call_id, added_in, value in conn.execute(statement):
        side = stable_split(
            split_key(cluster_key, input_hash, call_id), rules.test_fraction, salt=rules.salt, stratum=value
        )
        if side == "train":
            total += 1
            if after_version is not None and added_in > after_version:
                added_after += 1
    conn.rollback()
    return TrainSideCounts(total, added_after)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
