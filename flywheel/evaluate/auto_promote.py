"""``[pipelines.NAME.promote]``: ``flywheel watch`` evaluates each succeeded job and promotes it if it wins.

After a pass polled the jobs, for a pipeline with a ``promote`` table: its newest succeeded job
with a fine-tuned model and no promotion decision yet is evaluated against the pipeline's current
model on the test split (one ``flywheel eval`` run: both models, the judge if the metric is
``judge``). The job's model is promoted when its score on ``metric`` is higher than the current
model's by at least ``margin``; either way the decision, with both numbers and the run id, is a
``decision`` event of the job (``flywheel jobs show ID``), so a job is decided once.

An eval run that does not finish (a timeout, the API down) decides nothing: the next pass continues
the same run (``run_eval`` resumes it) and decides then. A test split smaller than
``min_examples`` waits for more data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sdk.schema import fine_tune_job_events, fine_tune_jobs

from ..query import connect
from ..train import jobs
from ..train.config import Pipeline
from .examples import newest_export
from .promote import current_model, promote
from .report import eval_report
from .run import run_eval

__all__ = ["DECISION_PREFIX", "PromotionDecision", "promote_if_better", "score_of"]

log = logging.getLogger("flywheel.watch")

DECISION_PREFIX = "promotion: "
"""Starts the message of the decision event, which marks a job as decided."""


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    """What the watcher decided about a job's model."""

    job_id: int
    model: str
    promoted: bool
    message: str
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model,
            "promoted": self.promoted,
            "message": self.message,
            "run_id": self.run_id,
        }


def score_of(model: dict[str, Any], metric: str) -> float | None:
    """A report model's score on ``metric``: a metric's value, or for ``judge`` wins minus losses."""
    if metric == "judge":
        judged = model.get("judge")
        return None if not judged else float(judged["wins"]["value"] - judged["losses"]["value"])
    found = model["metrics"].get(metric)
    return None if found is None else float(found["value"])


def promote_if_better(database_url: str, pipeline: Pipeline, *, now: datetime) -> PromotionDecision | None:
    """Decide the pipeline's newest undecided succeeded job (``None``: nothing to decide yet)."""
    settings = pipeline.promote
    if settings is None:
        return None
    with connect(database_url) as conn:
        job = _undecided_job(conn, pipeline.name)
        if job is None:
            return None
        current = current_model(conn, pipeline)
        examples = len(newest_export(conn, pipeline.dataset, pipeline=pipeline.name).test)
    model = str(job.fine_tuned_model)
    if current == model:
        return _decide(database_url, job.id, model, False, "already the current model", None, now)
    if examples < settings.min_examples:
        log.info("%s: job %s waits: %s test examples < min_examples %s", pipeline.name, job.id, examples,
                 settings.min_examples)  # fmt: skip
        return None
    models = [model] if current is None else [str(current), model]
    judge = pipeline.eval.judge if settings.metric == "judge" else ""
    result = run_eval(database_url, pipeline, models, judge=judge, few_shot=0, now=now)
    if not result.finished:
        log.info(
            "%s: eval run %s of job %s unfinished; continued next pass", pipeline.name, result.run_id, job.id
        )
        return None
    report = {m["model"]: m for m in eval_report(database_url, pipeline, run_id=result.run_id)["models"]}
    new = score_of(report[model], settings.metric)
    old = None if current is None else score_of(report[str(current)], settings.metric)
    if new is None or (current is not None and old is None):
        message = f"metric {settings.metric!r} does not apply to this pipeline's answers; not promoted"
        return _decide(database_url, job.id, model, False, message, result.run_id, now)
    against = "no current model" if old is None else f"{current} {old:.4f}"
    numbers = f"{settings.metric} {new:.4f} vs {against} (margin {settings.margin})"
    better = old is None or (new > old and new - old >= settings.margin)
    if better:
        promote(database_url, pipeline, model, reason=f"watch: {numbers}, eval run {result.run_id}",
                eval_run_id=result.run_id, now=now)  # fmt: skip
    message = f"{'promoted' if better else 'not promoted'}: {numbers}, eval run {result.run_id}"
    return _decide(database_url, job.id, model, better, message, result.run_id, now)


def _undecided_job(conn: Any, pipeline: str) -> Any:
    j, e = fine_tune_jobs.c, fine_tune_job_events.c
    decided = sa.exists().where(
        e.job_id == j.id, e.kind == "decision", e.message.startswith(DECISION_PREFIX, autoescape=True)
    )
    return conn.execute(
        sa.select(j.id, j.fine_tuned_model)
        .where(j.pipeline == pipeline, j.status == "succeeded", j.fine_tuned_model.is_not(None), ~decided)
        .order_by(j.id.desc())
        .limit(1)
    ).one_or_none()


def _decide(
    database_url: str,
    job_id: int,
    model: str,
    promoted: bool,
    message: str,
    run_id: str | None,
    now: datetime,
) -> PromotionDecision:
    decision = PromotionDecision(job_id, model, promoted, message, run_id)
    with connect(database_url) as conn:
        jobs.add_event(conn, job_id, now, "decision", DECISION_PREFIX + message, data=decision.as_dict())
    log.info("job %s: %s%s", job_id, DECISION_PREFIX, message)
    return decision
