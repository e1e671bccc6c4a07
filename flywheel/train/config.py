"""The pipelines config, ``flywheel.toml``: what each pipeline selects, cleans, exports and trains.

A pipeline is a dataset kept up to date from a filter, the steps run on it, and optionally when
and how to train on it::

    [pipelines.classify]
    filter = { tags = { prompt_id = "classify-v2" }, status = "ok" }
    dedup = { near_threshold = 0.85 }
    export = { test_fraction = 0.1 }

    [pipelines.classify.train]
    provider = "openai"
    base_model = "gpt-4o-mini-2024-07-18"
    min_examples = 100

This module is the public face; the work is split by job: ``config_steps`` (the step tables and
hyperparameters), ``config_pipeline`` (``TrainSettings``, ``Pipeline``, ``FlywheelConfig`` and the
checks across keys), ``config_load`` (finding, parsing and validating the file) and
``config_errors`` (problems with key paths, lines and did-you-mean). The frozen pydantic models
are also the library's way to build a pipeline in Python.

Invariants: a loaded config is complete (every default filled in, the provider's own keys
validated by that provider's ``Settings``), and a config that cannot be used raises one
``ConfigError`` listing every problem with its key path and line, before any step runs. The
reference in docs/training.md is generated from these models (``config_docs``).
"""

from __future__ import annotations

from typing import Any

from .config_errors import ConfigError, ConfigProblem
from .config_eval import EvalSettings, PromoteSettings
from .config_load import config_path, load_config, parse_config
from .config_pipeline import FlywheelConfig, Pipeline, TrainSettings
from .config_steps import DedupStep, ExportStep, Hyperparameters, PruneStep, RelabelStep

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DedupStep",
    "EvalSettings",
    "ExportStep",
    "FlywheelConfig",
    "Hyperparameters",
    "Pipeline",
    "PromoteSettings",
    "PruneStep",
    "RelabelStep",
    "TrainSettings",
    "config_path",
    "describe_pipeline",
    "load_config",
    "parse_config",
]


def describe_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """``pipeline`` resolved and JSON-ready: defaults filled in, the filter as ``CallFilter.as_dict``,
    ``min_interval`` in seconds, the provider's keys inline in ``train`` (as in the file)."""
    steps = {
        name: None if step is None else step.model_dump(mode="json")
        for name, step in (
            ("dedup", pipeline.dedup),
            ("relabel", pipeline.relabel),
            ("prune", pipeline.prune),
        )
    }
    described: dict[str, Any] = {
        "name": pipeline.name,
        "dataset": pipeline.dataset,
        "filter": pipeline.filter.as_dict(),
        **steps,
        "export": pipeline.export.model_dump(mode="json"),
        "train": None,
        "eval": pipeline.eval.model_dump(mode="json"),
        "promote": None if pipeline.promote is None else pipeline.promote.model_dump(mode="json"),
    }
    train = pipeline.train
    if train is not None:
        own = train.model_dump(mode="json", exclude={"provider_settings", "min_interval", "hyperparameters"})
        interval = train.min_interval.total_seconds() if train.min_interval is not None else None
        described["train"] = {
            **own,
            "retrain_after_new": train.retrain_after_new
            if train.retrain_after_new is not None
            else train.min_examples,
            "min_interval": int(interval) if interval is not None and interval.is_integer() else interval,
            "hyperparameters": train.hyperparameters.to_request(),
            **train.provider_settings.model_dump(mode="json"),
        }
    return described
