"""The pipelines config: ``flywheel.toml`` read, validated and reported, and ``flywheel config check``.

Configs are real files in ``tmp_path``; the command runs through click's ``CliRunner`` and once as
a real process. Every bad config is checked for the exact key path, message and line a user sees.
A small provider defined here (registered as a built-in) tests the provider-keys logic; the real
``openai`` and ``command`` providers are used too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
from click.testing import CliRunner, Result
from pydantic import Field, ValidationError

from flywheel.cli import cli
from flywheel.errors import UsageError
from flywheel.query import CallFilter
from flywheel.train.config import (
    ConfigError,
    DedupStep,
    ExportStep,
    FlywheelConfig,
    Hyperparameters,
    Pipeline,
    PruneStep,
    RelabelStep,
    TrainSettings,
    config_path,
    describe_pipeline,
    load_config,
    parse_config,
)
from flywheel.train.config_docs import current_section, render_config_reference, replace_section
from flywheel.train.config_errors import KeyLines, format_key
from flywheel.train.providers import registry
from flywheel.train.providers.base import (
    JobHandle,
    JobRequest,
    JobState,
    Provider,
    ProviderSettings,
    TrainingFiles,
)
from flywheel.train.providers.command import CommandSettings
from flywheel.train.providers.openai import OpenAISettings

REPO = Path(__file__).resolve().parent.parent

EXAMPLE = """\
# flywheel.toml
[pipelines.classify]
filter = { tags = { prompt_id = "classify-v2" }, status = "ok" }
dataset = "classify"
dedup = { near_threshold = 0.85 }
relabel = { model = "gpt-4o" }
prune = { drop_common_system_prompt = true, min_share = 0.5, strip_prefix = ["You are"] }
export = { test_fraction = 0.1 }

[pipelines.classify.train]
provider = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "OPENAI_API_KEY"
base_model = "gpt-4o-mini-2024-07-18"
min_examples = 100
retrain_after_new = 500
min_interval = "6h"
hyperparameters = { n_epochs = 3 }
suffix = "classify"
max_cost_usd = 20
"""
"""The brief's config; line 11 is `provider`, 14 `base_model`, 15 `min_examples`, 18 `hyperparameters`."""

MINIMAL = """\
[pipelines.qa]
filter = {}
"""


class FakeSettings(ProviderSettings):
    """Keys of the test provider: one required, one optional."""

    endpoint: str = Field(min_length=1)
    retries: int = Field(default=2, ge=0)


class FakeProvider(Provider):
    """A provider that only exists to be configured; no job ever reaches it."""

    name: ClassVar[str] = "fake"
    Settings: ClassVar[type[ProviderSettings]] = FakeSettings

    def prepare(self, request: JobRequest, files: TrainingFiles) -> dict[str, str]:
        raise NotImplementedError

    def find(self, request: JobRequest) -> JobState | None:
        raise NotImplementedError

    def launch(self, request: JobRequest, prepared: Mapping[str, str]) -> JobState:
        raise NotImplementedError

    def poll(self, handle: JobHandle) -> JobState:
        raise NotImplementedError

    def cancel(self, handle: JobHandle) -> JobState:
        raise NotImplementedError


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)


@pytest.fixture
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BUILT_IN, "fake", f"{__name__}:FakeProvider")
    monkeypatch.setitem(registry._BUILT_IN, "broken", "flywheel.train.providers.no_such_module:Nothing")


def edited(*edits: tuple[str, str], text: str = EXAMPLE) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="flywheel")


# --- a valid config ---------------------------------------------------------------------------------


def test_the_example_loads_with_every_value_and_default(tmp_path: Path) -> None:
    path = tmp_path / "flywheel.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.path == path and config.work_dir == tmp_path / ".flywheel"
    assert list(config.pipelines) == ["classify"]
    pipeline = config.pipeline("classify")
    assert pipeline.filter == CallFilter(tags={"prompt_id": "classify-v2"}, status="ok")
    assert pipeline.dataset == "classify"
    assert pipeline.dedup == DedupStep(near_threshold=0.85, exact=False)
    assert pipeline.relabel == RelabelStep(model="gpt-4o")
    assert (pipeline.relabel.concurrency, pipeline.relabel.max_retries, pipeline.relabel.timeout) == (
        8,
        5,
        120.0,
    )
    assert pipeline.prune == PruneStep(
        drop_common_system_prompt=True, min_share=0.5, strip_prefix=("You are",)
    )
    assert pipeline.export == ExportStep(test_fraction=0.1, skip_invalid=True, train_on="all")
    train = pipeline.train
    assert train is not None
    assert (train.provider, train.base_model, train.min_examples, train.retrain_after_new) == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        100,
        500,
    )
    assert train.min_interval == timedelta(hours=6)
    assert train.hyperparameters.to_request() == {"n_epochs": 3}
    assert (train.method, train.suffix, train.seed, train.validation, train.max_cost_usd) == (
        "supervised",
        "classify",
        None,
        False,
        20.0,
    )
    assert train.provider_settings == OpenAISettings(
        base_url="https://api.example.com/v1", api_key_env="OPENAI_API_KEY"
    )


def test_a_minimal_pipeline_only_keeps_its_dataset_up_to_date() -> None:
    pipeline = parse_config(MINIMAL).pipeline("qa")
    assert pipeline == Pipeline(name="qa", filter=CallFilter(), dataset="qa")
    assert (pipeline.dedup, pipeline.relabel, pipeline.prune, pipeline.train) == (None, None, None, None)
    assert pipeline.export == ExportStep()
    assert pipeline.export.skip_invalid is True


def test_defaults_of_a_train_table_and_the_shorthands() -> None:
    text = MINIMAL + 'dedup = true\n[pipelines.qa.train]\nprovider = "openai"\nbase_model = "m"\n'
    pipeline = parse_config(text).pipeline("qa")
    assert pipeline.dedup == DedupStep(near_threshold=0.5, exact=False)
    train = pipeline.train
    assert train is not None
    assert (train.min_examples, train.retrain_after_new, train.min_interval) == (100, None, None)
    assert train.hyperparameters == Hyperparameters() and train.hyperparameters.to_request() == {}
    assert train.provider_settings == OpenAISettings()
    assert describe_pipeline(pipeline)["train"]["retrain_after_new"] == 100
    assert parse_config(MINIMAL + "dedup = false\n").pipeline("qa").dedup is None


def test_describe_pipeline_is_resolved_and_json_ready() -> None:
    described = describe_pipeline(parse_config(EXAMPLE).pipeline("classify"))
    assert orjson.loads(orjson.dumps(described)) == described
    assert described["filter"] == {"tags": ["prompt_id=classify-v2"], "status": "ok"}
    assert described["dedup"] == {"near_threshold": 0.85, "exact": False}
    assert described["prune"]["strip_prefix"] == ["You are"]
    assert described["export"]["skip_invalid"] is True
    train = described["train"]
    assert train["min_interval"] == 21_600 and train["hyperparameters"] == {"n_epochs": 3}
    assert train["base_url"] == "https://api.example.com/v1" and train["create_settle_s"] == 30.0
    assert "provider_settings" not in train


def test_pipelines_keep_file_order_and_unknown_names_get_a_suggestion(tmp_path: Path) -> None:
    text = '[pipelines.zeta]\nfilter = {}\n[pipelines.alpha]\nfilter = {}\ndataset = "alpha-data"\n'
    config = parse_config(text, source=str(tmp_path / "f.toml"))
    assert list(config.pipelines) == ["zeta", "alpha"]
    assert config.pipeline("alpha").dataset == "alpha-data"
    with pytest.raises(UsageError) as caught:
        config.pipeline("alpa")
    assert caught.value.message == "no pipeline named 'alpa' (did you mean 'alpha'?)"
    assert caught.value.where == str(tmp_path / "f.toml")
    with pytest.raises(UsageError, match=r"no pipeline named 'x' \(known: alpha, zeta\)"):
        config.pipeline("x")


def test_relative_filter_times_stay_relative_and_toml_dates_are_utc() -> None:
    relative = parse_config('[pipelines.a]\nfilter = { since = "30d" }\n').pipeline("a").filter
    assert relative.since_relative == "30d"
    assert relative.since is not None
    assert abs(relative.since - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=1)
    later = relative.refreshed(datetime(2030, 1, 31, tzinfo=UTC))
    assert later.since == datetime(2030, 1, 1, tzinfo=UTC)
    dated = parse_config("[pipelines.a]\nfilter = { since = 2024-05-01, until = 2024-05-02T12:00:00 }\n")
    call_filter = dated.pipeline("a").filter
    assert call_filter.since == datetime(2024, 5, 1, tzinfo=UTC)
    assert call_filter.until == datetime(2024, 5, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"30m"', timedelta(minutes=30)),
        ('"1d"', timedelta(days=1)),
        ('"2w"', timedelta(weeks=2)),
        ("90", timedelta(seconds=90)),
    ],
)
def test_min_interval_forms(written: str, expected: timedelta) -> None:
    text = (
        MINIMAL + f'[pipelines.qa.train]\nprovider = "openai"\nbase_model = "m"\nmin_interval = {written}\n'
    )
    train = parse_config(text).pipeline("qa").train
    assert train is not None and train.min_interval == expected


def test_hyperparameters_take_auto_and_dpo_takes_beta() -> None:
    text = MINIMAL + (
        '[pipelines.qa.train]\nprovider = "openai"\nbase_model = "m"\nmethod = "dpo"\n'
        'hyperparameters = { n_epochs = "auto", batch_size = 8, learning_rate_multiplier = 0.5, '
        "beta = 0.1 }\n"
    )
    train = parse_config(text).pipeline("qa").train
    assert train is not None
    assert train.hyperparameters.to_request() == {
        "n_epochs": "auto",
        "batch_size": 8,
        "learning_rate_multiplier": 0.5,
        "beta": 0.1,
    }


def test_the_command_provider_takes_its_own_keys() -> None:
    text = MINIMAL + (
        '[pipelines.qa.train]\nprovider = "command"\nbase_model = "m"\n'
        'command = "trl sft --config {config}"\nformat = "axolotl"\n'
        "[pipelines.qa.train.trainer]\nlora_r = 16\n"
    )
    train = parse_config(text).pipeline("qa").train
    assert train is not None
    assert train.provider_settings == CommandSettings(
        command="trl sft --config {config}", format="axolotl", trainer={"lora_r": 16}
    )


def test_pipelines_may_share_a_dataset_that_they_fill_the_same_way() -> None:
    text = '[pipelines.a]\nfilter = { status = "ok" }\n'
    text += '[pipelines.b]\nfilter = { status = "ok" }\ndataset = "a"\n'
    assert [p.dataset for p in parse_config(text).pipelines.values()] == ["a", "a"]


# --- building in Python ------------------------------------------------------------------------------


def test_train_settings_built_in_python_get_the_provider_settings() -> None:
    default = TrainSettings(provider="openai", base_model="m")
    assert default.provider_settings == OpenAISettings()
    given = TrainSettings.model_validate(
        {"provider": "openai", "base_model": "m", "provider_settings": {"base_url": "http://x"}}
    )
    assert given.provider_settings == OpenAISettings(base_url="http://x")
    dumped = given.model_dump(mode="json")
    assert dumped["provider_settings"]["base_url"] == "http://x"
    assert TrainSettings.model_validate(dumped) == given
    with pytest.raises(
        ValidationError, match="expected OpenAISettings for provider 'openai', got CommandSettings"
    ):
        TrainSettings(provider="openai", base_model="m", provider_settings=CommandSettings(command="x"))


def test_a_config_built_in_python_is_checked_like_a_file(tmp_path: Path) -> None:
    pipeline = Pipeline(name="a", filter=CallFilter(), dataset="a")
    config = FlywheelConfig(path=tmp_path / "flywheel.toml", pipelines={"a": pipeline})
    assert config.pipeline("a") is pipeline
    with pytest.raises(ValidationError, match="no pipelines defined"):
        FlywheelConfig(path=tmp_path, pipelines={})
    with pytest.raises(ValidationError, match="holds the pipeline named 'a'"):
        FlywheelConfig(path=tmp_path, pipelines={"b": pipeline})


# --- bad configs: one problem each -------------------------------------------------------------------


def test_toml_syntax_error_names_the_line() -> None:
    error = config_error(edited(("min_examples = 100", "min_examples = = 100")))
    assert error.message == "invalid TOML: invalid value (column 16)"
    assert error.where == "flywheel.toml:15"


def test_a_key_written_twice_is_named() -> None:
    error = config_error(edited(("retrain_after_new = 500", "min_examples = 5")))
    assert error.message == "pipelines.classify.train.min_examples: written twice (invalid TOML)"
    assert error.where == "flywheel.toml:16"


def test_unknown_key_suggests_the_closest_and_names_its_line() -> None:
    error = config_error(edited(("min_examples = 100", "min_exmples = 100")))
    assert error.message == "pipelines.classify.train.min_exmples: unknown key (did you mean 'min_examples'?)"
    assert error.where == "flywheel.toml:15"


def test_unknown_keys_everywhere() -> None:
    assert config_error(edited(("dedup = {", "dedupe = {"))).message == (
        "pipelines.classify.dedupe: unknown key (did you mean 'dedup'?)"
    )
    assert config_error(edited(("near_threshold", "near_treshold"))).message == (
        "pipelines.classify.dedup.near_treshold: unknown key (did you mean 'near_threshold'?)"
    )
    assert config_error(edited(("n_epochs", "epochs"))).message == (
        "pipelines.classify.train.hyperparameters.epochs: unknown key (did you mean 'n_epochs'?)"
    )
    top = config_error(
        edited(("[pipelines.classify]", "[pipeline.classify]"), text=MINIMAL.replace("qa", "classify"))
    )
    assert top.message == "pipeline: unknown key (did you mean 'pipelines'?)"
    assert top.where == "flywheel.toml:1"
    assert config_error(MINIMAL + 'name = "x"\n').message == (
        "pipelines.qa.name: unknown key "
        "(known: dataset, dedup, eval, export, filter, promote, prune, relabel, train)"
    )


def test_wrong_type() -> None:
    error = config_error(edited(("min_examples = 100", 'min_examples = "ten"')))
    assert error.message == "pipelines.classify.train.min_examples: expected an integer, got 'ten'"
    assert error.where == "flywheel.toml:15"
    strict = config_error(edited(("export = { test_fraction = 0.1 }", 'export = { skip_invalid = "yes" }')))
    assert strict.message == "pipelines.classify.export.skip_invalid: expected true or false, got 'yes'"
    assert strict.where == "flywheel.toml:8"
    table = config_error(edited(('relabel = { model = "gpt-4o" }', 'relabel = "gpt-4o"')))
    assert table.message == "pipelines.classify.relabel: expected a table, got 'gpt-4o'"


def test_value_out_of_range() -> None:
    error = config_error(edited(("min_examples = 100", "min_examples = 0")))
    assert error.message == "pipelines.classify.train.min_examples: must be >= 1, got 0"
    assert error.where == "flywheel.toml:15"
    assert config_error(edited(("near_threshold = 0.85", "near_threshold = 1.5"))).message == (
        "pipelines.classify.dedup.near_threshold: must be <= 1, got 1.5"
    )
    assert config_error(edited(('suffix = "classify"', f'suffix = "{"x" * 65}"'))).message == (
        "pipelines.classify.train.suffix: must be at most 64 characters, got 65"
    )
    assert config_error(edited(('strip_prefix = ["You are"]', 'strip_prefix = ["You are", ""]'))).message == (
        "pipelines.classify.prune.strip_prefix[1]: must not be empty"
    )
    assert config_error(edited(("max_cost_usd = 20", "max_cost_usd = nan"))).message == (
        "pipelines.classify.train.max_cost_usd: expected a finite number, got nan"
    )


def test_bad_durations_and_hyperparameters() -> None:
    assert config_error(edited(('min_interval = "6h"', 'min_interval = "soon"'))).message == (
        "pipelines.classify.train.min_interval: expected a duration such as '30m', '6h', '1d', '2w' or "
        "seconds, got 'soon'"
    )
    assert config_error(edited(('min_interval = "6h"', "min_interval = 0"))).message == (
        "pipelines.classify.train.min_interval: must be > 0, got 0"
    )
    assert config_error(edited(("n_epochs = 3", "n_epochs = 0"))).message == (
        "pipelines.classify.train.hyperparameters.n_epochs: must be >= 1 or 'auto', got 0"
    )
    assert config_error(edited(("n_epochs = 3", 'n_epochs = "many"'))).message == (
        "pipelines.classify.train.hyperparameters.n_epochs: expected an integer >= 1 or 'auto', got 'many'"
    )
    assert config_error(edited(("n_epochs = 3", "n_epochs = 2.5"))).message == (
        "pipelines.classify.train.hyperparameters.n_epochs: expected an integer >= 1 or 'auto', got 2.5"
    )


def test_unknown_provider_suggests_the_closest() -> None:
    error = config_error(edited(('provider = "openai"', 'provider = "opnai"')))
    assert (
        error.message
        == "pipelines.classify.train.provider: unknown provider 'opnai' (did you mean 'openai'?)"
    )
    assert error.where == "flywheel.toml:11"
    far = config_error(edited(('provider = "openai"', 'provider = "sagemaker"')))
    assert far.message.startswith("pipelines.classify.train.provider: unknown provider 'sagemaker' (known: ")
    assert "command" in far.message and "openai" in far.message


def test_missing_base_model_points_at_the_train_table() -> None:
    error = config_error(edited(('base_model = "gpt-4o-mini-2024-07-18"\n', "")))
    assert error.message == "pipelines.classify.train.base_model: required"
    assert error.where == "flywheel.toml:10"
    assert config_error(MINIMAL + "[pipelines.qa.train]\nbase_model = 'm'\n").message == (
        "pipelines.qa.train.provider: required"
    )


def test_missing_filter_says_how_to_take_everything() -> None:
    error = config_error('[pipelines.qa]\ndataset = "qa"\n')
    assert error.message == "pipelines.qa.filter: required (`filter = {}` takes every chat call)"
    assert error.where == "flywheel.toml:1"


@pytest.mark.parametrize(
    ("criterion", "message"),
    [
        (
            'status = "okay"',
            "pipelines.classify.filter.status: invalid value 'okay': input should be 'ok' or 'error'",
        ),
        (
            'since = "yesterday-ish"',
            "pipelines.classify.filter.since: invalid time 'yesterday-ish': expected an ISO date or datetime",
        ),
        ('stats = "ok"', "pipelines.classify.filter.stats: unknown key (did you mean 'status'?)"),
        (
            "min_tokens = -1",
            "pipelines.classify.filter.min_tokens: invalid value -1: input should be greater",
        ),
    ],
)
def test_bad_filter_values_name_the_filter_key(criterion: str, message: str) -> None:
    error = config_error(edited(('status = "ok"', criterion)))
    assert error.message.startswith(message), error.message
    assert error.where == "flywheel.toml:3"


def test_a_filter_problem_of_two_criteria_is_the_filters() -> None:
    error = config_error("[pipelines.a]\nfilter = { since = 2024-05-03, until = 2024-05-02 }\n")
    assert error.message == (
        "pipelines.a.filter: empty time range: since 2024-05-03T00:00:00+00:00 is not before until "
        "2024-05-02T00:00:00+00:00"
    )
    assert error.where == "flywheel.toml:2"


def test_beta_needs_dpo() -> None:
    error = config_error(edited(("n_epochs = 3", "n_epochs = 3, beta = 0.1")))
    assert error.message == (
        "pipelines.classify.train.hyperparameters.beta: "
        'only applies to method = "dpo" (this one is "supervised")'
    )
    assert error.where == "flywheel.toml:18"


def test_bad_dataset_and_pipeline_names() -> None:
    error = config_error(edited(('dataset = "classify"', 'dataset = "my data"')))
    assert error.message == (
        "pipelines.classify.dataset: invalid dataset name 'my data': use up to 200 letters, digits, '.', '_' "
        "or '-', starting with a letter or digit"
    )
    assert error.where == "flywheel.toml:4"
    named = config_error('[pipelines."my pipe"]\nfilter = {}\n')
    assert named.message.startswith("pipelines.\"my pipe\": invalid pipeline name 'my pipe': use up to 200")
    assert named.where == "flywheel.toml:1"


def test_pipelines_sharing_a_dataset_must_fill_it_the_same_way() -> None:
    text = '[pipelines.a]\nfilter = {}\n[pipelines.b]\nfilter = { status = "ok" }\ndataset = "a"\n'
    error = config_error(text)
    assert error.message == (
        "pipelines.b.dataset: dataset 'a' is filled by pipeline 'a' with another filter or other "
        "dedup/relabel/prune steps; give this pipeline a dataset of its own"
    )
    assert error.where == "flywheel.toml:5"


def test_no_pipelines() -> None:
    for text, where in (("", "flywheel.toml"), ("[pipelines]\n", "flywheel.toml:1")):
        error = config_error(text)
        assert (error.message, error.where) == (
            "pipelines: no pipelines defined; add a [pipelines.NAME] table",
            where,
        )
    assert config_error("pipelines = 3\n").message == "pipelines: expected a table, got 3"


# --- bad configs: every problem at once -------------------------------------------------------------


def test_every_problem_is_listed_in_file_order_with_its_line() -> None:
    text = edited(
        ('status = "ok"', 'status = "okay"'),
        ("near_threshold = 0.85", "near_threshold = 0"),
        ('provider = "openai"', 'provider = "openai"\ntimeot = 5'),
        ("min_examples = 100", "min_examples = 0"),
    )
    error = config_error(text)
    assert [(p.key, p.line) for p in error.problems] == [
        ("pipelines.classify.filter.status", 3),
        ("pipelines.classify.dedup.near_threshold", 5),
        ("pipelines.classify.train.timeot", 12),
        ("pipelines.classify.train.min_examples", 16),
    ]
    assert error.message == (
        "4 problems: "
        "pipelines.classify.filter.status: invalid value 'okay': input should be 'ok' or 'error'; "
        "pipelines.classify.dedup.near_threshold: must be > 0, got 0 (line 5); "
        "pipelines.classify.train.timeot: unknown key (did you mean 'timeout'?) (line 12); "
        "pipelines.classify.train.min_examples: must be >= 1, got 0 (line 16)"
    )
    assert error.where == "flywheel.toml:3"
    assert "\n" not in str(error)


# --- provider keys, with a provider of the test's own ------------------------------------------------


def fake(extra: str = "") -> str:
    """A pipeline training on the test's provider; ``extra`` starts on line 6."""
    return MINIMAL + f'[pipelines.qa.train]\nprovider = "fake"\nbase_model = "m"\n{extra}'


@pytest.mark.usefixtures("fake_provider")
def test_a_provider_of_ones_own_validates_its_keys() -> None:
    train = parse_config(fake('endpoint = "http://trainer"\n')).pipeline("qa").train
    assert train is not None and train.provider_settings == FakeSettings(endpoint="http://trainer", retries=2)
    assert describe_pipeline(parse_config(fake('endpoint = "e"\n')).pipeline("qa"))["train"]["retries"] == 2
    missing = config_error(fake(""))
    assert (missing.message, missing.where) == ("pipelines.qa.train.endpoint: required", "flywheel.toml:3")
    bad = config_error(fake('endpoint = "e"\nretries = -1\n'))
    assert (bad.message, bad.where) == ("pipelines.qa.train.retries: must be >= 0, got -1", "flywheel.toml:7")


@pytest.mark.usefixtures("fake_provider")
def test_an_unknown_train_key_is_matched_against_both_key_sets() -> None:
    provider_key = config_error(fake('endpoint = "e"\nretrys = 3\n'))
    assert provider_key.message == "pipelines.qa.train.retrys: unknown key (did you mean 'retries'?)"
    assert provider_key.where == "flywheel.toml:7"
    own_key = config_error(fake('endpoint = "e"\nsufix = "x"\n'))
    assert own_key.message == "pipelines.qa.train.sufix: unknown key (did you mean 'suffix'?)"


@pytest.mark.usefixtures("fake_provider")
def test_own_keys_are_checked_even_when_provider_keys_fail() -> None:
    error = config_error(fake("min_examples = 0\n"))
    assert [str(problem) for problem in error.problems] == [
        "pipelines.qa.train.endpoint: required",
        "pipelines.qa.train.min_examples: must be >= 1, got 0",
    ]


@pytest.mark.usefixtures("fake_provider")
def test_a_provider_that_cannot_load_is_blamed_on_the_provider_key() -> None:
    error = config_error(MINIMAL + '[pipelines.qa.train]\nprovider = "broken"\nbase_model = "m"\n')
    assert error.message.startswith(
        "pipelines.qa.train.provider: provider 'broken' (flywheel.train.providers.no_such_module:Nothing) "
        "cannot be loaded: No module named"
    )
    assert error.where == "flywheel.toml:4"


# --- finding the file ---------------------------------------------------------------------------------


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_path() == Path("flywheel.toml")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "env.toml"))
    assert config_path() == tmp_path / "env.toml"
    assert config_path(tmp_path / "given.toml") == tmp_path / "given.toml"
    monkeypatch.setenv("FLYWHEEL_CONFIG", "")
    assert config_path() == Path("flywheel.toml")


def test_load_config_reads_the_chosen_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flywheel.toml").write_text(MINIMAL)
    (tmp_path / "env.toml").write_text(MINIMAL.replace("qa", "from-env"))
    (tmp_path / "given.toml").write_text(MINIMAL.replace("qa", "given"))
    assert list(load_config().pipelines) == ["qa"]
    assert load_config().path == tmp_path / "flywheel.toml"  # absolute: work_dir must not move
    monkeypatch.setenv("FLYWHEEL_CONFIG", "env.toml")
    assert list(load_config().pipelines) == ["from-env"]
    assert list(load_config("given.toml").pipelines) == ["given"]


def test_missing_file_says_how_to_point_at_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as default:
        load_config()
    assert default.value.message == (
        f"no pipelines config in {tmp_path}: write flywheel.toml there, or point at one with --config PATH "
        "or $FLYWHEEL_CONFIG"
    )
    assert default.value.where == "flywheel.toml"
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as from_env:
        load_config()
    assert (from_env.value.message, from_env.value.where) == (
        "no pipelines config: the file named by $FLYWHEEL_CONFIG does not exist",
        str(tmp_path / "nope.toml"),
    )
    with pytest.raises(ConfigError, match=r"the file named by --config PATH does not exist"):
        load_config(tmp_path / "other.toml")


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[pipelines]")
    with pytest.raises(ConfigError) as binary:
        load_config(tmp_path / "binary.toml")
    assert binary.value.message.startswith("not UTF-8 text: ")
    with pytest.raises(ConfigError) as directory:
        load_config(tmp_path)
    assert directory.value.message.startswith("cannot read: ")
    assert directory.value.where == str(tmp_path)


# --- the line locator --------------------------------------------------------------------------------


def test_key_lines_know_headers_dotted_keys_and_inline_tables() -> None:
    lines = KeyLines(
        "# comment\n"
        "[pipelines.a]\n"  # 2
        "filter.status = 'ok'\n"  # 3
        "dedup = { exact = true }\n"  # 4
        'text = """\n'  # 5
        "[pipelines.fake]\n"  # 6: inside a string
        '"""\n'  # 7
        '[pipelines."b.c".train]\n'  # 8
        "  base_model = 'm'  # trailing\n"  # 9
    )
    assert lines.line_of(("pipelines", "a")) == 2
    assert lines.line_of(("pipelines", "a", "filter")) == 3
    assert lines.line_of(("pipelines", "a", "filter", "status")) == 3
    assert lines.line_of(("pipelines", "a", "dedup", "exact")) == 4
    assert lines.line_of(("pipelines", "a", "missing")) == 2
    assert lines.line_of(("pipelines", "fake")) == 2  # the nearest table written, not the string's line
    assert lines.line_of(("pipelines", "b.c")) == 8  # implicit table: its first line
    assert lines.line_of(("pipelines", "b.c", "train", "base_model")) == 9
    assert lines.line_of(("pipelines", "b.c", "train", "strip_prefix", 2)) == 8
    assert lines.line_of(("elsewhere",)) is None


def test_format_key_quotes_what_toml_would() -> None:
    assert (
        format_key(("pipelines", "a-b_1", "prune", "strip_prefix", 0))
        == "pipelines.a-b_1.prune.strip_prefix[0]"
    )
    assert format_key(("pipelines", "my pipe")) == 'pipelines."my pipe"'


# --- the command --------------------------------------------------------------------------------------


def test_config_check_prints_each_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "flywheel.toml"
    path.write_text(EXAMPLE + "\n" + MINIMAL)
    result = run("config", "check", "--config", str(path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: 2 pipelines, valid."
    assert "pipeline classify" in lines and "pipeline qa" in lines
    assert '  filter      tags=["prompt_id=classify-v2"], status=ok' in lines
    assert (
        "  thresholds  min_examples=100, retrain_after_new=500, min_interval=6h, max_cost_usd=20.0" in lines
    )
    assert "  train       off (the pipeline keeps its dataset up to date)" in lines
    assert "  dedup       off" in lines  # qa's
    assert all(len(line) <= 100 for line in lines)


def test_config_check_json_is_one_object_per_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flywheel.toml").write_text(EXAMPLE + "\n" + MINIMAL)
    result = run("config", "check", "--json")
    assert result.exit_code == 0, result.output
    objects = [orjson.loads(line) for line in result.stdout.splitlines()]
    config = load_config(tmp_path / "flywheel.toml")
    assert objects == [describe_pipeline(pipeline) for pipeline in config.pipelines.values()]
    assert [o["name"] for o in objects] == ["classify", "qa"]


def test_config_check_uses_flywheel_config_and_config_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flywheel.toml").write_text(MINIMAL)
    (tmp_path / "env.toml").write_text(MINIMAL.replace("qa", "from-env"))
    (tmp_path / "given.toml").write_text(MINIMAL.replace("qa", "given"))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "env.toml"))
    from_env = run("config", "check", "--json")
    assert [orjson.loads(line)["name"] for line in from_env.stdout.splitlines()] == ["from-env"]
    given = run("config", "check", "--json", "--config", "given.toml")
    assert [orjson.loads(line)["name"] for line in given.stdout.splitlines()] == ["given"]


def test_config_check_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "flywheel.toml"
    path.write_text(edited(("min_examples = 100", "min_examples = 0")))
    result = run("config", "check", "--config", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"flywheel: error: pipelines.classify.train.min_examples: must be >= 1, got 0 ({path}:15)\n"
    )
    missing = run("config", "check", "--config", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2
    assert missing.stderr == (
        "flywheel: error: no pipelines config: the file named by --config PATH does not exist "
        f"({tmp_path / 'nope.toml'})\n"
    )


@pytest.mark.slow
def test_config_check_as_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "flywheel.toml").write_text(edited(("min_examples = 100", "min_exmples = 100")))
    env = {key: value for key, value in os.environ.items() if key != "FLYWHEEL_CONFIG"}
    executable = str(REPO / ".venv" / "bin" / "flywheel")
    failed = subprocess.run(
        [executable, "config", "check"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr == (
        "flywheel: error: pipelines.classify.train.min_exmples: unknown key (did you mean 'min_examples'?) "
        "(flywheel.toml:15)\n"
    )
    (tmp_path / "flywheel.toml").write_text(EXAMPLE)
    passed = subprocess.run(
        [executable, "config", "check"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith(f"{tmp_path / 'flywheel.toml'}: 1 pipeline, valid.\n")


# --- the reference docs ------------------------------------------------------------------------------


def test_training_docs_reference_is_up_to_date() -> None:
    written = current_section((REPO / "docs" / "training.md").read_text(encoding="utf-8"))
    assert written == render_config_reference(), (
        "docs/training.md is stale: run `python -m flywheel.train.config_docs docs/training.md`"
    )


def test_the_reference_documents_every_key_and_its_examples_are_real() -> None:
    reference = render_config_reference()
    for model in (Pipeline, DedupStep, RelabelStep, PruneStep, ExportStep, TrainSettings, Hyperparameters):
        for name in model.model_fields:
            if name not in ("name", "provider_settings"):
                assert f"| `{name}` |" in reference, (model.__name__, name)
    for name in OpenAISettings.model_fields:
        assert f"| `{name}` |" in reference
    toml = reference.split("```toml\n", 1)[1].split("```", 1)[0]
    assert parse_config(toml).pipeline("classify").train is not None


def test_replace_section_keeps_the_rest_of_the_page() -> None:
    page = "# Training\n\nIntro.\n\n## Configuration reference\n\nold\n\n## Later\n\nkept\n"
    replaced = replace_section(page, "## Configuration reference\n\nnew\n")
    assert replaced == "# Training\n\nIntro.\n\n## Configuration reference\n\nnew\n\n## Later\n\nkept\n"
    assert current_section(replaced) == "## Configuration reference\n\nnew\n"
    assert (
        replace_section("# T\n", "## Configuration reference\n\nx\n")
        == "# T\n\n## Configuration reference\n\nx\n"
    )


def test_every_toml_example_in_the_training_docs_is_valid() -> None:
    import re

    text = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        whole = block if "[pipelines.classify]" in block else "[pipelines.classify]\nfilter = {}\n" + block
        assert parse_config(whole).pipeline("classify").train is not None
