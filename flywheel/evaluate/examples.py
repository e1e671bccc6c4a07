"""The examples an evaluation runs on: the test split the pipeline's newest export held out.

The test split is the one the fine-tune never saw: the call ids listed under ``splits.test`` in the
manifest of the dataset's newest export (``exports`` table). Each example is the app's recorded
call: its request as logged (messages, tools and sampling parameters: a candidate is asked exactly
what the app asked) and its reference answer, the assistant message the export wrote for it (a
relabel or a human edit where the dataset has one at the exported version, else the call's own
answer). The train side of the same export is where few-shot examples come from.

Invariant: an evaluation and its report agree on the examples because both read them from one
export row, by id; a newer export does not change what an existing run compares.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import calls, dataset_entries, datasets, entry_outputs, exports

from ..datasets import current_output_id
from ..errors import UsageError
from ..finetune_format import UnconvertibleCallError, output_message

__all__ = ["Example", "ExportedSplit", "examples_of", "export_by_id", "newest_export"]

PAGE_IDS = 500
"""Call ids read per query (keeps ``IN`` lists short)."""


@dataclass(frozen=True, slots=True)
class ExportedSplit:
    """The export an evaluation uses: its id, dataset version and the call ids on each side."""

    export_id: int
    dataset_id: int
    dataset: str
    dataset_version: int
    test: tuple[str, ...]
    train: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Example:
    """One example: the app's call, its request as logged, and the reference answer."""

    call_id: str
    request: dict[str, Any]
    reference: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.request.get("messages")
        return list(messages) if isinstance(messages, list) else []

    def as_dict(self) -> dict[str, Any]:
        """What a user scorer receives as ``example``."""
        return {"call_id": self.call_id, "messages": self.messages, "request": self.request}


def newest_export(conn: Connection, dataset: str, *, pipeline: str) -> ExportedSplit:
    """The newest export of ``dataset``; a ``UsageError`` when there is none or its test side is empty."""
    d, x = datasets.c, exports.c
    row = conn.execute(
        sa.select(x.id, x.dataset_id, x.version, x.manifest, d.name)
        .select_from(exports.join(datasets, d.id == x.dataset_id))
        .where(d.name == dataset)
        .order_by(x.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        raise UsageError(
            f"pipeline {pipeline!r} has no test split yet: dataset {dataset!r} was never exported "
            f"(run `flywheel train {pipeline}` or `flywheel export {dataset} --out DIR`)",
            pipeline,
        )
    split = _split(row)
    if not split.test:
        raise UsageError(
            f"the newest export of dataset {dataset!r} (version {split.dataset_version}) has an empty "
            "test split; export with a larger test_fraction",
            pipeline,
        )
    return split


def export_by_id(conn: Connection, export_id: int) -> ExportedSplit:
    """The export with id ``export_id`` (the one a run was started on)."""
    d, x = datasets.c, exports.c
    row = conn.execute(
        sa.select(x.id, x.dataset_id, x.version, x.manifest, d.name)
        .select_from(exports.join(datasets, d.id == x.dataset_id))
        .where(x.id == export_id)
    ).one()
    return _split(row)


def examples_of(
    conn: Connection, split: ExportedSplit, ids: Sequence[str] | None = None
) -> Iterator[Example]:
    """The examples of ``split``'s test side (or of the call ids ``ids``, e.g. some of its train
    side), in that order, a page of ids at a time.

    A call whose answer cannot be a reference (it would not have been exported) is skipped.
    """
    ids = split.test if ids is None else ids
    e, c, o = dataset_entries.c, calls.c, entry_outputs.c
    joined = dataset_entries.join(calls, c.id == e.call_id).outerjoin(
        entry_outputs, o.id == current_output_id(split.dataset_version)
    )
    for start in range(0, len(ids), PAGE_IDS):
        page = list(ids[start : start + PAGE_IDS])
        rows = conn.execute(
            sa.select(e.call_id, c.request, c.response, o.output)
            .select_from(joined)
            .where(e.dataset_id == split.dataset_id, e.call_id.in_(page))
        ).all()
        by_id = {row.call_id: row for row in rows}
        for call_id in page:
            row = by_id.get(call_id)
            if row is None or row.request is None:
                continue
            example = _example(call_id, row.request, row.response, row.output)
            if example is not None:
                yield example


def _example(
    call_id: str, request_text: str, response_text: str | None, output: str | None
) -> Example | None:
    request = orjson.loads(request_text)
    if not isinstance(request, dict):
        return None
    if output is not None:
        reference = orjson.loads(output)
    else:
        try:
            reference = output_message(orjson.loads(response_text or "null") or {})
        except UnconvertibleCallError:
            return None
    return Example(call_id, request, reference)


def _split(row: Any) -> ExportedSplit:
    manifest = orjson.loads(row.manifest)
    splits = manifest.get("splits") or {}
    return ExportedSplit(
        export_id=row.id,
        dataset_id=row.dataset_id,
        dataset=row.name,
        dataset_version=row.version,
        test=tuple(splits.get("test") or ()),
        train=tuple(splits.get("train") or ()),
    )
