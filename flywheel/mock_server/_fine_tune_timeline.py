"""The life of one mock fine-tuning job, planned at creation and read off at any moment.

A job's whole future is fixed when it is created: when validation ends (and whether it fails),
when training starts and ends, every event and checkpoint and the time it "happens". Nothing is
written as time passes; the status, the visible events and the checkpoints at ``now`` are pure
functions of the plan, ``now`` and the moment of a cancel, if any. So there is no background
task, every read agrees with every other read at the same instant, event ids are stable from one
read to the next (clients page through events by id), and tests can pass any clock.

No training happens: losses follow a fixed decaying curve with a wobble seeded by the job id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._text import stable_seed

MAX_METRIC_EVENTS = 100
"""At most this many ``metrics`` events per job (every step of a short job, evenly spaced steps of
a long one), so a long job does not flood a client that reads all events."""
KEPT_CHECKPOINTS = 3
"""Like upstream, checkpoints are kept for the last three epochs only."""


@dataclass(frozen=True, slots=True)
class FineTuneTiming:
    """How long a mock job spends in each state, and how long a create request is held.

    The defaults make a demo visible but quick. Tests pass short durations (or drive the app's
    clock by hand). The two holds open the windows a crash test needs around
    ``POST /v1/fine_tuning/jobs``: ``create_hold_s`` waits *before* the job is made (a client that
    goes away meanwhile leaves no job), ``create_answer_delay_s`` waits *after* it is stored (a
    client killed meanwhile leaves a job it never heard of, to be found by its metadata).
    """

    validating_s: float = 1.0
    queued_s: float = 1.0
    running_s: float = 3.0
    create_answer_delay_s: float = 0.0
    create_hold_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("validating_s", "queued_s", "running_s", "create_answer_delay_s", "create_hold_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"FineTuneTiming.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class TrainingProblem:
    """Why a job fails at the end of validation: the file parameter and a message."""

    param: str
    message: str

    @property
    def code(self) -> str:
        return f"invalid_{self.param}"


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event of the plan; ``index`` is its place in the plan, the source of its stable id."""

    index: int
    at: float
    message: str
    level: str = "info"
    kind: str = "message"
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlannedCheckpoint:
    at: float
    step: int
    metrics: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Timeline:
    """A job's planned life. Build it with ``plan_timeline``."""

    job_id: str
    created_at: float
    validated_at: float
    started_at: float
    finishes_at: float
    problem: TrainingProblem | None
    total_steps: int
    events: tuple[PlannedEvent, ...]
    checkpoints: tuple[PlannedCheckpoint, ...]

    def status_at(self, now: float, cancelled_at: float | None = None) -> str:
        if cancelled_at is not None and now >= cancelled_at:
            return "cancelled"
        if now < self.validated_at:
            return "validating_files"
        if self.problem is not None:
            return "failed"
        if now < self.started_at:
            return "queued"
        if now < self.finishes_at:
            return "running"
        return "succeeded"

    def finished_at(self, now: float, cancelled_at: float | None = None) -> float | None:
        """When the job reached its final state, or ``None`` while it has not."""
        status = self.status_at(now, cancelled_at)
        if status == "cancelled":
            return cancelled_at
        if status == "failed":
            return self.validated_at
        if status == "succeeded":
            return self.finishes_at
        return None

    def events_at(self, now: float, cancelled_at: float | None = None) -> list[PlannedEvent]:
        """The events that have happened by ``now``, oldest first (a cancel cuts the rest off)."""
        until = now if cancelled_at is None else min(now, cancelled_at)
        seen = [event for event in self.events if event.at <= until]
        if cancelled_at is not None and now >= cancelled_at:
            seen.append(PlannedEvent(len(self.events), cancelled_at, "The job has been cancelled"))
        return seen

    def checkpoints_at(self, now: float, cancelled_at: float | None = None) -> list[PlannedCheckpoint]:
        """The checkpoints written by ``now``, oldest first."""
        until = now if cancelled_at is None else min(now, cancelled_at)
        return [checkpoint for checkpoint in self.checkpoints if checkpoint.at <= until]

    def event_id(self, event: PlannedEvent) -> str:
        return "ftevent-" + _digest(self.job_id, "event", str(event.index))

    def checkpoint_id(self, checkpoint: PlannedCheckpoint) -> str:
        return "ftckpt_" + _digest(self.job_id, "checkpoint", str(checkpoint.step))


def plan_timeline(
    *,
    job_id: str,
    created_at: float,
    timing: FineTuneTiming,
    training_file: str,
    validation_file: str | None,
    problem: TrainingProblem | None,
    n_epochs: int,
    steps_per_epoch: int,
    fine_tuned_model: str,
) -> Timeline:
    """The whole life of a job created at ``created_at``: its phases, events and checkpoints."""
    validated_at = created_at + timing.validating_s
    started_at = validated_at + timing.queued_s
    finishes_at = started_at + timing.running_s
    total_steps = max(1, n_epochs * steps_per_epoch)
    plan = _EventPlan()
    plan.add(created_at, f"Validating training file: {training_file}")
    if validation_file is not None:
        plan.add(created_at, f"Validating validation file: {validation_file}")
    plan.add(created_at, f"Created fine-tuning job: {job_id}")
    if problem is not None:
        plan.add(validated_at, problem.message, level="error")
        return Timeline(
            job_id, created_at, validated_at, started_at, finishes_at, problem, total_steps, plan.events(), ()
        )
    plan.add(validated_at, "Files validated, moving job to queued state")
    plan.add(started_at, "Fine-tuning job started")

    def step_time(step: int) -> float:
        return started_at + timing.running_s * step / total_steps

    with_validation = validation_file is not None
    epoch_ends = {
        steps_per_epoch * epoch for epoch in range(max(1, n_epochs - KEPT_CHECKPOINTS + 1), n_epochs + 1)
    }
    checkpoints: list[PlannedCheckpoint] = []
    for step in metric_steps(total_steps):
        metrics = step_metrics(job_id, step, total_steps, with_validation=with_validation)
        message = f"Step {step}/{total_steps}: training loss={metrics['train_loss']:.2f}"
        if with_validation:
            message += f", validation loss={metrics['valid_loss']:.2f}"
        plan.add(step_time(step), message, kind="metrics", data={**metrics, "total_steps": total_steps})
    for step in sorted(epoch_ends):
        metrics = step_metrics(job_id, step, total_steps, with_validation=with_validation)
        checkpoint_metrics: dict[str, float] = {
            "step": float(step),
            **{name: value for name, value in metrics.items() if name != "step"},
        }
        if with_validation:
            checkpoint_metrics["full_valid_loss"] = metrics["valid_loss"]
            checkpoint_metrics["full_valid_mean_token_accuracy"] = metrics["valid_mean_token_accuracy"]
        checkpoints.append(PlannedCheckpoint(step_time(step), step, checkpoint_metrics))
        if step < total_steps:
            plan.add(step_time(step), f"Checkpoint created at step {step}")
    plan.add(finishes_at, f"New fine-tuned model created: {fine_tuned_model}")
    plan.add(finishes_at, "Evaluating model against our usage policies")
    plan.add(finishes_at, "Usage policy evaluations completed, model is now enabled for sampling")
    plan.add(finishes_at, "The job has successfully completed")
    return Timeline(
        job_id,
        created_at,
        validated_at,
        started_at,
        finishes_at,
        None,
        total_steps,
        plan.events(),
        tuple(checkpoints),
    )


def metric_steps(total_steps: int) -> list[int]:
    """The steps that get a ``metrics`` event: all of them, or evenly spaced ones and the last."""
    stride = max(1, math.ceil(total_steps / MAX_METRIC_EVENTS))
    steps = list(range(stride, total_steps + 1, stride))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def step_metrics(job_id: str, step: int, total_steps: int, *, with_validation: bool) -> dict[str, float]:
    """Deterministic training metrics at ``step``: loss decays from about 2 towards 0.15."""
    progress = step / total_steps

    def wobble(kind: str) -> float:
        return (stable_seed(job_id, kind, str(step)) % 1000 / 1000 - 0.5) * 0.08

    def loss(offset: float, kind: str) -> float:
        return round(max(0.01, 0.15 + offset + 1.85 * math.exp(-4 * progress) + wobble(kind)), 4)

    def accuracy(value: float) -> float:
        return round(min(0.995, max(0.0, 1 - value / 2.2)), 4)

    train_loss = loss(0.0, "train")
    # An integer step, as in upstream's event data (checkpoint metrics carry it as a float).
    metrics: dict[str, float] = {
        "step": step,
        "train_loss": train_loss,
        "train_mean_token_accuracy": accuracy(train_loss),
    }
    if with_validation:
        valid_loss = loss(0.05, "valid")
        metrics["valid_loss"] = valid_loss
        metrics["valid_mean_token_accuracy"] = accuracy(valid_loss)
    return metrics


class _EventPlan:
    """Collects planned events in order; ties in time keep the order they were added in."""

    def __init__(self) -> None:
        self._events: list[PlannedEvent] = []

    def add(
        self,
        at: float,
        message: str,
        *,
        level: str = "info",
        kind: str = "message",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self._events.append(PlannedEvent(len(self._events), at, message, level, kind, dict(data or {})))

    def events(self) -> tuple[PlannedEvent, ...]:
        # Checkpoint events are added after the metrics they follow; a stable sort on time puts
        # each one right after the step it belongs to, and renumbers so ids follow the order.
        ordered = sorted(self._events, key=lambda event: event.at)
        return tuple(
            PlannedEvent(index, e.at, e.message, e.level, e.kind, e.data) for index, e in enumerate(ordered)
        )


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()
