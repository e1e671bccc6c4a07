"""The step tables of a pipeline (``dedup``, ``relabel``, ``prune``, ``export``) and its
``hyperparameters``, as frozen pydantic models.

Each model is what a user writes in ``flywheel.toml`` and also what the library passes to the
step's function, so a field's default is the step's own default (taken from the step's module,
never repeated here). The docstrings' ``Parameters:`` sections are the reference in
docs/training.md (``config_docs``), so they say what a key is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from ..near_duplicates import DEFAULT_THRESHOLD
from ..query import parse_duration as _parse_duration
from ..relabel import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from .config_errors import shown

__all__ = [
    "MODEL_CONFIG",
    "AutoFloat",
    "AutoInt",
    "DedupStep",
    "Duration",
    "ExportStep",
    "Hyperparameters",
    "PruneStep",
    "RelabelStep",
    "TypeLabel",
]

MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
"""Strict: TOML has real types, so ``min_examples = "10"`` or ``validation = 1`` is a mistake to
report, not a value to guess at. No ``inf``/``nan``: a threshold or a budget must compare."""


@dataclass(frozen=True, slots=True)
class TypeLabel:
    """How the reference docs name a type that a plain validator checks (pydantic cannot say)."""

    text: str


# --- values pydantic has no type for --------------------------------------------------------------


def _auto_or(kind: type[int] | type[float], minimum: float, exclusive: bool) -> Any:
    """A validator for ``"auto"`` or a number above ``minimum`` (the provider picks for "auto")."""
    bound = f"{'>' if exclusive else '>='} {minimum:g}"
    name = "an integer" if kind is int else "a number"

    def check(value: Any) -> int | float | str:
        if value == "auto" and isinstance(value, str):
            return value
        numeric = isinstance(value, int) or (kind is float and isinstance(value, float))
        if not numeric or isinstance(value, bool):
            raise ValueError(f"expected {name} {bound} or 'auto', got {shown(value)}")
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise ValueError(f"must be {bound} or 'auto', got {shown(value)}")
        return kind(value)

    return PlainValidator(check)


AutoInt = Annotated[int | Literal["auto"], _auto_or(int, 1, False), TypeLabel('integer >= 1, or "auto"')]
AutoFloat = Annotated[float | Literal["auto"], _auto_or(float, 0, True), TypeLabel('number > 0, or "auto"')]


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (parsed := _parse_duration(value)) is not None:
        seconds = parsed.total_seconds()
    else:
        raise ValueError(
            f"expected a duration such as '30m', '6h', '1d', '2w' or seconds, got {shown(value)}"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be > 0, got {shown(value)}")
    return timedelta(seconds=seconds)


Duration = Annotated[
    timedelta, PlainValidator(_duration), TypeLabel('duration: "30m", "6h", "1d", "2w" or seconds')
]


# --- the steps ------------------------------------------------------------------------------------


class DedupStep(BaseModel):
    """``dedup``: keep one entry of each cluster of duplicate inputs (``flywheel dedup``).

    ``dedup = true`` runs it with these defaults; leave it out (or ``false``) to keep duplicates.

    Parameters:
        near_threshold: the estimated similarity of two inputs' word bigrams from which they count
            as near-duplicates; lower takes more templated prompts as copies.
        exact: compare input hashes only (byte-identical inputs), no near-duplicates.
    """

    model_config = MODEL_CONFIG

    near_threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1)
    exact: bool = False


class RelabelStep(BaseModel):
    """``relabel``: a teacher model answers every new input again (``flywheel relabel``).

    Parameters:
        model: the teacher model.
        base_url: its OpenAI-compatible API root; default ``OPENAI_BASE_URL``, else OpenAI.
        api_key_env: the environment variable the teacher's API key is read from (never the key).
        concurrency: requests in flight at once.
        temperature: sent with each request when set; the teacher's default otherwise.
        max_retries: attempts after the first for rate limits, server errors and timeouts.
        timeout: seconds per request attempt.
    """

    model_config = MODEL_CONFIG

    model: str = Field(min_length=1)
    base_url: str | None = Field(default=None, min_length=1)
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)


class PruneStep(BaseModel):
    """``prune``: leave text out of the training examples that the model need not learn.

    Parameters:
        drop_common_system_prompt: leave out the system prompt that most entries share, so the
            fine-tuned model learns the task without the long instructions.
        min_share: the share of entries (0-1) that must carry the most common system prompt for it
            to be dropped.
        strip_prefix: text removed from the start of messages that begin with it.
    """

    model_config = MODEL_CONFIG

    drop_common_system_prompt: bool = False
    min_share: float = Field(default=0.5, ge=0, le=1)
    strip_prefix: tuple[Annotated[str, Field(min_length=1)], ...] = Field(default=(), strict=False)


class ExportStep(BaseModel):
    """``export``: how the dataset becomes ``train.jsonl``/``test.jsonl`` (``flywheel export``).

    Parameters:
        test_fraction: the share of entries (0-1) held out for testing; unset keeps the dataset's
            stored split (10 % the first time).
        stratify_by: a tag key whose values are split in the same proportion each.
        salt: changes which entries fall in the test split; unset keeps the stored one.
        train_on: ``"all"`` assistant messages, or only the ``"last"`` (earlier turns get weight 0).
        skip_invalid: leave invalid examples out instead of stopping: a pipeline runs unattended,
            and one odd call must not hold every later job back.
        token_limit: the most tokens an example may have; default the base model's limit.
    """

    model_config = MODEL_CONFIG

    test_fraction: float | None = Field(default=None, ge=0, le=1)
    stratify_by: str | None = Field(default=None, min_length=1)
    salt: str | None = None
    train_on: Literal["all", "last"] = "all"
    skip_invalid: bool = True
    token_limit: int | None = Field(default=None, ge=1)


# --- training -------------------------------------------------------------------------------------


class Hyperparameters(BaseModel):
    """``hyperparameters``: sent to the provider as they are; unset ones are the provider's choice.

    Parameters:
        n_epochs: passes over the training file.
        batch_size: examples per training step.
        learning_rate_multiplier: scales the provider's base learning rate.
        beta: how far DPO may move from the base model (``method = "dpo"`` only).
    """

    model_config = MODEL_CONFIG

    n_epochs: AutoInt | None = None
    batch_size: AutoInt | None = None
    learning_rate_multiplier: AutoFloat | None = None
    beta: AutoFloat | None = None

    def to_request(self) -> dict[str, Any]:
        """The hyperparameters that are set, as the job request carries them."""
        return {name: value for name, value in self.model_dump().items() if value is not None}
