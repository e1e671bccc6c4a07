"""Training jobs in the store: the claim row, its lease, its state and its events.

A job's row is inserted *before* anything is exported or uploaded, under the unique index on
``(pipeline, dataset_id, dataset_version, attempt)``: of any number of watchers racing for one
dataset version, exactly one inserts it (the others get an integrity error and leave it alone).
The row then carries the launch through: ``claimed_by`` and ``lease_expires_at`` say who is
launching it and until when nobody else may; ``create_sent_at`` says a create request may have
reached the provider, so whoever resumes the launch must look the job up there first (by ``key``,
sent as metadata ``flywheel_job``) instead of creating it again.

The rows as read (``TrackedJob``, the listing queries) are in ``job_rows`` and re-exported here.
Every function here takes a connection and runs its own short transaction (``_tx``), so that a
watcher never holds a lock while it talks to a provider. Nothing here talks to a provider.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import fine_tune_job_events, fine_tune_jobs

from ..datasets import write_transaction
from ..query import as_utc
from .job_rows import (
    FINISHED,
    JSON_COLUMNS,
    PREPARING,
    REFUSED,
    RETRYABLE,
    TrackedJob,
    get_job,
    job_for_version,
    jobs_of,
    last_sent,
    launch_blocker,
    list_jobs,
    read_job,
    unfinished_jobs,
)
from .providers._detached import process_running
from .providers.base import JobEvent, JobState

__all__ = [
    "FINISHED",
    "LEASE",
    "PREPARING",
    "REFUSED",
    "RETRYABLE",
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
    "last_sent",
    "launch_blocker",
    "list_jobs",
    "record_state",
    "release",
    "renew",
    "take_over",
    "unfinished_jobs",
]

LEASE = timedelta(minutes=10)
"""How long a claimant may hold a launch without renewing it; longer than any one provider call."""

_J = fine_tune_jobs.c


def claimant() -> str:
    """Who this process is, as ``claimed_by`` records it: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def claimant_is_gone(claimed_by: str | None) -> bool:
    """True when ``claimed_by`` names a process of this host that no longer runs (the same check
    the ``command`` provider makes of its trainers).

    A claimant on another host cannot be checked from here; its lease has to run out instead.
    """
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return int(pid_text) != os.getpid() and not process_running(int(pid_text))


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


def claim_job(
    conn: Connection, claim: Claim, claimed_by: str, now: datetime, jobs_dir: Path
) -> TrackedJob | None:
    """Insert the job row for ``claim`` held by ``claimed_by``, its directory under ``jobs_dir``;
    ``None`` when that dataset version (and attempt) already has a job, whoever inserted it first."""
    key = secrets.token_hex(16)
    values = {
        **_encoded(asdict(claim)),
        "key": key,
        "status": PREPARING,
        "details": _dumps({"work_dir": str(jobs_dir / key)}),
        "claimed_by": claimed_by,
        "lease_expires_at": now + LEASE,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with write_transaction(conn):
            job_id = conn.execute(sa.insert(fine_tune_jobs).values(**values).returning(_J.id)).scalar_one()
            _insert_event(conn, job_id, now, "status", f"claimed by {claimed_by}", data={"to": PREPARING})
    except sa.exc.IntegrityError:
        return None
    return read_job(conn, job_id)


def take_over(conn: Connection, job: TrackedJob, claimed_by: str, now: datetime) -> TrackedJob | None:
    """Become the claimant of ``job`` (still ``preparing``) if its claimant's lease ran out or its
    process is gone; ``None`` if someone holds it. A compare-and-set: of two watchers resuming the
    same job, one wins."""
    expired = job.lease_expires_at is None or as_utc(job.lease_expires_at) <= now
    if not (expired or claimant_is_gone(job.claimed_by)):
        return None
    with write_transaction(conn):
        taken = conn.execute(
            sa.update(fine_tune_jobs)
            .where(
                _J.id == job.id, _J.status == PREPARING, _J.claimed_by.is_not_distinct_from(job.claimed_by)
            )
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
    return read_job(conn, job.id) if taken else None


def renew(conn: Connection, job_id: int, claimed_by: str, now: datetime, **values: Any) -> bool:
    """Extend the lease (and set ``values``) if ``claimed_by`` still holds it; False if it lost it."""
    with write_transaction(conn):
        updated = conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job_id, _J.claimed_by == claimed_by, _J.status == PREPARING)
            .values(lease_expires_at=now + LEASE, updated_at=now, **_encoded(values))
        ).rowcount
    return bool(updated)


def release(conn: Connection, job_id: int, claimed_by: str, now: datetime) -> None:
    """Give up the lease now (after a transient failure), so the next pass may resume at once."""
    with write_transaction(conn):
        conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job_id, _J.claimed_by == claimed_by, _J.status == PREPARING)
            .values(lease_expires_at=now, updated_at=now)
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
    with write_transaction(conn):
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
    with write_transaction(conn):
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
    return read_job(conn, job.id)


def finish_without_provider(
    conn: Connection, job: TrackedJob, status: str, error: str, now: datetime
) -> TrackedJob:
    """End a ``preparing`` job that never reached the provider (``refused``, or ``failed`` when the
    provider rejected it), with an event that says why."""
    with write_transaction(conn):
        conn.execute(
            sa.update(fine_tune_jobs)
            .where(_J.id == job.id)
            .values(status=status, error=error, finished_at=now, updated_at=now, lease_expires_at=None)
        )
        _insert_event(
            conn,
            job.id,
            now,
            "decision",
            error,
            level="error" if status == "failed" else "warning",
            data={"from": job.status, "to": status},
        )
    return read_job(conn, job.id)


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


def _encoded(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: _dumps(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in values.items()
    }


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
