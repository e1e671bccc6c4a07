"""The two samples ``flywheel drift`` compares, read from the store.

- **training**: the call ids of the train split of the newest export of the pipeline's dataset
  (``exports.manifest``); when the dataset has no export yet, its entries at the newest version.
- **recent**: the app's chat calls that the pipeline's filter selects, created in
  ``[since, now)``, that no export of the dataset holds (neither split; without an export: that
  the dataset does not hold). App calls are those a dataset would take in (answered chat
  completions, read to the end), minus the flywheel's own relabel and eval calls (tags
  ``flywheel_relabel``, ``flywheel_eval``).

Each side is sampled to at most a limit of calls by the random part of the call id (its last 20
hex characters), in the database: deterministic, the same calls on every run, and a larger window
keeps most of a smaller one's sample. Of each sampled call, ``call_inputs`` reads what the
statistics need: the model, the tags (``flywheel_*`` tags left out), the input length in tokens
(``o200k_base`` for both sides so lengths compare) and the text dedup compares.

Invariant: read-only; the same store and window give the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from sdk.schema import call_tags, calls, dataset_entries, exports

from ...datasets import entries_at, trainable_conditions
from ...near_duplicates import input_text
from ...query import filter_conditions
from ...tokens import count_messages, count_tools, load_encoding
from ...train.config import Pipeline

__all__ = [
    "CallInput",
    "RecentSide",
    "TrainingSide",
    "call_inputs",
    "recent_conditions",
    "recent_side",
    "training_side",
]

_ID_RANDOM_PART = 13  # SQL substr() position: call ids are 12 hex of time, then 20 random ones
_CHUNK = 500
_ENCODING = "o200k_base"


@dataclass(frozen=True, slots=True)
class CallInput:
    """What the statistics need of one call."""

    model: str | None
    tags: dict[str, str]
    tokens: int
    text: str
    """The text dedup compares (``near_duplicates.input_text``)."""


@dataclass(frozen=True, slots=True)
class TrainingSide:
    """The training side: where it comes from, its size and its deterministic sample of call ids."""

    source: str
    """``"export"`` (the train split of the newest export) or ``"dataset"`` (the entries)."""
    dataset_version: int
    export_id: int | None
    total: int
    sample: list[str]
    near_deduplicated: bool


@dataclass(frozen=True, slots=True)
class RecentSide:
    """The recent side: how many calls the window holds and the deterministic sample of their ids."""

    total: int
    sample: list[str]


def training_side(conn: Connection, dataset: sa.Row[Any], limit: int) -> TrainingSide:
    """The training side: the newest export's train split, else the dataset's entries."""
    export = conn.execute(
        sa.select(exports.c.id, exports.c.version, exports.c.manifest)
        .where(exports.c.dataset_id == dataset.id)
        .order_by(exports.c.id.desc())
        .limit(1)
    ).one_or_none()
    if export is not None:
        manifest = orjson.loads(export.manifest)
        train_ids = [str(call_id) for call_id in manifest.get("splits", {}).get("train", [])]
        dedup = (manifest.get("rules") or {}).get("dedup")
        sample = sorted(train_ids, key=lambda call_id: call_id[_ID_RANDOM_PART - 1 :])[:limit]
        return TrainingSide(
            "export", int(export.version), int(export.id), len(train_ids), sample, _near(dedup)
        )
    e = dataset_entries.c
    held = entries_at(dataset.id, dataset.version)
    total = int(
        conn.execute(sa.select(sa.func.count()).select_from(dataset_entries).where(held)).scalar_one()
    )
    sample = list(
        conn.execute(
            sa.select(e.call_id).where(held).order_by(sa.func.substr(e.call_id, _ID_RANDOM_PART)).limit(limit)
        ).scalars()
    )
    dedup = orjson.loads(dataset.settings or "{}").get("dedup")
    return TrainingSide("dataset", int(dataset.version), None, total, sample, _near(dedup))


def _near(dedup: Any) -> bool:
    """Whether near-duplicates were taken out of the training data (no baseline then, see
    ``report._compare``)."""
    return isinstance(dedup, dict) and not dedup.get("exact")


def recent_conditions(
    pipeline: Pipeline, dataset_id: int, training: TrainingSide, start: datetime, until: datetime
) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions on ``calls`` that select the recent side (module docstring)."""
    e = dataset_entries.c
    seen = sa.exists().where(e.dataset_id == dataset_id, e.call_id == calls.c.id)
    if training.source == "export":
        seen = seen.where(e.first_exported_in.is_not(None))
    else:
        seen = seen.where(entries_at(dataset_id, training.dataset_version))
    return [
        *filter_conditions(pipeline.filter.refreshed(until)),
        calls.c.created_at >= start,
        calls.c.created_at < until,
        *trainable_conditions(),  # the calls a dataset would take in: the same rule, one place
        ~seen,
    ]


def recent_side(
    conn: Connection,
    pipeline: Pipeline,
    dataset_id: int,
    training: TrainingSide,
    start: datetime,
    until: datetime,
    limit: int,
) -> RecentSide:
    """The recent side in ``[start, until)``: its size and a sample of at most ``limit`` call ids."""
    where = recent_conditions(pipeline, dataset_id, training, start, until)
    total = int(conn.execute(sa.select(sa.func.count()).select_from(calls).where(*where)).scalar_one())
    sample = list(
        conn.execute(
            sa.select(calls.c.id)
            .where(*where)
            .order_by(sa.func.substr(calls.c.id, _ID_RANDOM_PART))
            .limit(limit)
        ).scalars()
    )
    return RecentSide(total, sample)


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, _CHUNK)):
        yield chunk


def call_inputs(conn: Connection, call_ids: Sequence[str]) -> list[CallInput]:
    """The calls' inputs, in the order of ``call_ids`` (calls that no longer exist left out)."""
    encoding = load_encoding(_ENCODING)
    found: dict[str, CallInput] = {}
    for chunk in _chunks(call_ids):
        tags: dict[str, dict[str, str]] = {}
        for call_id, key, value in conn.execute(
            sa.select(call_tags.c.call_id, call_tags.c.key, call_tags.c.value).where(
                call_tags.c.call_id.in_(chunk)
            )
        ):
            if not key.startswith("flywheel_"):
                tags.setdefault(call_id, {})[key] = value
        for call_id, model, request_text in conn.execute(
            sa.select(calls.c.id, calls.c.model, calls.c.request).where(calls.c.id.in_(chunk))
        ):
            request = orjson.loads(request_text) if request_text else {}
            messages: list[Any] = request.get("messages") or []
            tools: list[Any] = request.get("tools") or []
            found[call_id] = CallInput(
                model=model,
                tags=tags.get(call_id, {}),
                tokens=count_messages(messages, encoding) + count_tools(tools, encoding),
                text=input_text(messages, tools),
            )
    return [found[call_id] for call_id in call_ids if call_id in found]
