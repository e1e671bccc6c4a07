"""``flywheel quickstart``, ``migrate``, ``logs`` and ``stats``: the store and the calls in it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..errors import StoreError, display_url
from ..logs import recent_calls
from ..migrate import describe_revision, migrate, pending_migrations
from ..query import CallFilter
from ..stats import GROUP_KEYS, PERCENTILES, call_stats
from ._base import (
    _cut,
    _db,
    _ms,
    _number,
    _print_json_lines,
    _table,
    _usd,
    cli,
    db_option,
    filter_options,
    json_option,
)


@cli.command("quickstart")
@db_option
@click.option(
    "--out",
    "out_dir",
    default="flywheel-export",
    show_default=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Where the exported train/test files go.",
)
def quickstart_command(db_url: str | None, out_dir: str) -> None:
    """Offline tour: from app traffic through sdk.OpenAI to a fine-tuned model that apps switch to.

    Needs no network and no API key. Starts the mock server; records sync, async and streamed
    calls, a tool call, a retried and a failing one into the store (default ./flywheel.db); then
    creates a dataset, dedups it, relabels it with a teacher model and exports train/test JSONL;
    runs the training loop to a fine-tuned (stand-in) model; evaluates it against the base model
    on the held-out split, promotes it, and shows an app call through model="flywheel:triage"
    reaching it.
    """
    from flywheel.quickstart import NEXT_STEPS, run_quickstart

    url = _db(db_url)
    result = run_quickstart(url, echo=click.echo, out_dir=out_dir)
    click.echo("")
    click.echo(_stats_table(call_stats(url, CallFilter(), ("model",)), ("model",)))
    new_rows = result.rows_after - result.rows_before
    if new_rows != result.calls_sent:  # the teacher's calls came after `rows_after` was counted
        raise StoreError(
            f"expected {result.calls_sent} new rows in the store, found {new_rows}", display_url(url)
        )
    click.echo(NEXT_STEPS)


@cli.command("migrate")
@db_option
@click.option(
    "--revision", default="head", show_default=True, metavar="REV", help="Schema revision to upgrade to."
)
@click.option("--dry-run", is_flag=True, help="List the migrations that would run; change nothing.")
@json_option
def migrate_command(db_url: str | None, revision: str, dry_run: bool, as_json: bool) -> None:
    """Create or upgrade the store's tables (safe to run again; concurrent runs queue up).

    A missing SQLite file is created (mode 0600). On PostgreSQL, run this before the first
    recorded call and after every upgrade of llm-flywheel.
    """
    url = _db(db_url)
    shown = display_url(url)
    if dry_run:
        pending = pending_migrations(url, revision)
        if as_json:
            _print_json_lines([{"url": shown, "pending": pending}])
        elif not pending:
            click.echo(f"Nothing to do: the store at {shown} is up to date.")
        else:
            click.echo(f"Would apply {len(pending)} migration(s) to {shown}:")
            for rev in pending:
                click.echo(f"  {rev}  {describe_revision(rev)}".rstrip())
        return
    result = migrate(url, revision)
    if as_json:
        _print_json_lines([{"url": shown, "before": result.before, "after": result.after}])
    elif result.changed:
        click.echo(f"Migrated the store at {shown}: {result.before or '(empty)'} -> {result.after}.")
    else:
        click.echo(f"The store at {shown} is already at revision {result.after}; nothing to do.")


@cli.command("logs")
@db_option
@filter_options
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, metavar="N", help="Calls to show."
)
@click.option("--full", is_flag=True, help="With --json: include the full request and response bodies.")
@json_option
def logs_command(db_url: str | None, call_filter: CallFilter, limit: int, full: bool, as_json: bool) -> None:
    """Show the most recent calls, newest first.

    The table shows time (UTC), model, HTTP status, latency, total tokens, cost, tags and a preview
    of the last input message and the output. --json prints one call per line.
    """
    found = recent_calls(_db(db_url), call_filter, limit, full=full and as_json)
    if as_json:
        _print_json_lines(found)
        return
    if not found:
        click.echo("No calls match.", err=True)
        return
    rows = []
    for call in found:
        preview = call["output_preview"] or call["error"] or ""
        if call["input_preview"]:
            preview = f"{call['input_preview']} -> {preview}"
        rows.append(
            [
                call["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
                call["model"] or "-",
                "-" if call["status_code"] is None else str(call["status_code"]),
                _ms(call["latency_ms"]),
                _number(call["total_tokens"]),
                _usd(call["cost_usd"]),
                ",".join(f"{k}={v}" for k, v in call["tags"].items()),
                _cut(" ".join(preview.split()), 70),
            ]
        )
    headers = ["TIME (UTC)", "MODEL", "STATUS", "LATENCY", "TOKENS", "COST", "TAGS", "PREVIEW"]
    click.echo(_table(headers, rows, right=(3, 4, 5)))


@cli.command("stats")
@db_option
@filter_options
@click.option(
    "--by",
    "group_by",
    multiple=True,
    metavar="KEY",
    help=f"Group by {', '.join(GROUP_KEYS)} (HTTP status code) or tag:KEY; repeatable. Default: model.",
)
@json_option
def stats_command(
    db_url: str | None, call_filter: CallFilter, group_by: tuple[str, ...], as_json: bool
) -> None:
    """Calls, errors, tokens, cost and latency percentiles per group.

    Percentiles are continuous (interpolated, like PostgreSQL's percentile_cont). A cost marked *
    is a lower bound: the price of some calls' model is unknown. --json prints one group per line.
    """
    groups = group_by or ("model",)
    found = call_stats(_db(db_url), call_filter, groups)
    if as_json:
        _print_json_lines(found)
        return
    if not found:
        click.echo("No calls match.", err=True)
        return
    click.echo(_stats_table(found, groups))


def _stats_table(found: Sequence[dict[str, Any]], groups: Sequence[str]) -> str:
    latency = [f"latency_ms_p{round(q * 100):02d}" for q in PERCENTILES["latency_ms"]]
    headers = [g.upper() for g in groups] + ["CALLS", "ERRORS", "PROMPT", "COMPLETION", "TOTAL", "COST"]
    headers += [f"LAT P{name[-2:]}" for name in latency] + ["TTFT P50"]
    rows = []
    for group in found:
        cost = _usd(group["cost_usd"]) + ("*" if group["cost_partial"] else "")
        rows.append(
            [*("(none)" if group[g] is None else str(group[g]) for g in groups)]
            + [
                _number(group["calls"]),
                f"{group['errors']} ({group['error_rate']:.1%})",
                _number(group["prompt_tokens"]),
                _number(group["completion_tokens"]),
                _number(group["total_tokens"]),
                cost,
            ]
            + [_ms(group[name]) for name in latency]
            + [_ms(group["ttft_ms_p50"])]
        )
    table = _table(headers, rows, right=range(len(groups), len(headers)))
    if any(group["cost_partial"] for group in found):
        table += "\n* cost unknown for some calls (model not in the price table): a lower bound."
    return table
