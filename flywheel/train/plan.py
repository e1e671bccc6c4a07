"""``flywheel train NAME --dry-run``: the job a launch would make, priced, without writing anything.

The plan is made from the dataset as it is (the steps that would bring it up to date first are not
run: they write), with an export dry run for the exact examples and tokens, and the thresholds'
verdict beside it, so the user sees what ``watch`` would do and what ``train`` would do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sdk.schema import datasets

from ..datasets import count_new_calls, require_dataset
from ..errors import UsageError
from ..export import ExportError, export_dataset
from ..query import connect
from . import jobs
from .config import FlywheelConfig
from .cost import CostEstimate, estimate_cost
from .thresholds import Decision, decide, split_rules, train_side_counts

__all__ = ["TrainPlan", "plan_training"]


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """What ``flywheel train`` would launch for a pipeline now."""

    pipeline: str
    dataset: str
    dataset_version: int | None
    provider: str
    base_model: str
    method: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    validation: bool
    train_examples: int | None
    test_examples: int | None
    estimate: CostEstimate | None
    max_cost_usd: float | None
    decision: Decision | None
    existing_job: int | None
    new_calls: int
    """Calls the filter selects that the dataset has not taken in yet: a pass takes them in first
    (the plan is made from the dataset as it is)."""
    problem: str | None
    """Why a launch would not happen (no dataset yet, export invalid, over budget, a job exists)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "provider": self.provider,
            "base_model": self.base_model,
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "suffix": self.suffix,
            "seed": self.seed,
            "validation": self.validation,
            "train_examples": self.train_examples,
            "test_examples": self.test_examples,
            **(self.estimate.as_dict() if self.estimate else {"estimated_cost_usd": None}),
            "max_cost_usd": self.max_cost_usd,
            "thresholds": self.decision.as_dict() if self.decision else None,
            "existing_job": self.existing_job,
            "new_calls": self.new_calls,
            "problem": self.problem,
        }


def plan_training(database_url: str, config: FlywheelConfig, name: str) -> TrainPlan:
    """The plan for pipeline ``name``; reads the store, writes nothing anywhere."""
    pipeline = config.pipeline(name)
    train = pipeline.train
    if train is None:
        raise UsageError(f"pipeline {name!r} has no [pipelines.{name}.train] table", name)
    hyperparameters = train.hyperparameters.to_request()
    base: dict[str, Any] = {
        "pipeline": name,
        "dataset": pipeline.dataset,
        "provider": train.provider,
        "base_model": train.base_model,
        "method": train.method,
        "hyperparameters": hyperparameters,
        "suffix": train.suffix,
        "seed": train.seed,
        "validation": train.validation,
        "max_cost_usd": train.max_cost_usd,
    }
    with connect(database_url) as conn:
        exists = conn.execute(sa.select(datasets.c.id).where(datasets.c.name == pipeline.dataset)).first()
        if exists is None:
            matching = count_new_calls(conn, None, pipeline.filter.refreshed())
            missing = (
                f"dataset {pipeline.dataset} does not exist yet; a pass creates it from the filter "
                f"({matching} calls match it, before the steps)"
            )
            return TrainPlan(
                **base,
                dataset_version=None,
                train_examples=None,
                test_examples=None,
                estimate=None,
                decision=None,
                existing_job=None,
                new_calls=matching,
                problem=missing,
            )
        dataset = require_dataset(conn, pipeline.dataset)
        waiting = count_new_calls(conn, int(dataset.id), pipeline.filter.refreshed())
        history = jobs.jobs_of(conn, name)
        last = next((job for job in history if job.status != jobs.REFUSED), None)
        unfinished = next((job for job in history if not job.finished), None)
        existing = jobs.job_for_version(conn, name, int(dataset.id), int(dataset.version))
        rules = split_rules(dataset.settings, pipeline.export)
        counts = train_side_counts(
            conn, int(dataset.id), int(dataset.version), rules, last.dataset_version if last else None
        )
    decision = decide(train, counts, int(dataset.version), last, unfinished, datetime.now(UTC))
    problem: str | None = None
    estimate: CostEstimate | None = None
    train_examples = test_examples = None
    with tempfile.TemporaryDirectory(prefix="flywheel-plan-") as scratch:
        try:
            exported = export_dataset(
                database_url,
                pipeline.dataset,
                scratch,
                test_fraction=pipeline.export.test_fraction,
                stratify_by=pipeline.export.stratify_by,
                salt=pipeline.export.salt,
                train_on=pipeline.export.train_on,
                base_model=train.base_model,
                token_limit=pipeline.export.token_limit,
                skip_invalid=pipeline.export.skip_invalid,
                dry_run=True,
            )
        except ExportError as exc:
            problem = f"the export would fail: {exc}"
        else:
            side = "preference_train" if train.method == "dpo" else "train"
            train_examples = exported.counts[side]
            test_examples = exported.counts["preference_test" if train.method == "dpo" else "test"]
            tokens = int(exported.manifest["validation"][side]["total_tokens"])
            estimate = estimate_cost(train.base_model, tokens, train_examples, hyperparameters)
    if (
        problem is None
        and existing is not None
        and existing.status not in ("failed", "cancelled", jobs.REFUSED)
    ):
        problem = f"dataset version {dataset.version} already has job {existing.id} ({existing.status})"
    if problem is None and estimate is not None and train.max_cost_usd is not None:
        if estimate.usd is None:
            problem = (
                f"no training price for {train.base_model}: max_cost_usd cannot be checked, "
                "so it would be refused"
            )
        elif estimate.usd > train.max_cost_usd:
            problem = (
                f"estimated ${estimate.usd:,.2f} is above max_cost_usd = {train.max_cost_usd}: "
                "it would be refused"
            )
    return TrainPlan(
        **base,
        dataset_version=int(dataset.version),
        train_examples=train_examples,
        test_examples=test_examples,
        estimate=estimate,
        decision=decision,
        existing_job=existing.id if existing is not None else None,
        new_calls=waiting,
        problem=problem,
    )
