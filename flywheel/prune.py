"""Pruning rules: instruction text repeated in every input, removed from the exported examples.

A fine-tuned model learns the behaviour a long system prompt asked for, so the prompt can be left
out of its training data and of its requests: shorter inputs, cheaper and faster calls. The rules
(``flywheel.finetune_format.PruneRule``) are stored on the dataset (``settings["prune_rules"]``),
applied by ``flywheel export`` and written into its manifest, so the app can apply exactly the same
rules at inference time with ``apply_prune_rules``.

``common_system_prompts`` finds the candidates: system prompts shared by many of a dataset's
entries. Invariant: changing the rules makes a dataset version (action ``rules``); setting the
rules a dataset already has changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from sdk.schema import calls, dataset_entries

from .datasets import entries_at, record_version, require_dataset, save_setting, step_time, store_transaction
from .finetune_format import PruneRule, prune_rule_from_dict, text_sha256
from .query import connect

__all__ = ["SystemPrompt", "common_system_prompts", "prune_rules", "set_prune_rules"]

BATCH_ROWS = 2000


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    """A system prompt and how many of the dataset's entries open with it."""

    text: str
    entries: int
    share: float

    @property
    def sha256(self) -> str:
        return text_sha256(self.text)

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "entries": self.entries, "share": self.share, "text": self.text}


def prune_rules(database_url: str, name: str) -> list[PruneRule]:
    """The pruning rules stored on dataset ``name`` (empty when it has none)."""
    with connect(database_url) as conn:
        settings = orjson.loads(require_dataset(conn, name).settings)
    return [prune_rule_from_dict(rule) for rule in settings.get("prune_rules", [])]


def set_prune_rules(
    database_url: str, name: str, rules: Sequence[PruneRule], *, now: datetime | None = None
) -> int | None:
    """Make ``rules`` the pruning rules of dataset ``name``; the new version, or None if unchanged."""
    wanted = [rule.as_dict() for rule in rules]
    with store_transaction(database_url) as conn:
        dataset = require_dataset(conn, name)
        settings = orjson.loads(dataset.settings)
        if settings.get("prune_rules", []) == wanted:
            return None
        save_setting(conn, dataset.id, settings, "prune_rules", wanted)
        version = int(dataset.version) + 1
        record_version(conn, dataset.id, version, "rules", {"prune_rules": wanted}, step_time(now))
        return version


def common_system_prompts(database_url: str, name: str, *, limit: int = 5) -> list[SystemPrompt]:
    """The system prompts that open the dataset's inputs, most common first (streamed; one pass)."""
    counts: Counter[str] = Counter()
    total = 0
    with connect(database_url) as conn:
        dataset = require_dataset(conn, name)
        statement = (
            sa.select(calls.c.request)
            .select_from(dataset_entries.join(calls, calls.c.id == dataset_entries.c.call_id))
            .where(entries_at(dataset.id, dataset.version))
            .execution_options(stream_results=True, yield_per=BATCH_ROWS)
        )
        for (request,) in conn.execute(statement):
            total += 1
            prompt = _system_prompt(orjson.loads(request))
            if prompt is not None:
                counts[prompt] += 1
    return [SystemPrompt(text, n, n / total) for text, n in counts.most_common(limit)]


def _system_prompt(request: Any) -> str | None:
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    first = messages[0]
    if first.get("role") not in ("system", "developer"):
        return None
    content = first.get("content")
    if isinstance(content, list):  # text parts: the text the prune rule compares (joined by newlines)
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        content = "\n".join(text for text in texts if isinstance(text, str))
    return content if isinstance(content, str) and content else None
