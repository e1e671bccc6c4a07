"""Reading ``flywheel.toml``: find the file, parse the TOML, validate it into a ``FlywheelConfig``.

Validation goes table by table so that every problem is found in one run: a pipeline whose
``filter`` or ``train`` table is wrong still has its other keys checked (with a stand-in for the
broken part). ``filter`` is checked by ``CallFilter`` itself, which raises ``BadFilterError``
naming a command-line option; the key at fault is found by checking each criterion alone. A
train table is split: its own keys go to ``TrainSettings``, every other key to the provider's
``Settings``, and an unknown key is matched against both for the did-you-mean.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdk import _config

from ..errors import BadFilterError, UsageError
from ..query import CallFilter
from .config_errors import (
    ConfigError,
    ConfigProblem,
    KeyLines,
    KeyPath,
    did_you_mean,
    format_key,
    shown,
    toml_keys,
    validation_problems,
)
from .config_pipeline import OWN_KEYS_ONLY, FlywheelConfig, Pipeline, TrainSettings
from .providers.base import ProviderSettings
from .providers.registry import available_providers, provider_class

__all__ = ["config_path", "load_config", "parse_config"]


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to read: ``path``, else ``$FLYWHEEL_CONFIG``, else ``./flywheel.toml``."""
    return Path(path) if path else _config.config_path()


def load_config(path: str | os.PathLike[str] | None = None) -> FlywheelConfig:
    """Read and validate the pipelines config (found as ``config_path`` says).

    Raises ``ConfigError`` when the file is missing, unreadable, not TOML or not valid; the
    returned config's ``path`` is absolute, so its ``work_dir`` does not move with the process.
    """
    chosen = config_path(path)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        how = "--config PATH" if path else "$FLYWHEEL_CONFIG" if os.environ.get("FLYWHEEL_CONFIG") else None
        if how:
            message = f"no pipelines config: the file named by {how} does not exist"
        else:
            message = (
                f"no pipelines config in {Path.cwd()}: write flywheel.toml there, or point at one "
                "with --config PATH or $FLYWHEEL_CONFIG"
            )
        raise ConfigError([ConfigProblem("", message)], str(chosen)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not UTF-8 text: {exc.reason}")], str(chosen)) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read: {exc.strerror or exc}")], str(chosen)) from None
    return _parse(text, str(chosen), chosen.absolute())


def parse_config(text: str, source: str = "flywheel.toml") -> FlywheelConfig:
    """Validate the TOML ``text`` of a pipelines config; ``source`` names it in errors and is the
    config's ``path``. Pure: reads no file and no environment. Raises ``ConfigError``."""
    return _parse(text, source, Path(source))


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse(text: str, source: str, path: Path) -> FlywheelConfig:
    lines = KeyLines(text)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(str(exc), lines)], source) from None
    problems: list[ConfigProblem] = []
    for key in document:
        if key != "pipelines":
            problems.append(_problem((key,), "unknown key" + did_you_mean(key, ["pipelines"]), lines))
    tables = document.get("pipelines", {})
    pipelines: dict[str, Pipeline] = {}
    if not isinstance(tables, dict):
        problems.append(_problem(("pipelines",), f"expected a table, got {shown(tables)}", lines))
        tables = {}
    for name, table in tables.items():
        pipeline = _pipeline(name, table, lines, problems)
        if pipeline is not None:
            pipelines[name] = pipeline
    if not problems:
        try:
            return FlywheelConfig(path=path, pipelines=pipelines)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, (), FlywheelConfig, lines))
    raise ConfigError(problems, source)


def _syntax_problem(message: str, lines: KeyLines) -> ConfigProblem:
    position = _TOML_POSITION.search(message)
    repeated = lines.first_repeated()
    if repeated is not None and (position is None or int(position.group(1)) == repeated[1]):
        # tomllib says "Cannot overwrite a value", sometimes "at end of document": name the key.
        return ConfigProblem(format_key(repeated[0]), "written twice (invalid TOML)", repeated[1])
    if position is None:
        text = message.removesuffix(" (at end of document)")
        return ConfigProblem("", f"invalid TOML: {text[:1].lower()}{text[1:]} at the end of the file")
    text = message[: position.start()]
    return ConfigProblem(
        "", f"invalid TOML: {text[:1].lower()}{text[1:]} (column {position.group(2)})", int(position.group(1))
    )


def _problem(key: KeyPath, message: str, lines: KeyLines) -> ConfigProblem:
    return ConfigProblem(format_key(key), message, lines.line_of(key))


def _pipeline(name: str, table: Any, lines: KeyLines, problems: list[ConfigProblem]) -> Pipeline | None:
    """The pipeline of ``[pipelines.NAME]``, or ``None`` with its problems added to ``problems``."""
    base: KeyPath = ("pipelines", name)
    if not isinstance(table, dict):
        problems.append(_problem(base, f"expected a table, got {shown(table)}", lines))
        return None
    found = len(problems)
    data = {key: value for key, value in table.items() if key not in Pipeline.hidden_keys}
    for key in table.keys() & Pipeline.hidden_keys:
        problems.append(_problem((*base, key), "unknown key" + did_you_mean(key, toml_keys(Pipeline)), lines))
    if "filter" in data:
        call_filter = _call_filter(base, data["filter"], lines, problems)
    else:
        call_filter = None
        problems.append(_problem((*base, "filter"), "required (`filter = {}` takes every chat call)", lines))
    train = _train(base, data["train"], lines, problems) if "train" in data else None
    # A filter or train table with problems is replaced, so that the other keys are checked too.
    data.update(name=name, train=train, filter=call_filter or CallFilter())
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, base, Pipeline, lines))
        return None
    return pipeline if len(problems) == found else None


def _call_filter(
    base: KeyPath, value: Any, lines: KeyLines, problems: list[ConfigProblem]
) -> CallFilter | None:
    """``filter``, validated by ``CallFilter`` (which raises ``BadFilterError``, naming an option)."""
    at: KeyPath = (*base, "filter")
    if not isinstance(value, dict):
        problems.append(_problem(at, f"expected a table of CallFilter fields, got {shown(value)}", lines))
        return None
    known = [name for name in CallFilter.model_fields if not name.endswith("_relative")]
    criteria = {key: _toml_time(item) for key, item in value.items()}
    unknown = [key for key in criteria if key not in known]
    for key in unknown:
        problems.append(_problem((*at, key), "unknown key" + did_you_mean(key, known), lines))
    if unknown:
        return None
    try:
        return CallFilter.model_validate(criteria)
    except BadFilterError as exc:
        # CallFilter names the command-line option and stops at its first problem: check each
        # criterion alone to blame its key. A problem of two criteria together (an empty time
        # range) is the filter's.
        alone = [(key, error) for key in criteria if (error := _criterion_error(key, criteria[key]))]
        for key, error in alone:
            problems.append(_problem((*at, key), error.message, lines))
        if not alone:
            problems.append(_problem(at, exc.message, lines))
        return None


def _criterion_error(key: str, value: Any) -> BadFilterError | None:
    try:
        CallFilter.model_validate({key: value})
    except BadFilterError as exc:
        return exc
    return None


def _toml_time(value: Any) -> Any:
    # A TOML date (`since = 2024-05-01`) means midnight UTC, as the same text does on the command line.
    return value.isoformat() if isinstance(value, date) and not isinstance(value, datetime) else value


def _train(base: KeyPath, table: Any, lines: KeyLines, problems: list[ConfigProblem]) -> TrainSettings | None:
    """``[pipelines.NAME.train]``: its own keys by ``TrainSettings``, the rest by the provider's."""
    at: KeyPath = (*base, "train")
    if not isinstance(table, dict):
        problems.append(_problem(at, f"expected a table, got {shown(table)}", lines))
        return None
    own_keys = set(toml_keys(TrainSettings))
    own = {key: value for key, value in table.items() if key in own_keys}
    rest = {key: value for key, value in table.items() if key not in own_keys}
    provider = own.get("provider")
    settings: ProviderSettings | None = None
    if isinstance(provider, str) and provider in available_providers():
        try:
            settings_class = provider_class(provider).Settings
        except UsageError as exc:
            problems.append(_problem((*at, "provider"), exc.message, lines))
        else:
            try:
                settings = settings_class.model_validate(rest)
            except ValidationError as exc:
                problems.extend(
                    validation_problems(exc, at, settings_class, lines, extra_known=toml_keys(TrainSettings))
                )
    try:
        if settings is None:
            TrainSettings.model_validate(own, context={OWN_KEYS_ONLY: True})
            return None
        return TrainSettings.model_validate({**own, "provider_settings": settings})
    except ValidationError as exc:
        problems.extend(validation_problems(exc, at, TrainSettings, lines))
        return None
