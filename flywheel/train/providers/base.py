"""The one interface every training provider implements: prepare files, launch, find, poll, cancel.

A provider turns an exported dataset version into a training job somewhere (OpenAI's fine-tuning
API, a local trainer) and reports how it goes. The flywheel decides *when* to train and keeps the
job in the store (``flywheel.train.jobs``); a provider only talks to the outside world:

- ``prepare(request, files)`` puts the training data where the trainer reads it (uploads the
  files, or writes a trainer config) and returns what it made (file ids, paths), which the
  flywheel stores on the job before it calls ``launch``;
- ``find(request)`` returns the job created earlier with ``request.key`` (the idempotency key the
  flywheel sent as job metadata ``flywheel_job``), or ``None``. A watcher that crashed while its
  create request was in flight calls it before it creates anything, so a job is never made twice;
- ``launch(request, prepared)`` starts the job and returns its first ``JobState``;
- ``poll(handle)`` returns the job's state now, with the events newer than ``handle.last_event_id``;
- ``cancel(handle)`` asks the trainer to stop and returns the state after asking.

Invariants: a provider never stores secrets in what it returns (the flywheel writes ``JobState``
and ``prepared`` to the store as they are); it raises ``ProviderError`` for a failure that will
happen again the same way (bad request, unknown model) and ``TransientProviderError`` for one that
may pass (rate limit, 5xx, connection), with the wait the provider asked for when it said one.

Providers are found by entry point (group ``flywheel.providers``, name -> class), so a package
can add its own; ``flywheel.train.providers.registry`` loads them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

from ...errors import FlywheelError

__all__ = [
    "JOB_METADATA_KEY",
    "RUNNING_STATUSES",
    "STATUSES",
    "TERMINAL_STATUSES",
    "JobEvent",
    "JobHandle",
    "JobRequest",
    "JobState",
    "Method",
    "Provider",
    "ProviderError",
    "ProviderSettings",
    "TrainingFiles",
    "TransientProviderError",
    "export_sides",
]

Method = Literal["supervised", "dpo"]

JOB_METADATA_KEY = "flywheel_job"
"""The metadata key that carries the flywheel's idempotency key on a provider's job."""


def export_sides(method: Method | str) -> tuple[str, str]:
    """The export's (training, held-out) sides a method trains on, as named in its manifest's
    ``counts`` and ``validation`` and in its file names: chat examples, or DPO's preference pairs."""
    return ("preference_train", "preference_test") if method == "dpo" else ("train", "test")


STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
"""The statuses a job can have: OpenAI's words, which every provider maps its own onto."""
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
RUNNING_STATUSES = frozenset(STATUSES) - TERMINAL_STATUSES


class ProviderError(FlywheelError):
    """The provider refused or failed in a way that retrying will not fix; ``where`` names it."""


class TransientProviderError(ProviderError):
    """A failure that may pass (rate limit, server error, timeout); ``retry_after`` is the wait in
    seconds the provider asked for, when it said one."""

    def __init__(self, message: str, where: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, where)
        self.retry_after = retry_after


class ProviderSettings(BaseModel):
    """A provider's own keys in ``[pipelines.NAME.train]`` (``base_url``, ``command``, ...).

    Subclasses declare the fields; unknown keys are errors (``flywheel config check`` names them).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class TrainingFiles:
    """What ``flywheel export`` wrote for the job: a directory with the files and the manifest."""

    directory: Path
    manifest: Mapping[str, Any]

    def training_file(self, method: Method) -> Path:
        """The file to train on: chat examples, or preference pairs for DPO."""
        return self.directory / f"{export_sides(method)[0]}.jsonl"

    def validation_file(self, method: Method) -> Path:
        return self.directory / f"{export_sides(method)[1]}.jsonl"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Everything a provider needs to make one job; built by the flywheel from the pipeline.

    ``key`` is the idempotency key (sent as metadata ``flywheel_job``); ``metadata`` holds it and
    the other pairs to send. ``hyperparameters`` are as configured (``"auto"`` kept). ``work_dir``
    is a directory of this job's own that survives restarts (a local trainer's data, config, log
    and output live there).
    """

    key: str
    pipeline: str
    dataset: str
    dataset_version: int
    base_model: str
    method: Method
    hyperparameters: Mapping[str, Any]
    suffix: str | None
    seed: int | None
    validation: bool
    settings: ProviderSettings
    work_dir: Path
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One thing that happened to a job, as the provider reported it.

    ``kind`` is ``message``, ``metrics`` (``data`` holds step, loss, ...) or ``checkpoint``.
    ``provider_event_id`` lets a poll ask only for newer events and keeps a stored event unique.
    """

    created_at: datetime
    message: str
    level: str = "info"
    kind: str = "message"
    data: Mapping[str, Any] = field(default_factory=dict)
    provider_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobState:
    """A provider job as it is now. ``details`` is the provider's own state worth keeping (a local
    trainer's pid, log file and exit code; checkpoints; result files); the flywheel stores it with
    the job and hands it back in ``JobHandle``. ``events`` are oldest first."""

    provider_job_id: str
    status: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    events: tuple[JobEvent, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class JobHandle:
    """A job the flywheel tracks, as a provider needs it to poll or cancel."""

    provider_job_id: str
    settings: ProviderSettings
    work_dir: Path
    details: Mapping[str, Any]
    last_event_id: str | None = None


class Provider(ABC):
    """A place where training jobs run. One instance serves one pipeline's settings."""

    name: ClassVar[str]
    """What ``provider = "..."`` in ``flywheel.toml`` calls it (the entry point name)."""
    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    """The provider's own keys in ``[pipelines.NAME.train]``."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    @abstractmethod
    def prepare(self, request: JobRequest, files: TrainingFiles) -> dict[str, str]:
        """Put the training data where the trainer reads it; return what was made (file ids, paths)."""

    @abstractmethod
    def find(self, request: JobRequest) -> JobState | None:
        """The job made earlier for ``request.key``, or ``None`` if there is none."""

    @abstractmethod
    def launch(self, request: JobRequest, prepared: Mapping[str, str]) -> JobState:
        """Start the job on the prepared data."""

    @abstractmethod
    def poll(self, handle: JobHandle) -> JobState:
        """The job's state now, with the events newer than ``handle.last_event_id``."""

    @abstractmethod
    def cancel(self, handle: JobHandle) -> JobState:
        """Ask the trainer to stop the job; the state after asking."""

    @property
    def create_settle(self) -> timedelta:
        """After a crash while a create request was in flight, how long to wait for that job to
        appear before creating one again (a provider whose create is not asynchronous: none)."""
        return timedelta(0)

    def close(self) -> None:  # noqa: B027 - most providers hold nothing to close
        """Release what the provider holds (HTTP clients)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
