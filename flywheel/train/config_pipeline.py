"""A pipeline as a model: ``TrainSettings``, ``Pipeline`` and the whole file, ``FlywheelConfig``.

The checks that need more than one key live here, as model validators, so that a pipeline built
in Python is held to the same rules as one read from ``flywheel.toml``: the provider exists and
its settings are its own ``Settings``, ``beta`` goes with DPO only, names are dataset names, and
pipelines that share a dataset agree on how it is filled. A validator blames the key at fault by
raising ``InvalidKey`` (``config_errors``), so the message names ``hyperparameters.beta``, not the
whole table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..datasets import NAME_PATTERN
from ..errors import UsageError
from ..query import CallFilter
from .config_errors import InvalidKey, did_you_mean
from .config_eval import EvalSettings, PromoteSettings
from .config_steps import (
    MODEL_CONFIG,
    DedupStep,
    Duration,
    ExportStep,
    Hyperparameters,
    PruneStep,
    RelabelStep,
)
from .providers.base import ProviderSettings
from .providers.registry import available_providers, provider_class

__all__ = ["OWN_KEYS_ONLY", "FlywheelConfig", "Pipeline", "TrainSettings"]

OWN_KEYS_ONLY = "own_keys_only"
"""Validation context key: check a train table's own keys only, not ``provider_settings`` (used
when the provider's keys failed already, to list the other problems too)."""


class TrainSettings(BaseModel):
    """``[pipelines.NAME.train]``: when a job starts, and what it is asked for.

    Every other key of the table is the provider's own (``base_url``, ``command``, ...), checked
    by that provider's ``Settings`` and kept in ``provider_settings``.

    Parameters:
        provider: where jobs run: ``openai`` (any server with OpenAI's fine-tuning API),
            ``command`` (a local trainer), or a plug-in's name.
        base_model: the model to fine-tune.
        min_examples: training examples the dataset needs before the first job.
        retrain_after_new: new training examples since the last job before the next one; default
            ``min_examples``.
        min_interval: the least time between two jobs, however fast data arrives.
        hyperparameters: see below.
        method: ``"supervised"`` (chat examples) or ``"dpo"`` (preference pairs).
        suffix: added to the fine-tuned model's name (at most 64 characters, OpenAI's limit).
        seed: makes a job repeatable where the provider supports it.
        validation: send the test split as the validation file, for validation loss.
        max_cost_usd: a job whose estimated cost is higher is refused, not launched.
    """

    model_config = MODEL_CONFIG
    hidden_keys: ClassVar[frozenset[str]] = frozenset({"provider_settings"})

    provider: str
    base_model: str = Field(min_length=1)
    min_examples: int = Field(default=100, ge=1)
    retrain_after_new: int | None = Field(default=None, ge=1)
    min_interval: Duration | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    method: Literal["supervised", "dpo"] = "supervised"
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = None
    validation: bool = False
    max_cost_usd: float | None = Field(default=None, gt=0)
    provider_settings: SerializeAsAny[ProviderSettings] = ProviderSettings()

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        known = available_providers()
        if value not in known:
            raise ValueError(f"unknown provider {value!r}{did_you_mean(value, known)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _settings_of_provider(cls, data: Any, info: ValidationInfo) -> Any:
        # In Python, `provider_settings` may be left out (the provider's defaults) or be a mapping.
        context = info.context if isinstance(info.context, Mapping) else {}
        if not isinstance(data, Mapping) or context.get(OWN_KEYS_ONLY):
            return data
        provider, settings = data.get("provider"), data.get("provider_settings")
        if not isinstance(provider, str) or provider not in available_providers():
            return data
        if settings is None or isinstance(settings, Mapping):
            try:
                settings_class = provider_class(provider).Settings
            except UsageError as exc:
                raise InvalidKey(("provider",), exc.message) from exc
            return {**data, "provider_settings": settings_class.model_validate(settings or {})}
        return data

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> TrainSettings:
        context = info.context if isinstance(info.context, Mapping) else {}
        if not context.get(OWN_KEYS_ONLY):
            expected = provider_class(self.provider).Settings
            if not isinstance(self.provider_settings, expected):
                raise InvalidKey(
                    ("provider_settings",),
                    f"expected {expected.__name__} for provider {self.provider!r}, "
                    f"got {type(self.provider_settings).__name__}",
                )
        if self.method != "dpo" and self.hyperparameters.beta is not None:
            raise InvalidKey(
                ("hyperparameters", "beta"), f'only applies to method = "dpo" (this one is "{self.method}")'
            )
        return self


# --- pipelines and the file -----------------------------------------------------------------------


class Pipeline(BaseModel):
    """``[pipelines.NAME]``: a dataset kept up to date from a filter, its steps, and its training.

    Steps run in this order on every pass: the dataset takes in new calls, then prune, dedup and
    relabel; export and train follow when the thresholds are met. A step that is not written does
    not run.

    Parameters:
        filter: the calls the dataset takes in: the ``CallFilter`` fields (below); relative times
            (``since = "30d"``) slide with every pass. ``filter = {}`` takes every chat call.
        dataset: the dataset's name; default the pipeline's name.
        dedup: see below; ``true`` for the defaults.
        relabel: see below.
        prune: see below.
        export: see below.
        train: see below; without it, the pipeline only keeps its dataset up to date.
        eval: see below.
        promote: see below; without it, ``watch`` never switches the pipeline's model.
    """

    model_config = MODEL_CONFIG
    hidden_keys: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str
    filter: CallFilter
    dataset: str
    dedup: DedupStep | None = None
    relabel: RelabelStep | None = None
    prune: PruneStep | None = None
    export: ExportStep = ExportStep()
    train: TrainSettings | None = None
    eval: EvalSettings = EvalSettings()
    promote: PromoteSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        resolved = dict(data)
        if isinstance(resolved.get("dedup"), bool):
            resolved["dedup"] = DedupStep() if resolved["dedup"] else None
        if "dataset" not in resolved and isinstance(resolved.get("name"), str):
            resolved["dataset"] = resolved["name"]
        return resolved

    def training(self) -> TrainSettings:
        """Its ``[pipelines.NAME.train]`` table; ``UsageError`` when it has none (it cannot train)."""
        if self.train is None:
            raise UsageError(f"pipeline {self.name!r} has no [pipelines.{self.name}.train] table", self.name)
        return self.train

    @model_validator(mode="after")
    def _names(self) -> Pipeline:
        rule = "use up to 200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        if not NAME_PATTERN.fullmatch(self.name):
            raise InvalidKey((), f"invalid pipeline name {self.name!r}: {rule}")
        if not NAME_PATTERN.fullmatch(self.dataset):
            raise InvalidKey(("dataset",), f"invalid dataset name {self.dataset!r}: {rule}")
        if self.promote is not None:
            if self.train is None:
                raise InvalidKey(("promote",), "needs a train table: only trained models are promoted")
            if self.promote.metric == "judge" and self.eval.judge is None:
                raise InvalidKey(("promote", "metric"), '"judge" needs a judge model: set eval.judge')
        return self


class FlywheelConfig(BaseModel):
    """A whole ``flywheel.toml``: its pipelines, in the order the file declares them.

    Pipelines may share a dataset only if they select and clean it the same way (filter, dedup,
    relabel, prune), since the dataset's rules are the dataset's, not a pipeline's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    path: Path
    pipelines: Mapping[str, Pipeline]

    @model_validator(mode="after")
    def _consistent(self) -> FlywheelConfig:
        if not self.pipelines:
            raise InvalidKey(("pipelines",), "no pipelines defined; add a [pipelines.NAME] table")
        owners: dict[str, Pipeline] = {}
        now = datetime.now(UTC)  # relative filter times compare as of one moment
        for key, pipeline in self.pipelines.items():
            if key != pipeline.name:
                raise InvalidKey(("pipelines", key), f"holds the pipeline named {pipeline.name!r}")
            first = owners.setdefault(pipeline.dataset, pipeline)
            if first is not pipeline and _cleaning(first, now) != _cleaning(pipeline, now):
                raise InvalidKey(
                    ("pipelines", key, "dataset"),
                    f"dataset {pipeline.dataset!r} is filled by pipeline {first.name!r} with another "
                    "filter or other dedup/relabel/prune steps; give this pipeline a dataset of its own",
                )
        return self

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline called ``name``; ``UsageError`` with the closest name when there is none."""
        found = self.pipelines.get(name)
        if found is None:
            raise UsageError(
                f"no pipeline named {name!r}{did_you_mean(name, self.pipelines)}", str(self.path)
            )
        return found

    @property
    def work_dir(self) -> Path:
        """Where training jobs keep their files: ``.flywheel`` beside the config file."""
        return self.path.parent / ".flywheel"


def _cleaning(pipeline: Pipeline, now: datetime) -> tuple[Any, ...]:
    return (pipeline.filter.refreshed(now), pipeline.dedup, pipeline.relabel, pipeline.prune)
