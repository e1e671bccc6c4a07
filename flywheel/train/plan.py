"""``flywheel train NAME --dry-run``: the job a launch would make, priced, without writing anything.

The plan is made from the dataset as it is (the steps that would bring it up to date first are not
run: they write), with an export dry run for the exact examples and tokens, and the thresholds'
verdict beside it, so the user sees what ``watch`` would do and what ``train`` would do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from ..datasets import NotFoundError, count_new_calls, require_dataset, step_time
from ..export import ExportError
from ..query import connect
from . import jobs
from .config import FlywheelConfig
from .cost import CostEstimate, estimate_export, over_budget
from .providers.base import export_sides
from .steps import export_for_training
from .thresholds import Decision, current_decision

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
    train = pipeline.training()
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
        try:
            dataset = require_dataset(conn, pipeline.dataset)
        except NotFoundError:
            matching = count_new_calls(conn, None, pipeline.filter.refreshed())
            return TrainPlan(
                **base,
                dataset_version=None,
                train_examples=None,
                test_examples=None,
                estimate=None,
                decision=None,
                existing_job=None,
                new_calls=matching,
                problem=(
                    f"dataset {pipeline.dataset} does not exist yet; a pass creates it from the filter "
                    f"({matching} calls match it, before the steps)"
                ),
            )
        waiting = count_new_calls(conn, int(dataset.id), pipeline.filter.refreshed())
        decision = current_decision(conn, pipeline, dataset, step_time())
        existing = jobs.job_for_version(conn, name, int(dataset.id), int(dataset.version))
        _, blocked = jobs.launch_blocker(conn, name, pipeline.dataset, int(dataset.id), int(dataset.version))
    problem: str | None = None
    estimate: CostEstimate | None = None
    train_examples = test_examples = None
    with tempfile.TemporaryDirectory(prefix="flywheel-plan-") as scratch:
        try:
            exported = export_for_training(database_url, pipeline, scratch, dry_run=True)
        except ExportError as exc:
            problem = f"the export would fail: {exc}"
        else:
            train_side, test_side = export_sides(train.method)
            train_examples, test_examples = exported.counts[train_side], exported.counts[test_side]
            estimate = estimate_export(train.base_model, train.method, hyperparameters, exported.manifest)
    problem = problem or blocked
    if problem is None and estimate is not None:
        problem = over_budget(train.max_cost_usd, train.base_model, estimate.usd, estimate.training_tokens)
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
