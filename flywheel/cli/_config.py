"""``flywheel config check``, and ``--config PATH``, the option of every command that reads pipelines."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from ..train.config import describe_pipeline, load_config
from ._base import FlywheelGroup, _print_json_lines, cli, json_option

__all__ = ["config_option"]

F = TypeVar("F", bound=Callable[..., Any])

WIDTH = 100
_LABEL = 12


def config_option(command: F) -> F:
    """``--config PATH``: the pipelines config; the command receives it as ``config_path``."""
    return click.option(
        "--config",
        "config_path",
        metavar="PATH",
        help="Pipelines config (TOML). Default: $FLYWHEEL_CONFIG, else ./flywheel.toml.",
    )(command)


@cli.group("config", cls=FlywheelGroup)
def config_group() -> None:
    """The pipelines config, flywheel.toml (what `train` and `watch` act on)."""


@config_group.command("check")
@config_option
@json_option
def config_check_command(config_path: str | None, as_json: bool) -> None:
    """Validate the pipelines config and show each pipeline as it will run, defaults filled in.

    Every problem is reported at once, each with its key and line, and the exit code is 2. Nothing
    is read from the store and no provider is contacted.
    """
    config = load_config(config_path)
    described = [describe_pipeline(pipeline) for pipeline in config.pipelines.values()]
    if as_json:
        _print_json_lines(described)
        return
    count = len(described)
    click.echo(f"{config.path}: {count} pipeline{'s' if count != 1 else ''}, valid.")
    for pipeline in described:
        click.echo("")
        click.echo(_pipeline_text(pipeline))


def _pipeline_text(pipeline: Mapping[str, Any]) -> str:
    """One pipeline as labelled lines: what it selects, each step (or ``off``), when it trains."""
    rows: list[tuple[str, str]] = [
        ("dataset", pipeline["dataset"]),
        ("filter", _pairs(pipeline["filter"]) or "every chat call"),
    ]
    for step in ("prune", "dedup", "relabel", "export"):
        settings = pipeline[step]
        rows.append((step, "off" if settings is None else _pairs(settings)))
    train = pipeline["train"]
    if train is None:
        rows.append(("train", "off (the pipeline keeps its dataset up to date)"))
    else:
        train = dict(train)
        sections = {
            "train": ("provider", "base_model", "method"),
            "thresholds": ("min_examples", "retrain_after_new", "min_interval", "max_cost_usd"),
            "job": ("hyperparameters", "suffix", "seed", "validation"),
        }
        for label, keys in sections.items():
            rows.append((label, _pairs({key: train.pop(key) for key in keys})))
        rows.append((str(pipeline["train"]["provider"]), _pairs(train)))
    lines = [f"pipeline {pipeline['name']}"]
    for label, text in rows:
        lines.append(
            textwrap.fill(
                text,
                WIDTH,
                initial_indent=f"  {label:<{_LABEL}}",
                subsequent_indent=" " * (_LABEL + 2),
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_value(key, value)}" for key, value in values.items())


def _value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "min_interval":
        return _duration(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _duration(seconds: float) -> str:
    """Seconds as the config would write them (``6h``), when they are a whole number of a unit."""
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
