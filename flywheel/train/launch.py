"""Launching one training job per dataset version, safely: claim, export, price, upload, create.

The order is what makes a double launch impossible (the argument is in docs/training.md):

1. **Claim** a row in ``fine_tune_jobs`` under its unique (pipeline, dataset, version, attempt)
   index, in its own transaction, before anything else. A watcher that loses the race stops.
2. **Export** the dataset version into the job's own directory and **price** it; over
   ``max_cost_usd`` the job ends ``refused`` with an event that says so, and nothing is sent.
3. **Prepare** (upload) the files; their ids are stored on the row.
4. Mark ``create_sent_at``, then **create** the job with metadata ``flywheel_job = key``.

Each step renews the claimant's lease by compare-and-set (a watcher that lost its lease stops).
A launch interrupted anywhere (SIGKILL, a lost answer) is resumed by the next watcher once the
lease ran out or the claimant's process is gone: it redoes what has no stored result and, if a
create may have been sent, first asks the provider for a job with that key (``Provider.find``,
after the provider's settle time), so a job the provider made is adopted, never made again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from ..datasets import require_dataset, step_time
from ..errors import UsageError
from ..export import ExportError
from ..query import as_utc, connect
from . import jobs
from .config import FlywheelConfig, Pipeline, TrainSettings
from .cost import estimate_export, format_usd, over_budget
from .jobs import Claim, TrackedJob
from .providers.base import (
    JOB_METADATA_KEY,
    JobRequest,
    Provider,
    ProviderError,
    TrainingFiles,
    TransientProviderError,
    export_sides,
)
from .providers.registry import provider_class
from .steps import export_for_training

__all__ = ["Clock", "LaunchOutcome", "build_provider", "job_request", "launch", "resume"]

log = logging.getLogger("flywheel.watch")

Clock = Callable[[], datetime]
"""Where a watcher reads the time (``datasets.step_time``: the clock, in UTC; tests pass their own)."""


@dataclass(frozen=True, slots=True)
class LaunchOutcome:
    """What a launch attempt came to: the job (``None`` when another watcher holds the version)."""

    job: TrackedJob | None
    message: str


def build_provider(name: str, settings: Mapping[str, Any]) -> Provider:
    """A provider instance for a job's stored (or a pipeline's) settings."""
    cls = provider_class(name)
    return cls(cls.Settings.model_validate(dict(settings)))


def job_request(pipeline: Pipeline, job: TrackedJob, provider: Provider) -> JobRequest:
    """What the provider is asked for: the job's row with the pipeline's training settings."""
    return JobRequest(
        key=job.key,
        pipeline=job.pipeline,
        dataset=job.dataset,
        dataset_version=job.dataset_version,
        base_model=job.base_model,
        method="dpo" if job.method == "dpo" else "supervised",
        hyperparameters=job.hyperparameters,
        suffix=job.suffix,
        seed=job.seed,
        validation=pipeline.training().validation,
        settings=provider.settings,
        work_dir=job.work_dir,
        metadata={
            JOB_METADATA_KEY: job.key,
            "flywheel_pipeline": job.pipeline[:512],
            "flywheel_dataset_version": str(job.dataset_version),
        },
    )


def launch(
    database_url: str,
    config: FlywheelConfig,
    pipeline: Pipeline,
    *,
    attempt: int = 1,
    claimed_by: str | None = None,
    workers: int = 1,
    clock: Clock = step_time,
) -> LaunchOutcome:
    """Claim the pipeline dataset's newest version and launch its job."""
    train = pipeline.training()
    me = claimed_by or jobs.claimant()
    with connect(database_url) as conn:
        dataset = require_dataset(conn, pipeline.dataset)
        claim = Claim(
            pipeline=pipeline.name,
            dataset_id=int(dataset.id),
            dataset_version=int(dataset.version),
            attempt=attempt,
            provider=train.provider,
            base_model=train.base_model,
            method=train.method,
            hyperparameters=train.hyperparameters.to_request(),
            suffix=train.suffix,
            seed=train.seed,
            settings=train.provider_settings.model_dump(mode="json"),
        )
        job = jobs.claim_job(conn, claim, me, clock(), config.work_dir / "jobs")
        if job is None:
            return LaunchOutcome(
                None, f"dataset version {dataset.version} already has a job (another watcher claimed it)"
            )
        log.info(
            "%s: claimed job %d for dataset %s version %d",
            pipeline.name,
            job.id,
            job.dataset,
            job.dataset_version,
        )
    return _drive(database_url, pipeline, job.id, me, workers, clock)


def resume(
    database_url: str,
    pipeline: Pipeline,
    job: TrackedJob,
    *,
    claimed_by: str | None = None,
    workers: int = 1,
    clock: Clock = step_time,
) -> LaunchOutcome:
    """Carry on with a ``preparing`` job whose claimant is gone or whose lease ran out."""
    me = claimed_by or jobs.claimant()
    with connect(database_url) as conn:
        taken = jobs.take_over(conn, job, me, clock())
    if taken is None:
        return LaunchOutcome(job, f"job {job.id} is being launched by {job.claimed_by}")
    log.info(
        "%s: resuming the launch of job %d (claimed by %s before)", pipeline.name, job.id, job.claimed_by
    )
    return _drive(database_url, pipeline, job.id, me, workers, clock)


# --- the steps --------------------------------------------------------------------------------------


def _drive(
    database_url: str,
    pipeline: Pipeline,
    job_id: int,
    me: str,
    workers: int,
    clock: Clock,
) -> LaunchOutcome:
    train = pipeline.training()
    with connect(database_url) as conn:
        job = jobs.get_job(database_url, job_id)
        with build_provider(job.provider, job.settings) as provider:
            try:
                return _steps(database_url, conn, pipeline, train, job, provider, me, workers, clock)
            except TransientProviderError as exc:
                jobs.add_event(
                    conn, job.id, clock(), "decision", f"launch interrupted: {exc}", level="warning"
                )
                jobs.release(conn, job.id, me, clock())
                raise
            except ProviderError as exc:
                failed = jobs.finish_without_provider(
                    conn, job, "failed", f"the provider refused the job: {exc}", clock()
                )
                raise ProviderError(f"job {failed.id}: {exc.message}", exc.where) from exc


def _steps(
    database_url: str,
    conn: Connection,
    pipeline: Pipeline,
    train: TrainSettings,
    job: TrackedJob,
    provider: Provider,
    me: str,
    workers: int,
    clock: Clock,
) -> LaunchOutcome:
    request = job_request(pipeline, job, provider)
    export_dir = request.work_dir / "export"
    manifest_path = export_dir / "manifest.json"
    if job.export_dir is None or not manifest_path.exists():
        try:
            exported = export_for_training(
                database_url, pipeline, export_dir, version=job.dataset_version, workers=workers, now=clock()
            )
        except ExportError as exc:
            failed = jobs.finish_without_provider(conn, job, "failed", f"export failed: {exc}", clock())
            return LaunchOutcome(failed, f"job {failed.id} failed: the export did not pass validation")
        estimate = estimate_export(train.base_model, train.method, job.hyperparameters, exported.manifest)
        train_side, test_side = export_sides(train.method)
        _held(
            jobs.renew(
                conn,
                job.id,
                me,
                clock(),
                export_dir=str(export_dir),
                train_examples=exported.counts[train_side],
                test_examples=exported.counts[test_side],
                training_tokens=estimate.training_tokens,
                estimated_cost_usd=estimate.usd,
            ),
            job,
        )
        job = jobs.get_job(database_url, job.id)
    files = TrainingFiles(export_dir, orjson.loads(manifest_path.read_bytes()))
    refusal = over_budget(train.max_cost_usd, job.base_model, job.estimated_cost_usd, job.training_tokens)
    if refusal is not None:
        refused = jobs.finish_without_provider(conn, job, jobs.REFUSED, refusal, clock())
        log.warning("%s: job %d refused: %s", pipeline.name, job.id, refusal)
        return LaunchOutcome(refused, refusal)
    if job.create_sent_at is not None:
        outcome = _adopt(conn, provider, request, job, me, clock)
        if outcome is not None:
            return outcome
    prepared = job.files
    if not prepared:
        prepared = provider.prepare(request, files)
        _held(jobs.renew(conn, job.id, me, clock(), files=prepared), job)
    _held(jobs.renew(conn, job.id, me, clock(), create_sent_at=clock()), job)
    state = provider.launch(request, prepared)
    launched = jobs.record_state(conn, jobs.get_job(database_url, job.id), state, clock())
    cost = format_usd(launched.estimated_cost_usd, "unknown cost")
    return LaunchOutcome(
        launched,
        f"launched job {launched.id} on {launched.provider} as {state.provider_job_id} "
        f"({launched.train_examples} examples, estimated {cost})",
    )


def _adopt(
    conn: Connection, provider: Provider, request: JobRequest, job: TrackedJob, me: str, clock: Clock
) -> LaunchOutcome | None:
    """After a create that may have reached the provider: adopt the job it made, or wait for the
    settle time to pass; ``None`` when there is no such job and it is safe to create one."""
    assert job.create_sent_at is not None
    settle = provider.create_settle
    sent = as_utc(job.create_sent_at)
    if clock() < sent + settle:
        jobs.release(conn, job.id, me, clock())
        wait = (sent + settle - clock()).total_seconds()
        return LaunchOutcome(
            job, f"job {job.id}: an earlier create request may still land; looking again in {wait:.0f}s"
        )
    found = provider.find(request)
    if found is None:
        jobs.add_event(conn, job.id, clock(), "decision", "no job with this key at the provider; creating it")
        return None
    jobs.add_event(
        conn,
        job.id,
        clock(),
        "decision",
        f"found {found.provider_job_id} made by an earlier attempt (metadata {JOB_METADATA_KEY}); adopted it",
    )
    adopted = jobs.record_state(conn, job, found, clock())
    return LaunchOutcome(adopted, f"adopted {found.provider_job_id}")


def _held(still_ours: bool, job: TrackedJob) -> None:
    if not still_ours:
        raise UsageError(f"job {job.id}: another watcher took over its launch; leaving it", str(job.id))
