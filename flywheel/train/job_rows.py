"""Training jobs as read from the store: ``TrackedJob`` (a row, JSON columns decoded) and the queries
that list them. Writing is ``flywheel.train.jobs``'s job; nothing here changes a row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import datasets, fine_tune_job_events, fine_tune_jobs

from ..datasets import NotFoundError
from ..query import as_utc, connect
from .providers.base import TERMINAL_STATUSES

__all__ = [
    "FINISHED",
    "JSON_COLUMNS",
    "PREPARING",
    "REFUSED",
    "RETRYABLE",
    "TrackedJob",
    "get_job",
    "job_for_version",
    "jobs_of",
    "last_sent",
    "launch_blocker",
    "list_jobs",
    "read_job",
    "unfinished_jobs",
]

PREPARING = "preparing"
"""Claimed; being exported, uploaded or created. The provider may not have it yet."""
REFUSED = "refused"
"""Never sent to the provider (estimated over ``max_cost_usd``)."""
FINISHED = TERMINAL_STATUSES | {REFUSED}
RETRYABLE = frozenset({"failed", "cancelled", REFUSED})
"""Ends after which ``flywheel train`` may try the same dataset version again (a new attempt)."""
JSON_COLUMNS = frozenset({"hyperparameters", "settings", "files", "details"})

_J = fine_tune_jobs.c


@dataclass(frozen=True, slots=True)
class TrackedJob:
    """A job as stored, with (from ``get_job``) its events."""

    id: int
    key: str
    pipeline: str
    dataset: str
    dataset_id: int
    dataset_version: int
    attempt: int
    provider: str
    provider_job_id: str | None
    status: str
    base_model: str
    method: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    settings: dict[str, Any]
    export_dir: str | None
    files: dict[str, Any]
    train_examples: int | None
    test_examples: int | None
    training_tokens: int | None
    estimated_cost_usd: float | None
    trained_tokens: int | None
    fine_tuned_model: str | None
    error: str | None
    details: dict[str, Any]
    last_event_id: str | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    create_sent_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def work_dir(self) -> Path:
        """The job's own directory (its export, a local trainer's files), set when it was claimed."""
        return Path(self.details["work_dir"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``flywheel jobs --json`` prints it."""
        described: dict[str, Any] = {
            "id": self.id,
            "pipeline": self.pipeline,
            "provider": self.provider,
            "provider_job_id": self.provider_job_id,
            "status": self.status,
            "base_model": self.base_model,
            "fine_tuned_model": self.fine_tuned_model,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "attempt": self.attempt,
            "train_examples": self.train_examples,
            "test_examples": self.test_examples,
            "training_tokens": self.training_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "trained_tokens": self.trained_tokens,
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "suffix": self.suffix,
            "seed": self.seed,
            "files": self.files,
            "export_dir": self.export_dir,
            "error": self.error,
            "key": self.key,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
        }
        if self.events:
            described["events"] = self.events
        return described


# --- reading ----------------------------------------------------------------------------------------


def list_jobs(database_url: str, pipeline: str | None = None) -> list[TrackedJob]:
    """Every job (of ``pipeline``), newest first."""
    with connect(database_url) as conn:
        return jobs_of(conn, pipeline)


def get_job(database_url: str, job_id: int) -> TrackedJob:
    """Job ``job_id`` with its events, oldest first; ``NotFoundError`` when there is none."""
    with connect(database_url) as conn:
        return read_job(conn, job_id, with_events=True)


def jobs_of(conn: Connection, pipeline: str | None = None) -> list[TrackedJob]:
    statement = _select()
    if pipeline is not None:
        statement = statement.where(_J.pipeline == pipeline)
    rows = conn.execute(statement.order_by(_J.id.desc())).all()
    conn.rollback()
    return [_from_row(row) for row in rows]


def unfinished_jobs(conn: Connection, pipeline: str | None = None) -> list[TrackedJob]:
    """Jobs not finished yet (``preparing`` ones included), oldest first."""
    statement = _select().where(_J.status.not_in(sorted(FINISHED)))
    if pipeline is not None:
        statement = statement.where(_J.pipeline == pipeline)
    rows = conn.execute(statement.order_by(_J.id)).all()
    conn.rollback()
    return [_from_row(row) for row in rows]


def job_for_version(conn: Connection, pipeline: str, dataset_id: int, version: int) -> TrackedJob | None:
    """The newest attempt for that dataset version, if there is one."""
    row = conn.execute(
        _select()
        .where(_J.pipeline == pipeline, _J.dataset_id == dataset_id, _J.dataset_version == version)
        .order_by(_J.attempt.desc())
        .limit(1)
    ).first()
    conn.rollback()
    return None if row is None else _from_row(row)


def launch_blocker(
    conn: Connection, pipeline: str, dataset: str, dataset_id: int, version: int
) -> tuple[int, str | None]:
    """The attempt a launch on this dataset version would be, and why it may not launch now
    (``None``: it may). ``flywheel train`` and its ``--dry-run`` plan both ask this, so the plan
    never promises a launch that ``train`` then refuses."""
    existing = job_for_version(conn, pipeline, dataset_id, version)
    if existing is not None and existing.status not in RETRYABLE:
        return existing.attempt, (
            f"dataset {dataset} version {version} already has job {existing.id} ({existing.status}); "
            "a new job needs new data"
        )
    pending = unfinished_jobs(conn, pipeline)
    attempt = 1 if existing is None else existing.attempt + 1
    if pending:
        return attempt, f"job {pending[-1].id} of pipeline {pipeline} is still {pending[-1].status}"
    return attempt, None


def read_job(conn: Connection, job_id: int, *, with_events: bool = False) -> TrackedJob:
    row = conn.execute(_select().where(_J.id == job_id)).first()
    if row is None:
        conn.rollback()
        raise NotFoundError(f"no training job {job_id}", str(job_id))
    events: list[dict[str, Any]] = []
    if with_events:
        v = fine_tune_job_events.c
        for event in conn.execute(
            sa.select(v.created_at, v.kind, v.level, v.message, v.data)
            .where(v.job_id == job_id)
            .order_by(v.created_at, v.id)
        ):
            events.append(
                {
                    "created_at": _iso(event.created_at),
                    "kind": event.kind,
                    "level": event.level,
                    "message": event.message,
                    "data": orjson.loads(event.data) if event.data else None,
                }
            )
    conn.rollback()
    return _from_row(row, events)


def _select() -> sa.Select[Any]:
    return sa.select(fine_tune_jobs, datasets.c.name.label("dataset_name")).join(
        datasets, datasets.c.id == _J.dataset_id
    )


def _from_row(row: sa.Row[Any], events: list[dict[str, Any]] | None = None) -> TrackedJob:
    """The row as a ``TrackedJob``: its columns by name, JSON decoded, times in UTC."""
    values = dict(row._mapping)
    values["dataset"] = values.pop("dataset_name")
    for name, value in values.items():
        if name in JSON_COLUMNS:
            values[name] = _loads(value)
        elif isinstance(value, datetime):
            values[name] = as_utc(value)
    return TrackedJob(**values, events=events or [])


def last_sent(history: Sequence[TrackedJob]) -> TrackedJob | None:
    """The newest job of ``history`` (newest first) that was meant to train (a refused one never was)."""
    return next((job for job in history if job.status != REFUSED), None)


def _loads(text: str | None) -> dict[str, Any]:
    return dict(orjson.loads(text)) if text else {}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
