"""Training jobs in the store: the claim row, its lease, its state and its events.

A job's row is inserted *before* anything is exported or uploaded, under the unique index on
``(pipeline, dataset_id, dataset_version, attempt)``: of any number of watchers racing for one
dataset version, exactly one inserts it (the others get an integrity error and leave it alone).
The row then carries the launch through: ``claimed_by`` and ``lease_expires_at`` say who is
launching it and until when nobody else may; ``create_sent_at`` says a create request may have
reached the provider, so whoever resumes the launch must look the job up there first (by ``key``,
sent as metadata ``flywheel_job``) instead of creating it again.

Every function here takes a connection and runs its own short transaction (``_tx``), so that a
watcher never holds a lock while it talks to a provider. Nothing here talks to a provider.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import datasets, fine_tune_job_events, fine_tune_jobs

from ..datasets import NotFoundError, write_transaction
from ..query import as_utc, connect
from .providers.base import TERMINAL_STATUSES, JobEvent, JobState

__all__ = [
    "LEASE",
    "PREPARING",
    "REFUSED",
    "Claim",
    "TrackedJob",
    "add_event",
    "claim_job",
    "claimant",
    "claimant_is_gone",
    "finish_without_provider",
    "get_job",
    "job_for_version",
    "jobs_of",
    "list_jobs",
    "record_state",
    "release",
    "renew",
    "set_fields",
    "take_over",
    "unfinished_jobs",
]

PREPARING = "preparing"
"""Claimed; being exported, uploaded or created. The provider may not have it yet."""
REFUSED = "refused"
"""Never sent to the provider (estimated over ``max_cost_usd``)."""
FINISHED = TERMINAL_STATUSES | {REFUSED}
LEASE = timedelta(minutes=10)
"""How long a claimant may hold a launch without renewing it; longer than any one provider call."""

_J = fine_tune_jobs.c


def claimant() -> str:
    """Who this process is, as ``claimed_by`` records it: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def claimant_is_gone(claimed_by: str | None) -> bool:
    """True when ``claimed_by`` names a process of this host that no longer runs.

    A claimant on another host cannot be checked from here; its lease has to run out instead.
    """
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


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


@dataclass(frozen=True, slots=True)
class Claim:
    """What a new job row starts with (the launch fills in the rest as it goes)."""

    pipeline: str
    dataset_id: int
    dataset_version: int
    attempt: int
    provider: str
    base_model: str
    method: str
    hyperparameters: Mapping[str, Any]
    suffix: str | None
    seed: int | None
    settings: Mapping[str, Any]


@contextmanager
def _tx(conn: Connection) -> Iterator[Connection]:
    """One short write transaction on ``conn`` (on SQLite holding the write lock from its start)."""
    with write_transaction(conn):
        yield conn


def claim_job(conn: Connection, claim: Claim, claimed_by: str, now: datetime) -> TrackedJob | None:
    """Insert the job row for ``claim`` held by ``claimed_by``; ``None`` when that dataset version
    (and attempt) already has a job, whoever inserted it first."""
    values = {
        "key": secrets.token_hex(16),
        "pipeline": claim.pipeline,
        "dataset_id": claim.dataset_id,
        "dataset_version": claim.dataset_version,
        "attempt": claim.attempt,
        "provider": claim.provider,
        "status": PREPARING,
        "base_model": claim.base_model,
        "method": claim.method,
        "hyperparameters": _dumps(claim.hyperparameters),
        "suffix": claim.suffix,
        "seed": claim.seed,
        "settings": _dumps(claim.settings),
        "claimed_by": claimed_by,
        "lease_expires_at": now + LEASE,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with _tx(conn):
            job_id = conn.execute(sa.insert(fine_tune_jobs).values(**values).returning(_J.id)).scalar_one()
            _insert_event(conn, job_id, now, "status", f"claimed by {claimed_by}", data={"to": PREPARING})
    except sa.exc.IntegrityError:
        return None
    return _job(conn, job_id)


def take_over(conn: Connection, job: TrackedJob, claimed_by: str, now: datetime) -> TrackedJob | None:
    """Become the claimant of ``job`` (still ``preparing``) if its claimant's lease ran out or its
    process is gone; ``None`` if someone holds it. A compare-and-set: of two watchers resuming the
    same job, one wins."""
    expired = job.lease_expires_at is None or as_utc(job.lease_expires_at) <= now
    if not (expired or claimant_is_gone(job.claimed_by)):
        return None
    condition = [_J.id == job.id, _J.status == PREPARING]
    condition.append(_J.claimed_by.is_(None) if job.claimed_by is None else _J.claimed_by == job.claimed_by)
    with _tx(conn):
        taken = conn.execute(
            sa.update(fine_tune_jobs)
            .where(*condition)
            .values(claimed_by=claimed_by, lease_expires_at=now + LEASE, updated_at=now)
        ).rowcount
        if taken:
            _insert_event(
                conn,
                job.id,
                now,
                "decision",
                f"launch resumed by {claimed_by} (was {job.claimed_by})",
                data={"from": job.claimed_by, "to": claimed_by},
            )
    return _job(conn, job.id) if taken else None


def renew(conn: Connection, job_id: int, claimed_by: str, now: datetime, **values: Any) -> bool:
    """Extend the lease (and set ``values``) if ``claimed_by`` still holds it; False if it lost it."""
    with _tx(conn):
        updated = conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job_id, _J.claimed_by == claimed_by, _J.status == PREPARING)
            .values(lease_expires_at=now + LEASE, updated_at=now, **_encoded(values))
        ).rowcount
    return bool(updated)


def release(conn: Connection, job_id: int, claimed_by: str, now: datetime) -> None:
    """Give up the lease now (after a transient failure), so the next pass may resume at once."""
    with _tx(conn):
        conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job_id, _J.claimed_by == claimed_by, _J.status == PREPARING)
            .values(lease_expires_at=now, updated_at=now)
        )


def set_fields(conn: Connection, job_id: int, now: datetime, **values: Any) -> None:
    """Set columns of job ``job_id`` (JSON columns take Python values)."""
    with _tx(conn):
        conn.execute(
            sa.update(fine_tune_jobs).where(_J.id == job_id).values(updated_at=now, **_encoded(values))
        )


def add_event(
    conn: Connection,
    job_id: int,
    now: datetime,
    kind: str,
    message: str,
    *,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
) -> None:
    """Record something the flywheel decided or saw about job ``job_id``."""
    with _tx(conn):
        _insert_event(conn, job_id, now, kind, message, level=level, data=data)


def record_state(conn: Connection, job: TrackedJob, state: JobState, now: datetime) -> TrackedJob:
    """Store what the provider said about ``job``: status (with a status event when it changed),
    model, tokens, error, details, and the events not stored yet. Returns the job as stored."""
    values: dict[str, Any] = {"provider_job_id": state.provider_job_id, "status": state.status}
    if state.fine_tuned_model is not None:
        values["fine_tuned_model"] = state.fine_tuned_model
    if state.trained_tokens is not None:
        values["trained_tokens"] = state.trained_tokens
    if state.error is not None:
        values["error"] = state.error
    if state.details:
        values["details"] = {**job.details, **state.details}
    if state.finished and job.finished_at is None:
        values["finished_at"] = now
    with _tx(conn):
        fresh = _new_events(conn, job.id, state.events)
        for event in fresh:
            _insert_event(
                conn,
                job.id,
                as_utc(event.created_at),
                event.kind,
                event.message,
                level=event.level,
                data=event.data or None,
                provider_event_id=event.provider_event_id,
            )
        with_ids = [event.provider_event_id for event in state.events if event.provider_event_id]
        if with_ids:
            values["last_event_id"] = with_ids[-1]
        if state.status != job.status:
            level = "error" if state.status == "failed" else "info"
            message = f"{job.status} -> {state.status}" + (f": {state.error}" if state.error else "")
            _insert_event(
                conn,
                job.id,
                now,
                "status",
                message,
                level=level,
                data={"from": job.status, "to": state.status},
            )
        conn.execute(
            sa.update(fine_tune_jobs).where(_J.id == job.id).values(updated_at=now, **_encoded(values))
        )
    return _job(conn, job.id)


def finish_without_provider(
    conn: Connection, job: TrackedJob, status: str, error: str, now: datetime, *, kind: str = "decision"
) -> TrackedJob:
    """End a ``preparing`` job that never reached the provider (``refused``, or ``failed`` when the
    provider rejected it), with an event that says why."""
    with _tx(conn):
        conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job.id)
            .values(status=status, error=error, finished_at=now, updated_at=now, lease_expires_at=None)
        )
        _insert_event(
            conn,
            job.id,
            now,
            kind,
            error,
            level="error" if status == "failed" else "warning",
            data={"from": job.status, "to": status},
        )
    return _job(conn, job.id)


# --- reading ----------------------------------------------------------------------------------------


def list_jobs(database_url: str, pipeline: str | None = None) -> list[TrackedJob]:
    """Every job (of ``pipeline``), newest first."""
    with connect(database_url) as conn:
        return jobs_of(conn, pipeline)


def get_job(database_url: str, job_id: int) -> TrackedJob:
    """Job ``job_id`` with its events, oldest first; ``NotFoundError`` when there is none."""
    with connect(database_url) as conn:
        return _job(conn, job_id, with_events=True)


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


def _job(conn: Connection, job_id: int, *, with_events: bool = False) -> TrackedJob:
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
    m = row._mapping
    return TrackedJob(
        id=m["id"],
        key=m["key"],
        pipeline=m["pipeline"],
        dataset=m["dataset_name"],
        dataset_id=m["dataset_id"],
        dataset_version=m["dataset_version"],
        attempt=m["attempt"],
        provider=m["provider"],
        provider_job_id=m["provider_job_id"],
        status=m["status"],
        base_model=m["base_model"],
        method=m["method"],
        hyperparameters=_loads(m["hyperparameters"]),
        suffix=m["suffix"],
        seed=m["seed"],
        settings=_loads(m["settings"]),
        export_dir=m["export_dir"],
        files=_loads(m["files"]),
        train_examples=m["train_examples"],
        test_examples=m["test_examples"],
        training_tokens=m["training_tokens"],
        estimated_cost_usd=m["estimated_cost_usd"],
        trained_tokens=m["trained_tokens"],
        fine_tuned_model=m["fine_tuned_model"],
        error=m["error"],
        details=_loads(m["details"]),
        last_event_id=m["last_event_id"],
        claimed_by=m["claimed_by"],
        lease_expires_at=_utc(m["lease_expires_at"]),
        create_sent_at=_utc(m["create_sent_at"]),
        created_at=as_utc(m["created_at"]),
        updated_at=as_utc(m["updated_at"]),
        finished_at=_utc(m["finished_at"]),
        events=events or [],
    )


def _new_events(conn: Connection, job_id: int, events: Sequence[JobEvent]) -> list[JobEvent]:
    """The events not stored yet (by provider event id; events without one are always new)."""
    ids = [event.provider_event_id for event in events if event.provider_event_id]
    stored: set[str] = set()
    if ids:
        v = fine_tune_job_events.c
        stored = set(
            conn.execute(
                sa.select(v.provider_event_id).where(v.job_id == job_id, v.provider_event_id.in_(ids))
            ).scalars()
        )
    fresh, seen = [], set()
    for event in events:
        event_id = event.provider_event_id
        if event_id is not None and (event_id in stored or event_id in seen):
            continue
        if event_id is not None:
            seen.add(event_id)
        fresh.append(event)
    return fresh


def _insert_event(
    conn: Connection,
    job_id: int,
    at: datetime,
    kind: str,
    message: str,
    *,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
    provider_event_id: str | None = None,
) -> None:
    conn.execute(
        sa.insert(fine_tune_job_events).values(
            job_id=job_id,
            created_at=at,
            kind=kind,
            level=level,
            message=message,
            data=None if data is None else _dumps(data),
            provider_event_id=provider_event_id,
        )
    )


_JSON_COLUMNS = frozenset({"hyperparameters", "settings", "files", "details"})


def _encoded(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: _dumps(value) if name in _JSON_COLUMNS and value is not None else value
        for name, value in values.items()
    }


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _loads(text: str | None) -> dict[str, Any]:
    return dict(orjson.loads(text)) if text else {}


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
