"""A pipeline's dataset steps, as one pass runs them: update from the filter, prune, dedup, relabel.

Each step is the library function its CLI command calls, with the pipeline's settings; a step
that has nothing to do changes nothing (no dataset version). Dedup and relabel run when the update
took in new entries, or when they have never run on the dataset, so a pass over a dataset that
received nothing does no work beyond the update's query. ``export_for_training`` is the export
step a launch (and the dry-run plan) runs with the pipeline's export settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..datasets import count_entries, create_dataset, get_dataset, require_dataset
from ..dedup import dedup_dataset
from ..export import ExportResult, export_dataset
from ..finetune_format import DropSystemPrompt, PruneRule, StripPrefix
from ..prune import common_system_prompts, prune_rules, set_prune_rules
from ..query import connect
from ..relabel import relabel_dataset
from .config import Pipeline

__all__ = ["StepsResult", "export_for_training", "run_steps"]

log = logging.getLogger("flywheel.watch")


@dataclass(slots=True)
class StepsResult:
    """What the steps did to the pipeline's dataset."""

    dataset: str
    version: int
    entries: int
    added: int
    created: bool
    done: dict[str, Any] = field(default_factory=dict)
    """Per step that ran: its result (``as_dict()``)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "entries": self.entries,
            "added": self.added,
            "created": self.created,
            "steps": self.done,
        }


def run_steps(
    database_url: str, pipeline: Pipeline, *, workers: int = 1, now: datetime | None = None
) -> StepsResult:
    """Bring ``pipeline``'s dataset up to date with its filter and run its steps on what is new."""
    name = pipeline.dataset
    added = create_dataset(database_url, name, pipeline.filter, now=now)
    result = StepsResult(name, added.dataset.version, added.dataset.entries, added.added, added.created)
    settings = added.dataset.settings
    log.info(
        "%s: dataset %s %s, %d new entr%s (%d in all)",
        pipeline.name,
        name,
        "created" if added.created else "updated",
        added.added,
        "y" if added.added == 1 else "ies",
        added.dataset.entries,
    )
    fresh = added.added > 0
    if pipeline.prune is not None:
        version = _prune(database_url, pipeline)
        if version is not None:
            result.done["prune"] = {"version": version}
    if pipeline.dedup is not None and (fresh or "dedup" not in settings):
        dedup = dedup_dataset(
            database_url,
            name,
            threshold=pipeline.dedup.near_threshold,
            exact=pipeline.dedup.exact,
            workers=workers,
            now=now,
        )
        result.done["dedup"] = {k: v for k, v in dedup.as_dict().items() if k != "largest_clusters"}
        log.info("%s: dedup removed %d of %d entries", pipeline.name, dedup.removed, dedup.entries)
    if pipeline.relabel is not None and (fresh or not _relabeled(database_url, name)):
        step = pipeline.relabel
        relabel = relabel_dataset(
            database_url,
            name,
            model=step.model,
            base_url=step.base_url,
            api_key=os.environ.get(step.api_key_env),
            concurrency=step.concurrency,
            max_retries=step.max_retries,
            timeout=step.timeout,
            temperature=step.temperature,
            now=now,
        )
        result.done["relabel"] = relabel.as_dict()
        log.info(
            "%s: relabel by %s: %d relabeled, %d failed",
            pipeline.name,
            step.model,
            relabel.relabeled,
            relabel.failed,
        )
    with connect(database_url) as conn:
        row = require_dataset(conn, name)
        result.version, result.entries = int(row.version), count_entries(conn, row.id, row.version)
    return result


def export_for_training(
    database_url: str,
    pipeline: Pipeline,
    out_dir: str | os.PathLike[str],
    *,
    version: int | None = None,
    dry_run: bool = False,
    workers: int = 1,
    now: datetime | None = None,
) -> ExportResult:
    """The pipeline's export step (its split, pruning and validation, the base model's token
    limit) of the dataset at ``version`` (default: its newest) into ``out_dir``."""
    step = pipeline.export
    return export_dataset(
        database_url,
        pipeline.dataset,
        out_dir,
        test_fraction=step.test_fraction,
        stratify_by=step.stratify_by,
        salt=step.salt,
        train_on=step.train_on,
        base_model=pipeline.training().base_model,
        token_limit=step.token_limit,
        skip_invalid=step.skip_invalid,
        dry_run=dry_run,
        version=version,
        workers=workers,
        now=now,
    )


def _prune(database_url: str, pipeline: Pipeline) -> int | None:
    """Add the pipeline's pruning rules to the dataset's (as ``flywheel dataset prune`` does)."""
    step = pipeline.prune
    assert step is not None
    name = pipeline.dataset
    rules: list[PruneRule] = list(prune_rules(database_url, name))
    if step.drop_common_system_prompt:
        prompts = common_system_prompts(database_url, name)
        if prompts and prompts[0].share >= step.min_share:
            rules.append(DropSystemPrompt(prompts[0].sha256))
    rules.extend(StripPrefix(prefix) for prefix in step.strip_prefix)
    return set_prune_rules(database_url, name, list(dict.fromkeys(rules)))


def _relabeled(database_url: str, name: str) -> bool:
    """Whether a relabel step ever ran on dataset ``name``."""
    return any(version.action == "relabel" for version in get_dataset(database_url, name).history)
