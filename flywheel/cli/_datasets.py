"""``flywheel dataset create|update|list|show|prune``."""

from __future__ import annotations

from typing import Any

import click
import orjson

from ..datasets import AddResult, create_dataset, get_dataset, list_datasets, update_dataset
from ..errors import UsageError
from ..finetune_format import DropSystemPrompt, StripPrefix
from ..prune import common_system_prompts, prune_rules, set_prune_rules
from ..query import CallFilter
from ._base import (
    FlywheelGroup,
    _cut,
    _db,
    _number,
    _print_json_lines,
    _table,
    cli,
    db_option,
    filter_options,
    json_option,
)


@cli.group("dataset", cls=FlywheelGroup)
def dataset_group() -> None:
    """Named, versioned datasets of recorded calls (the input of dedup, relabel and export)."""


@dataset_group.command("create")
@click.argument("name")
@db_option
@filter_options
@json_option
def dataset_create_command(db_url: str | None, name: str, call_filter: CallFilter, as_json: bool) -> None:
    """Create dataset NAME from the calls the filters select.

    Takes in every matching chat completion that got an answer (HTTP 2xx, read to the end).
    Running it again with the same filters adds the calls that matched since (like update).
    """
    result = create_dataset(_db(db_url), name, call_filter)
    _echo_added(result, as_json)


@dataset_group.command("update")
@click.argument("name")
@db_option
@json_option
def dataset_update_command(db_url: str | None, name: str, as_json: bool) -> None:
    """Add to dataset NAME the calls that match its filters and are not in it yet.

    Relative times (--since 30d) are counted from now. Existing entries are never changed.
    """
    _echo_added(update_dataset(_db(db_url), name), as_json)


def _echo_added(result: AddResult, as_json: bool) -> None:
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    info = result.dataset
    verb = "Created" if result.created else "Updated"
    if not result.created and not result.added:
        click.echo(
            f"No new calls for dataset {info.name}; it stays at version {info.version} "
            f"({info.entries:,} entries)."
        )
        return
    click.echo(
        f"{verb} dataset {info.name}: {result.added:,} new entries, {info.entries:,} in all, "
        f"version {info.version}."
    )


@dataset_group.command("list")
@db_option
@json_option
def dataset_list_command(db_url: str | None, as_json: bool) -> None:
    """List the datasets with their newest version and entry counts."""
    found = list_datasets(_db(db_url))
    if as_json:
        _print_json_lines([info.as_dict() for info in found])
        return
    if not found:
        click.echo("No datasets yet; see 'flywheel dataset create --help'.", err=True)
        return
    rows = [
        [
            info.name,
            str(info.version),
            _number(info.entries),
            _number(info.removed),
            info.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for info in found
    ]
    click.echo(_table(["NAME", "VERSION", "ENTRIES", "REMOVED", "CREATED (UTC)"], rows, right=(1, 2, 3)))


@dataset_group.command("show")
@click.argument("name")
@db_option
@json_option
def dataset_show_command(db_url: str | None, name: str, as_json: bool) -> None:
    """Show dataset NAME: its filter, rules and every version it went through."""
    info = get_dataset(_db(db_url), name)
    if as_json:
        _print_json_lines([info.as_dict()])
        return
    click.echo(
        f"Dataset {info.name}: version {info.version}, {info.entries:,} entries ({info.removed:,} removed)"
    )
    click.echo(f"Filter: {orjson.dumps(info.filter.as_dict()).decode()}")
    if info.settings:
        click.echo(f"Rules: {orjson.dumps(info.settings).decode()}")
    rows = [
        [str(v.version), v.created_at.strftime("%Y-%m-%d %H:%M:%S"), v.action, _details(v.details)]
        for v in info.history
    ]
    click.echo(_table(["VERSION", "TIME (UTC)", "ACTION", "DETAILS"], rows, right=(0,)))


@dataset_group.command("prune")
@click.argument("name")
@db_option
@click.option(
    "--drop-system-prompt",
    "drop_common",
    is_flag=True,
    help="Leave out the most common system prompt (shared by at least --min-share of the entries).",
)
@click.option(
    "--min-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    metavar="F",
    help="With --drop-system-prompt: the share of entries the prompt must open.",
)
@click.option(
    "--strip-prefix",
    "prefixes",
    multiple=True,
    metavar="TEXT",
    help="Remove TEXT from the start of system messages.",
)
@click.option("--clear", is_flag=True, help="Remove every pruning rule.")
@json_option
def dataset_prune_command(
    db_url: str | None,
    name: str,
    drop_common: bool,
    min_share: float,
    prefixes: tuple[str, ...],
    clear: bool,
    as_json: bool,
) -> None:
    """Show or set the rules that prune repeated instructions from dataset NAME's exported inputs.

    Without options, shows the rules and the most common system prompts. The rules are stored on
    the dataset, applied by export and written to its manifest, so the app can prune its requests
    the same way (flywheel.finetune_format.apply_prune_rules).
    """
    url = _db(db_url)
    prompts = common_system_prompts(url, name)
    if not (drop_common or prefixes or clear):
        rules = prune_rules(url, name)
        if as_json:
            _print_json_lines(
                [
                    {
                        "prune_rules": [r.as_dict() for r in rules],
                        "system_prompts": [p.as_dict() for p in prompts],
                    }
                ]
            )
            return
        click.echo("Rules: " + (orjson.dumps([r.as_dict() for r in rules]).decode() if rules else "none"))
        for prompt in prompts:
            click.echo(
                f"  {prompt.share:6.1%}  {prompt.entries:,} entries  "
                f"{_cut(' '.join(prompt.text.split()), 70)}"
            )
        return
    rules = [] if clear else list(prune_rules(url, name))
    if drop_common:
        if not prompts or prompts[0].share < min_share:
            share = f"{prompts[0].share:.1%}" if prompts else "no"
            raise UsageError(
                f"no system prompt opens {min_share:.0%} of the entries (the most common: {share})",
                "--min-share",
            )
        rules.append(DropSystemPrompt(prompts[0].sha256))
    rules.extend(StripPrefix(prefix) for prefix in prefixes)
    rules = list(dict.fromkeys(rules))  # the same rule twice is one rule
    version = set_prune_rules(url, name, rules)
    if as_json:
        _print_json_lines([{"prune_rules": [r.as_dict() for r in rules], "version": version}])
    elif version is None:
        click.echo(f"Dataset {name} already has these rules; nothing changed.")
    else:
        click.echo(f"Dataset {name} version {version}: {len(rules)} pruning rule(s).")


def _details(details: dict[str, Any]) -> str:
    shown = {key: value for key, value in details.items() if key != "filter"}
    return _cut(", ".join(f"{key}={value}" for key, value in shown.items()), 80)
