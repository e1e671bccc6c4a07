"""Following jobs after launch: poll each unfinished one and record what changed; cancel one.

A job is polled with the settings it was launched with (stored on its row), so editing
``flywheel.toml`` never orphans a running job. What the provider says is stored by
``jobs.record_state``: a status event for each change, the provider's events once each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..datasets import step_time
from ..errors import UsageError
from ..query import connect
from . import jobs
from .jobs import PREPARING, TrackedJob
from .launch import Clock, build_provider
from .providers.base import JobHandle, Provider, ProviderError

__all__ = ["PollResult", "cancel_job", "poll_job", "poll_jobs"]

log = logging.getLogger("flywheel.watch")


@dataclass(slots=True)
class PollResult:
    """What one round of polling saw: the jobs after it, and the errors met (by job id)."""

    jobs: list[TrackedJob] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": [job.as_dict() for job in self.jobs], "errors": self.errors}


def _handle(job: TrackedJob, provider: Provider) -> JobHandle:
    assert job.provider_job_id is not None
    return JobHandle(job.provider_job_id, provider.settings, job.work_dir, job.details, job.last_event_id)


def poll_job(database_url: str, job: TrackedJob, *, clock: Clock = step_time) -> TrackedJob:
    """Ask the provider about ``job`` and store the answer; the job as stored after it."""
    with build_provider(job.provider, job.settings) as provider:
        state = provider.poll(_handle(job, provider))
    with connect(database_url) as conn:
        updated = jobs.record_state(conn, job, state, clock())
    if updated.status != job.status:
        model = f" -> {updated.fine_tuned_model}" if updated.fine_tuned_model else ""
        error = f": {updated.error}" if updated.status == "failed" and updated.error else ""
        log.info("%s: job %d %s -> %s%s%s", job.pipeline, job.id, job.status, updated.status, model, error)
    return updated


def poll_jobs(database_url: str, *, pipeline: str | None = None, clock: Clock = step_time) -> PollResult:
    """Poll every unfinished job the provider has (of ``pipeline``); one job's error never stops
    the others."""
    result = PollResult()
    with connect(database_url) as conn:
        pending = [job for job in jobs.unfinished_jobs(conn, pipeline) if job.status != PREPARING]
    for job in pending:
        try:
            result.jobs.append(poll_job(database_url, job, clock=clock))
        except ProviderError as exc:
            result.errors[job.id] = str(exc)
            log.warning("%s: polling job %d failed: %s", job.pipeline, job.id, exc)
    return result


def cancel_job(database_url: str, job_id: int, *, clock: Clock = step_time) -> TrackedJob:
    """Ask the provider to cancel job ``job_id`` and record its state after asking."""
    job = jobs.get_job(database_url, job_id)
    if job.finished:
        raise UsageError(f"job {job_id} has already ended ({job.status})", str(job_id))
    if job.provider_job_id is None and job.create_sent_at is not None:
        raise UsageError(
            f"job {job_id} is being created at the provider right now; cancel it once it has an id",
            str(job_id),
        )
    if job.provider_job_id is None:
        with connect(database_url) as conn:
            return jobs.finish_without_provider(
                conn, job, "cancelled", "cancelled before it reached the provider", clock()
            )
    with build_provider(job.provider, job.settings) as provider:
        state = provider.cancel(_handle(job, provider))
    with connect(database_url) as conn:
        jobs.add_event(conn, job.id, clock(), "decision", "cancel requested")
        return jobs.record_state(conn, job, state, clock())
