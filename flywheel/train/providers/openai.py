"""The ``openai`` provider: OpenAI's fine-tuning API, or any server that speaks it.

Uploads the export's training file (and the test split as ``validation_file`` when asked), creates
the job with the method, hyperparameters, suffix, seed and the ``flywheel_job`` metadata, and reads
back status, events and checkpoints. The API key is read from the environment variable the
pipeline names, when a request is made; it is never part of what the provider returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import openai
from pydantic import Field

from .base import (
    JOB_METADATA_KEY,
    TERMINAL_STATUSES,
    JobEvent,
    JobHandle,
    JobRequest,
    JobState,
    Provider,
    ProviderError,
    ProviderSettings,
    TrainingFiles,
    TransientProviderError,
)

__all__ = ["OpenAIProvider", "OpenAISettings"]


class OpenAISettings(ProviderSettings):
    """``provider = "openai"`` keys.

    Parameters:
        base_url: the API root (``https://api.openai.com/v1``, a gateway, the mock server);
            default ``OPENAI_BASE_URL``, else openai's default.
        api_key_env: the environment variable the API key is read from when a job is launched or
            polled; the key itself is never written to the config, the store or a log.
        organization, project: sent as openai's ``organization``/``project`` when set.
        timeout: seconds per request attempt.
        max_retries: attempts after the first for rate limits (429), server errors (5xx),
            timeouts and connection errors, waiting as ``Retry-After`` says.
        create_settle_s: after a crash while a create request was in flight, how long after it was
            sent to wait before looking the job up, so that a request the server was still
            processing is seen instead of made again.
    """

    base_url: str | None = None
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    organization: str | None = None
    project: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    create_settle_s: float = Field(default=30.0, ge=0)


class OpenAIProvider(Provider):
    """Jobs on OpenAI's fine-tuning API (``/files``, ``/fine_tuning/jobs``) at ``base_url``.

    Rate limits (429), server errors (5xx), timeouts and dropped connections are retried by the
    ``openai`` client itself (``max_retries``, waiting as ``Retry-After``/``retry-after-ms`` say);
    what is still failing after that is a ``TransientProviderError`` carrying the server's wait.
    """

    name: ClassVar[str] = "openai"
    Settings: ClassVar[type[ProviderSettings]] = OpenAISettings

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, OpenAISettings)
        self._settings = settings
        self._client: openai.OpenAI | None = None

    @property
    def create_settle(self) -> timedelta:
        return timedelta(seconds=self._settings.create_settle_s)

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            variable = self._settings.api_key_env
            api_key = os.environ.get(variable)
            if not api_key:
                raise ProviderError(f"the API key variable {variable} is not set", "api_key_env")
            self._client = openai.OpenAI(
                api_key=api_key,
                base_url=self._settings.base_url or None,
                organization=self._settings.organization,
                project=self._settings.project,
                timeout=self._settings.timeout,
                max_retries=self._settings.max_retries,
            )
        return self._client

    def prepare(self, request: JobRequest, files: TrainingFiles) -> dict[str, str]:
        uploaded = {"training_file": self._upload(request, files.training_file(request.method), "train")}
        validation = files.validation_file(request.method)
        if request.validation and validation.exists() and validation.stat().st_size:
            uploaded["validation_file"] = self._upload(request, validation, "test")
        return uploaded

    def find(self, request: JobRequest) -> JobState | None:
        with _translated("looking up the job"):
            # A filter on the list (``metadata[flywheel_job]=KEY``); each job is checked too, in
            # case a compatible server ignores the filter and lists everything.
            page = self.client.fine_tuning.jobs.list(
                limit=100, extra_query={f"metadata[{JOB_METADATA_KEY}]": request.key}
            )
            for seen, job in enumerate(page):
                if (job.metadata or {}).get(JOB_METADATA_KEY) == request.key:
                    return self._state(job, events=())
                if seen >= _MAX_LISTED:
                    break
        return None

    def launch(self, request: JobRequest, prepared: Mapping[str, str]) -> JobState:
        hyperparameters = dict(request.hyperparameters)
        method: dict[str, Any] = {
            "type": request.method,
            request.method: {"hyperparameters": hyperparameters},
        }
        optional: dict[str, Any] = {}
        if "validation_file" in prepared:
            optional["validation_file"] = prepared["validation_file"]
        if request.suffix is not None:
            optional["suffix"] = request.suffix
        if request.seed is not None:
            optional["seed"] = request.seed
        # Not retried by the client: a create whose answer was lost may have made the job, so the
        # next attempt looks it up by its metadata first (see docs/training.md).
        creating = self.client.with_options(max_retries=0).fine_tuning.jobs
        with _translated("creating the job"):
            job = creating.create(
                model=request.base_model,
                training_file=prepared["training_file"],
                metadata=dict(request.metadata),
                extra_body={"method": method},
                **optional,
            )
        return self._state(job, events=())

    def poll(self, handle: JobHandle) -> JobState:
        with _translated("polling the job"):
            job = self.client.fine_tuning.jobs.retrieve(handle.provider_job_id)
            events = self._events(handle.provider_job_id, handle.last_event_id)
            checkpoints = [
                {
                    "id": checkpoint.id,
                    "step_number": checkpoint.step_number,
                    "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
                    "metrics": checkpoint.metrics.model_dump(exclude_none=True),
                }
                for checkpoint in self.client.fine_tuning.jobs.checkpoints.list(
                    handle.provider_job_id, limit=100
                ).data
            ]
        state = self._state(job, events=events)
        details = dict(state.details)
        if checkpoints:
            details["checkpoints"] = sorted(checkpoints, key=lambda c: c["step_number"])
        return replace(state, details=details)

    def cancel(self, handle: JobHandle) -> JobState:
        with _translated("cancelling the job"):
            job = self.client.fine_tuning.jobs.cancel(handle.provider_job_id)
        return self._state(job, events=())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- internals ---------------------------------------------------------------------------------

    def _upload(self, request: JobRequest, path: Path, side: str) -> str:
        name = f"flywheel-{request.pipeline}-v{request.dataset_version}-{request.key[:8]}-{side}.jsonl"
        with _translated(f"uploading {path.name}"), path.open("rb") as data:
            return self.client.files.create(file=(name, data), purpose="fine-tune").id

    def _events(self, job_id: str, last_event_id: str | None) -> tuple[JobEvent, ...]:
        """The job's events newer than ``last_event_id``, oldest first (the API lists newest first)."""
        newer: list[Any] = []
        for seen, event in enumerate(self.client.fine_tuning.jobs.list_events(job_id, limit=100)):
            if event.id == last_event_id or seen >= _MAX_LISTED:
                break
            newer.append(event)
        return tuple(_event(event) for event in reversed(newer))

    def _state(self, job: Any, events: tuple[JobEvent, ...]) -> JobState:
        error = None
        if job.error is not None and (job.error.message or job.error.code):
            error = job.error.message or job.error.code
        finish = getattr(job, "estimated_finish", None)
        details: dict[str, Any] = {}
        if job.result_files:
            details["result_files"] = list(job.result_files)
        resolved = job.hyperparameters.model_dump(exclude_none=True) if job.hyperparameters else {}
        if resolved:
            details["resolved_hyperparameters"] = resolved
        # Stored with the job (details are merged), so an ended job says null, not a stale time.
        ended = job.status in TERMINAL_STATUSES
        details["estimated_finish"] = (
            None if ended or not finish else datetime.fromtimestamp(finish, UTC).isoformat()
        )
        return JobState(
            provider_job_id=job.id,
            status=job.status,
            fine_tuned_model=job.fine_tuned_model,
            trained_tokens=job.trained_tokens,
            error=error if job.status == "failed" else None,
            events=events,
            details=details,
        )


_MAX_LISTED = 1000
"""At most this many jobs or events are read in one look (newest first)."""


def _event(event: Any) -> JobEvent:
    data = event.data if isinstance(getattr(event, "data", None), dict) else {}
    kind = "metrics" if getattr(event, "type", None) == "metrics" else "message"
    if kind == "message" and "checkpoint" in event.message.lower():
        kind = "checkpoint"
    return JobEvent(
        created_at=datetime.fromtimestamp(event.created_at, UTC),
        message=event.message,
        level=event.level,
        kind=kind,
        data=dict(data),
        provider_event_id=event.id,
    )


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    """openai's errors as provider errors: transient (retry later) or not."""
    try:
        yield
    except openai.APIStatusError as exc:
        message = _api_message(exc)
        if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
            raise TransientProviderError(
                f"{doing}: HTTP {exc.status_code}: {message}", "provider", retry_after=_retry_after(exc)
            ) from None
        raise ProviderError(f"{doing}: HTTP {exc.status_code}: {message}", "provider") from None
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        raise TransientProviderError(f"{doing}: {exc}", "provider") from None


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
