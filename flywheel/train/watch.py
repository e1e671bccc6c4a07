"""``flywheel train`` and ``flywheel watch``: a pass over the pipelines, and the loop that repeats it.

A pass, per pipeline: bring its dataset up to date and run its steps (``steps.run_steps``); resume
a launch a crashed watcher left (``launch.resume``); check the thresholds (``thresholds.decide``)
and, when they are met, launch exactly one job (``launch.launch``). Then it polls every unfinished
job (``poll.poll_jobs``), and for pipelines with a ``promote`` table, evaluates a newly succeeded
job's model and promotes it when it wins (``flywheel.evaluate.auto_promote``). One pipeline's
failure never stops the others: it is logged, counted in the pass's errors, and (for a provider's
transient errors) the pipeline backs off before the next try. ``watch`` stops between steps when
asked (SIGTERM, SIGINT), never in the middle of one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..datasets import require_dataset, step_time
from ..errors import FlywheelError, UsageError
from ..query import connect
from . import jobs
from .config import FlywheelConfig, Pipeline
from .jobs import PREPARING
from .launch import Clock, LaunchOutcome, launch, resume
from .pipeline_lock import pipeline_lock
from .poll import PollResult, poll_jobs
from .providers.base import TransientProviderError
from .steps import StepsResult, run_steps
from .thresholds import Decision, current_decision

__all__ = ["PassResult", "PipelineOutcome", "Watcher", "decisions_to", "run_pass", "train_now"]

log = logging.getLogger("flywheel.watch")


@contextlib.contextmanager
def decisions_to(handler: logging.Handler, level: int = logging.INFO) -> Iterator[None]:
    """Send what the watcher decides and why (the ``flywheel.watch`` log) to ``handler`` meanwhile."""
    previous = log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 1800.0


@dataclass(slots=True)
class PipelineOutcome:
    """What a pass did for one pipeline."""

    pipeline: str
    steps: StepsResult | None = None
    decision: Decision | None = None
    launch: LaunchOutcome | None = None
    error: str | None = None
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "steps": self.steps.as_dict() if self.steps else None,
            "decision": self.decision.as_dict() if self.decision else None,
            "job": self.launch.job.as_dict() if self.launch and self.launch.job else None,
            "launch": self.launch.message if self.launch else None,
            "error": self.error,
            "skipped": self.skipped,
        }


@dataclass(slots=True)
class PassResult:
    """A whole pass: each pipeline's outcome, then the polling."""

    pipelines: list[PipelineOutcome] = field(default_factory=list)
    polled: PollResult = field(default_factory=PollResult)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    """Each promotion decision (``auto_promote.PromotionDecision.as_dict``), or ``{"pipeline", "error"}``."""
    stopped: bool = False

    @property
    def errors(self) -> int:
        failed = sum(1 for item in self.promotions if "error" in item)
        return sum(1 for outcome in self.pipelines if outcome.error) + len(self.polled.errors) + failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipelines": [outcome.as_dict() for outcome in self.pipelines],
            "polled": self.polled.as_dict(),
            "promotions": self.promotions,
            "errors": self.errors,
            "stopped": self.stopped,
        }


class Watcher:
    """Runs passes; remembers each pipeline's backoff between them; stops when ``stop()`` is called."""

    def __init__(
        self,
        database_url: str,
        config: FlywheelConfig,
        *,
        pipelines: Sequence[str] = (),
        workers: int = 1,
        clock: Clock = step_time,
    ) -> None:
        for name in pipelines:
            config.pipeline(name)  # unknown names fail before anything runs
        self.database_url = database_url
        self.config = config
        self.names = list(pipelines) or list(config.pipelines)
        self.workers = workers
        self.clock = clock
        self.claimant = jobs.claimant()
        self._stop = threading.Event()
        self._backoff: dict[str, tuple[float, float]] = {}
        """pipeline -> (monotonic time before which it is skipped, the last wait)."""

    def stop(self) -> None:
        """Finish the current step, then end the pass (and the loop)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_pass(self) -> PassResult:
        result = PassResult()
        for name in self.names:
            if self.stopping:
                result.stopped = True
                return result
            outcome = PipelineOutcome(name)
            result.pipelines.append(outcome)
            waiting = self._backoff.get(name)
            if waiting is not None and time.monotonic() < waiting[0]:
                outcome.skipped = (
                    f"backing off for {waiting[0] - time.monotonic():.0f}s after a provider error"
                )
                log.info("%s: %s", name, outcome.skipped)
                continue
            try:
                with pipeline_lock(self.database_url, name) as held:
                    if not held:
                        outcome.skipped = "another watcher is working on it"
                        log.info("%s: %s; skipped this pass", name, outcome.skipped)
                        continue
                    self._pipeline(self.config.pipeline(name), outcome)
                self._backoff.pop(name, None)
            except TransientProviderError as exc:
                outcome.error = str(exc)
                wait = self._back_off(name, exc.retry_after)
                log.warning("%s: %s (backing off %.0fs)", name, exc, wait)
            except FlywheelError as exc:
                outcome.error = str(exc)
                log.error("%s: %s", name, exc)
            except Exception as exc:  # a bug in one pipeline's step must not stop the others
                outcome.error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: unexpected error", name)
        if self.stopping:
            result.stopped = True
            return result
        result.polled = poll_jobs(self.database_url, clock=self.clock)
        self._promotions(result)
        return result

    def loop(self, interval: float, passes: int | None = None) -> int:
        """Run passes every ``interval`` seconds until stopped (or ``passes`` ran); the number of
        passes that had errors."""
        failed = done = 0
        while not self.stopping:
            started = time.monotonic()
            if self.run_pass().errors:
                failed += 1
            done += 1
            if passes is not None and done >= passes:
                break
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))
        return failed

    # --- one pipeline -------------------------------------------------------------------------------

    def _pipeline(self, pipeline: Pipeline, outcome: PipelineOutcome) -> None:
        outcome.steps = run_steps(self.database_url, pipeline, workers=self.workers, now=self.clock())
        if pipeline.train is None or self.stopping:
            return
        with connect(self.database_url) as conn:
            pending = jobs.unfinished_jobs(conn, pipeline.name)
            stuck = next((job for job in pending if job.status == PREPARING), None)
            if stuck is None:
                dataset = require_dataset(conn, pipeline.dataset)
                outcome.decision = current_decision(conn, pipeline, dataset, self.clock())
        if stuck is not None:  # a launch left half-done comes before any new one
            outcome.launch = resume(
                self.database_url,
                pipeline,
                stuck,
                claimed_by=self.claimant,
                workers=self.workers,
                clock=self.clock,
            )
            log.info("%s: %s", pipeline.name, outcome.launch.message)
            return
        assert outcome.decision is not None
        log.info("%s: %s", pipeline.name, outcome.decision.reason)
        if outcome.decision.launch and not self.stopping:
            outcome.launch = launch(
                self.database_url,
                self.config,
                pipeline,
                claimed_by=self.claimant,
                workers=self.workers,
                clock=self.clock,
            )
            log.info("%s: %s", pipeline.name, outcome.launch.message)

    def _promotions(self, result: PassResult) -> None:
        # Imported here: flywheel.evaluate builds on flywheel.train (its config), not the reverse.
        from ..evaluate.auto_promote import promote_if_better

        for name in self.names:
            pipeline = self.config.pipeline(name)
            if pipeline.promote is None or self.stopping:
                continue
            try:
                decision = promote_if_better(self.database_url, pipeline, now=self.clock())
            except FlywheelError as exc:
                result.promotions.append({"pipeline": name, "error": str(exc)})
                log.error("%s: evaluating for promotion: %s", name, exc)
                continue
            if decision is not None:
                result.promotions.append({"pipeline": name, **decision.as_dict()})

    def _back_off(self, name: str, retry_after: float | None) -> float:
        previous = self._backoff.get(name, (0.0, 0.0))[1]
        wait = min(BACKOFF_MAX_S, previous * 2 if previous else BACKOFF_FIRST_S)
        if retry_after is not None:
            wait = max(wait, retry_after)
        self._backoff[name] = (time.monotonic() + wait, wait)
        return wait


def run_pass(
    database_url: str, config: FlywheelConfig, *, pipelines: Sequence[str] = (), workers: int = 1
) -> PassResult:
    """One pass over ``pipelines`` (default: all of them), as ``flywheel watch --once`` runs it."""
    return Watcher(database_url, config, pipelines=pipelines, workers=workers).run_pass()


def train_now(
    database_url: str, config: FlywheelConfig, name: str, *, workers: int = 1
) -> tuple[StepsResult, LaunchOutcome]:
    """``flywheel train NAME``: run the pipeline's steps and launch a job now, whatever the
    thresholds say; never a second job for a dataset version that has a live or succeeded one (a
    version whose job failed, was cancelled or refused gets a new attempt)."""
    pipeline = config.pipeline(name)
    pipeline.training()
    with pipeline_lock(database_url, name) as held:
        if not held:
            raise UsageError(f"a watcher is working on pipeline {name} right now; try again", name)
        steps = run_steps(database_url, pipeline, workers=workers)
        with connect(database_url) as conn:
            dataset = require_dataset(conn, pipeline.dataset)
            attempt, blocked = jobs.launch_blocker(
                conn, name, pipeline.dataset, int(dataset.id), int(dataset.version)
            )
        if blocked is not None:
            raise UsageError(blocked, name)
        return steps, launch(database_url, config, pipeline, attempt=attempt, workers=workers)
