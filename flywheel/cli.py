"""The ``flywheel`` command line: parse options, call the library function, print the result.

Nothing here decides anything: each command converts its options (the filter options through
``filter_options``) and calls one function of ``flywheel.<module>``. Output is a table for people or,
with ``--json``, JSON Lines for programs (one object per line: a call, a group, a migration).

Errors: a ``FlywheelError`` from the library, and click's own usage errors, end the process with
one line on stderr, ``flywheel: error: <what> (<where>)``, and exit code 1 (failure) or 2 (bad
usage). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

import click
import orjson

from sdk._config import database_url

from . import __version__
from .datasets import AddResult, Progress, create_dataset, get_dataset, list_datasets, update_dataset
from .dedup import dedup_dataset
from .errors import FlywheelError, StoreError, UsageError, display_url
from .export import export_dataset
from .finetune_format import DropSystemPrompt, StripPrefix, TrainOn
from .logs import recent_calls
from .migrate import describe_revision, migrate, pending_migrations
from .near_duplicates import DEFAULT_THRESHOLD
from .parallel import WORKERS_FROM, default_workers
from .prune import common_system_prompts, prune_rules, set_prune_rules
from .query import TIME_FORMATS_HELP, CallFilter
from .relabel import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    RelabelProgress,
    relabel_dataset,
)
from .review import ReviewFileError, ReviewSelection, export_review, import_review
from .stats import GROUP_KEYS, PERCENTILES, call_stats
from .validate import MIN_EXAMPLES

__all__ = ["cli", "db_option", "filter_options", "json_option", "main"]

F = TypeVar("F", bound=Callable[..., Any])


# --- error handling ---------------------------------------------------------------------------


class _OneLineError(click.ClickException):
    """What every error looks like on the command line: one line, no usage block, no traceback."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"flywheel: error: {self.message}", file=file, err=True)


class _OneLineUsageError(_OneLineError):
    exit_code = 2


def _one_line(message: str, exit_code: int) -> _OneLineError:
    return _OneLineUsageError(message) if exit_code == 2 else _OneLineError(message)


def _from_usage_error(error: click.UsageError) -> click.ClickException:
    if isinstance(error, click.exceptions.NoArgsIsHelpError):
        return error  # `flywheel` alone prints the help, as it should
    where = f"see '{error.ctx.command_path} --help'" if error.ctx is not None else "see --help"
    return _one_line(f"{error.format_message()} ({where})", error.exit_code)


class FlywheelGroup(click.Group):
    """A group that lists commands in the order they are defined and prints errors as one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            raise _from_usage_error(error) from error

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlywheelError as error:
            raise _one_line(str(error), error.exit_code) from error
        except click.UsageError as error:
            raise _from_usage_error(error) from error


# --- shared options ---------------------------------------------------------------------------


def db_option(command: F) -> F:
    """``--db URL``: the store; default ``$FLYWHEEL_DATABASE_URL``, else ``sqlite:///flywheel.db``."""
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        help="Store to use (SQLAlchemy URL). Default: $FLYWHEEL_DATABASE_URL, else sqlite:///flywheel.db.",
    )(command)


def json_option(command: F) -> F:
    """``--json``: JSON Lines on stdout instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON Lines (one object per line).")(
        command
    )


def workers_option(work: str) -> Callable[[F], F]:
    """``--workers N``: processes for the heavy part of a step over a large dataset."""
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=default_workers,
        show_default="the number of CPUs",
        metavar="N",
        help=f"Processes that {work}, for datasets of {WORKERS_FROM:,} entries or more.",
    )


_BOUND_OPTIONS = (
    ("--min-latency", "min_latency_ms", click.FLOAT, "MS", "Only calls that took at least MS milliseconds."),
    ("--max-latency", "max_latency_ms", click.FLOAT, "MS", "Only calls that took at most MS milliseconds."),
    ("--min-tokens", "min_tokens", click.INT, "N", "Only calls that used at least N tokens in total."),
    ("--max-tokens", "max_tokens", click.INT, "N", "Only calls that used at most N tokens in total."),
    ("--min-prompt-tokens", "min_prompt_tokens", click.INT, "N", "Only calls with at least N prompt tokens."),
    ("--max-prompt-tokens", "max_prompt_tokens", click.INT, "N", "Only calls with at most N prompt tokens."),
    (
        "--min-completion-tokens",
        "min_completion_tokens",
        click.INT,
        "N",
        "Only calls with at least N completion tokens.",
    ),
    (
        "--max-completion-tokens",
        "max_completion_tokens",
        click.INT,
        "N",
        "Only calls with at most N completion tokens.",
    ),
)
"""Numeric bounds: (option, CallFilter field, type, metavar, help). Bounds are inclusive; a call
whose value is unknown (no latency, no usage) never matches one."""


def filter_options(command: F) -> F:
    """The common filter options; the command receives them as one ``call_filter: CallFilter``."""
    bound_fields = [field for _, field, *_ in _BOUND_OPTIONS]

    @functools.wraps(command)
    def with_filter(
        *args: Any,
        tags: Sequence[str],
        model: str | None,
        endpoint: str | None,
        since: str | None,
        until: str | None,
        status: str | None,
        search: str | None,
        **kwargs: Any,
    ) -> Any:
        bounds = {field: kwargs.pop(field) for field in bound_fields}
        call_filter = CallFilter.from_options(
            tags=tags,
            model=model,
            endpoint=endpoint,
            since=since,
            until=until,
            status=status,
            search=search,
            **bounds,
        )
        return command(*args, call_filter=call_filter, **kwargs)

    options = [
        click.option(
            "--tag",
            "tags",
            multiple=True,
            metavar="KEY[=VALUE]",
            help="Only calls with this tag: KEY=VALUE for that value (KEY= for the empty value), KEY "
            "alone for any value. Repeat to require several (all must match).",
        ),
        click.option("--model", metavar="NAME", help="Only calls to this model (exact name)."),
        click.option(
            "--endpoint", metavar="PATH", help="Only calls to this API path, e.g. /chat/completions."
        ),
        click.option("--since", metavar="TIME", help=f"Only calls at or after TIME: {TIME_FORMATS_HELP}."),
        click.option("--until", metavar="TIME", help="Only calls before TIME (same formats as --since)."),
        click.option(
            "--status",
            type=click.Choice(["ok", "error"]),
            help="ok: HTTP 2xx/3xx; error: HTTP 4xx/5xx or no response (timeout, connection error).",
        ),
        click.option(
            "--search",
            metavar="TEXT",
            help="Only calls with TEXT in a string of the request or response body (message "
            "content, tool arguments; not JSON keys). Case-insensitive; % and _ are plain characters.",
        ),
        *(
            click.option(option, field, type=kind, metavar=metavar, help=text)
            for option, field, kind, metavar, text in _BOUND_OPTIONS
        ),
    ]
    for option in reversed(options):
        with_filter = option(with_filter)
    return with_filter  # type: ignore[return-value]


def _db(db_url: str | None) -> str:
    return db_url or database_url()


def _print_json_lines(items: Sequence[dict[str, Any]]) -> None:
    for item in items:
        click.echo(orjson.dumps(item, option=orjson.OPT_UTC_Z).decode())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in ``right`` aligned right (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}" if value >= 0.01 else f"${value:.6f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.contextmanager
def _progress_bar(label: str, *, quiet: bool) -> Iterator[Progress | None]:
    """A progress bar on stderr for a long step (``progress(done, total)``), when stderr is a terminal
    and the output is not ``--json``; otherwise nothing (no callback)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    with contextlib.ExitStack() as stack:
        bar: Any = None  # made at the first call, when the total is known

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=max(total, 1), label=label, file=sys.stderr, show_pos=True)
                )
            bar.update(done - bar.pos)

        yield update


# --- commands ---------------------------------------------------------------------------------


@click.group(cls=FlywheelGroup)
@click.version_option(__version__, "--version", prog_name="flywheel", message="%(prog)s %(version)s")
def cli() -> None:
    """Turn logged LLM calls into fine-tuning data.

    The store is a SQL database (--db URL or $FLYWHEEL_DATABASE_URL; default sqlite:///flywheel.db)
    that the flywheel SDK writes and these commands read.
    """


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
    """Offline tour: from app traffic through sdk.OpenAI to validated fine-tuning files.

    Needs no network and no API key. Starts the mock server; records sync, async and streamed
    calls, a tool call, a retried and a failing one into the store (default ./flywheel.db); then
    creates a dataset, dedups it, relabels it with a teacher model and exports train/test JSONL.
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


@cli.command("dedup")
@click.argument("name")
@db_option
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    metavar="J",
    help="Similarity (estimated Jaccard of word pairs, shared boilerplate left out) from which two "
    "inputs are near-duplicates; the default takes templated prompts a word or two apart as copies.",
)
@click.option("--exact", is_flag=True, help="Only exact duplicates (the same input hash).")
@click.option("--dry-run", is_flag=True, help="Show the clusters; change nothing.")
@click.option(
    "--show", type=click.IntRange(min=0), default=10, show_default=True, metavar="N", help="Clusters to list."
)
@workers_option("sketch the inputs")
@json_option
def dedup_command(
    db_url: str | None,
    name: str,
    threshold: float,
    exact: bool,
    dry_run: bool,
    show: int,
    workers: int,
    as_json: bool,
) -> None:
    """Keep one entry per cluster of (near-)duplicate inputs in dataset NAME; list the clusters.

    The kept entry is the first exported one, else the oldest; the others are taken out of the
    dataset (never deleted; entries already exported always stay). Stable as data grows: a later
    near-copy never replaces an entry that was exported.
    """
    with _progress_bar("reading entries", quiet=as_json) as progress:
        result = dedup_dataset(
            _db(db_url),
            name,
            threshold=threshold,
            exact=exact,
            dry_run=dry_run,
            show=show,
            workers=workers,
            progress=progress,
        )
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    kind = "exact duplicates" if exact else f"near-duplicates (threshold {threshold})"
    verb = "Would take out" if dry_run else "Took out"
    click.echo(
        f"{name}: {result.entries:,} entries, {result.clusters:,} clusters of {kind}. {verb} "
        f"{result.removed:,} ({result.duplicates:,} exact, {result.near_duplicates:,} near)"
        + ("" if dry_run or result.version is None else f"; version {result.version}")
        + "."
    )
    for cluster in result.shown:
        size = 1 + len(cluster.removed) + len(cluster.also_kept)
        click.echo(f"  {size:>5} entries, keep {cluster.kept}: {_cut(cluster.preview, 80)}")


@cli.command("relabel")
@click.argument("name")
@click.option("--model", required=True, metavar="TEACHER", help="The teacher model that answers again.")
@click.option(
    "--base-url",
    metavar="URL",
    help="The teacher's OpenAI-compatible API (default: $OPENAI_BASE_URL, else OpenAI's).",
)
@db_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    metavar="N",
    help="Requests in flight at once.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_RETRIES,
    show_default=True,
    metavar="N",
    help="Retries per entry on 429, 5xx and connection errors (with backoff).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="S",
    help="Seconds per request.",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Relabel at most N entries this run.")
@click.option("--temperature", type=float, metavar="T", help="Sampling temperature for the teacher.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=JSON",
    help="Set a request field for the teacher (JSON value; null removes it), e.g. max_tokens=512.",
)
@json_option
def relabel_command(
    db_url: str | None,
    name: str,
    model: str,
    base_url: str | None,
    concurrency: int,
    max_retries: int,
    timeout: float,
    limit: int | None,
    temperature: float | None,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Ask a teacher model to answer each entry of dataset NAME again; the answers become its outputs.

    The API key is $OPENAI_API_KEY. Every teacher call is recorded (tagged flywheel_relabel=NAME).
    Resumable: after a crash or Ctrl-C, the same command continues where it stopped; entries the
    teacher already answered, and entries a person edited, are not asked again.
    """

    def report(done: RelabelProgress) -> None:
        if not as_json:
            click.echo(f"relabeled {done.relabeled:,}/{done.total:,}, failed {done.failed:,}", err=True)

    try:
        result = relabel_dataset(
            _db(db_url),
            name,
            model=model,
            base_url=base_url,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            limit=limit,
            temperature=temperature,
            params=_json_params(params),
            progress=report,
        )
    except KeyboardInterrupt:
        click.echo("flywheel: interrupted; run the same command again to continue", err=True)
        sys.exit(130)
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    version = "no new version" if result.version is None else f"version {result.version}"
    click.echo(
        f"Relabeled {result.relabeled:,} entries of {name} with {model} ({version}); "
        f"{result.skipped:,} already done, {result.kept_human:,} edited by a person kept, "
        f"{result.failed:,} failed; {result.teacher_calls:,} teacher calls, cost {_usd(result.cost_usd)}"
    )
    for failure in result.failures[:20]:
        click.echo(f"  entry {failure.entry_id} (call {failure.call_id}): {failure.reason}")
    if result.failed:
        click.echo("Run the same command again to retry the failed entries.")


def _json_params(params: Sequence[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for text in params:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid parameter {text!r}: expected KEY=JSON, e.g. max_tokens=512", "--param")
        try:
            parsed[key.strip()] = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise UsageError(f"the value of {key!r} is not JSON: {value!r}", "--param") from None
    return parsed


@cli.group("review", cls=FlywheelGroup)
def review_group() -> None:
    """Review and edit a dataset's outputs by hand: export a JSONL file, edit it, import it back."""


@review_group.command("export")
@click.argument("name")
@click.option(
    "--out", "out_path", required=True, type=click.Path(dir_okay=False), metavar="FILE", help="File to write."
)
@click.option(
    "--only",
    type=click.Choice(["all", "original", "relabeled", "human", "unreviewed"]),
    default="all",
    show_default=True,
    help="Which entries: by where their output comes from, or those no person has edited yet.",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N entries.")
@db_option
@json_option
def review_export_command(
    db_url: str | None, name: str, out_path: str, only: ReviewSelection, limit: int | None, as_json: bool
) -> None:
    """Write dataset NAME's entries to FILE, one JSON object per line, for a person to edit.

    On each line, edit "output" (the assistant message), set "drop": true to take the entry out,
    or add a "note"; everything else is context. Then run 'flywheel review import NAME FILE'.
    """
    result = export_review(_db(db_url), name, out_path, only=only, limit=limit)
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    sources = ", ".join(f"{count:,} {source}" for source, count in result.by_source.items())
    click.echo(
        f"Wrote {result.entries:,} entries of {name} (version {result.version}) to {result.path}"
        + (f": {sources}" if sources else "")
    )


@review_group.command("import")
@click.argument("name")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and count the changes; import nothing.")
@db_option
@json_option
def review_import_command(db_url: str | None, name: str, path: str, dry_run: bool, as_json: bool) -> None:
    """Import the edits in FILE (from 'flywheel review export') into dataset NAME, all or nothing.

    Every line is checked first; if one is wrong, nothing is imported and each problem is named by
    line and field. Edits become the entries' outputs (kept with their provenance), drops take
    entries out; both make one new dataset version.
    """
    try:
        result = import_review(_db(db_url), name, path, dry_run=dry_run)
    except ReviewFileError as error:
        if as_json:
            _print_json_lines([issue.as_dict() for issue in error.issues])
        raise
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    counts = (
        f"{result.edited:,} edited, {result.dropped:,} dropped, {result.untouched:,} untouched, "
        f"{result.unchanged:,} already current"
    )
    if dry_run:
        click.echo(f"Would import into {name}: {counts}")
    elif result.version is None:
        click.echo(f"Nothing to import into {name}: {counts}")
    else:
        click.echo(f"Dataset {name} version {result.version}: {counts}")


@cli.command("export")
@click.argument("name")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory to write.",
)
@db_option
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.0, 1.0),
    metavar="F",
    help="Share of entries held out for test (default: the dataset's rule, at first 0.1).",
)
@click.option("--stratify-by", metavar="TAG", help="Give each value of this tag the test fraction.")
@click.option("--salt", metavar="TEXT", help="Another salt gives another (independent) split.")
@click.option(
    "--train-on",
    type=click.Choice(["all", "last"]),
    default="all",
    show_default=True,
    help="Train on every assistant message, or only on the output (weight 0 on earlier turns).",
)
@click.option(
    "--base-model", metavar="MODEL", help="Check token counts against this model's limit per example."
)
@click.option("--token-limit", type=click.IntRange(min=1), metavar="N", help="Token limit per example.")
@click.option(
    "--min-examples",
    type=click.IntRange(min=0),
    default=MIN_EXAMPLES,
    show_default=True,
    metavar="N",
    help="Fewest training examples accepted.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Leave out entries that fail validation (listed in the manifest)."
)
@click.option(
    "--version",
    "dataset_version",
    type=click.IntRange(min=1),
    metavar="N",
    help="Export the dataset as it was at version N (rebuilds an earlier export). Default: the newest.",
)
@workers_option("convert and check entries")
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@json_option
def export_command(
    db_url: str | None,
    name: str,
    out_dir: str,
    test_fraction: float | None,
    stratify_by: str | None,
    salt: str | None,
    train_on: TrainOn,
    base_model: str | None,
    token_limit: int | None,
    min_examples: int,
    skip_invalid: bool,
    dataset_version: int | None,
    workers: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Write dataset NAME as DIR/train.jsonl, DIR/test.jsonl and DIR/manifest.json.

    Lines are in OpenAI's chat fine-tuning format; entries with a relabeled or edited output also
    go to preference_train.jsonl / preference_test.jsonl (DPO). Every line is validated first:
    nothing is written if one fails (unless --skip-invalid). The split is stable: exporting again
    after the dataset grew keeps every entry on its side.
    """
    with _progress_bar("exporting", quiet=as_json) as progress:
        result = export_dataset(
            _db(db_url),
            name,
            out_dir,
            test_fraction=test_fraction,
            stratify_by=stratify_by,
            salt=salt,
            train_on=train_on,
            base_model=base_model,
            token_limit=token_limit,
            min_examples=min_examples,
            skip_invalid=skip_invalid,
            dry_run=dry_run,
            version=dataset_version,
            workers=workers,
            progress=progress,
        )
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    counts = result.counts
    done = "Would write" if dry_run else "Wrote"
    click.echo(
        f"{done} {counts['train']:,} train and {counts['test']:,} test examples of {name} "
        f"(version {result.manifest['dataset_version']}) to {result.out_dir}"
    )
    if counts["preference_train"] or counts["preference_test"]:
        click.echo(
            f"  preference pairs: {counts['preference_train']:,} train, {counts['preference_test']:,} test"
        )
    if counts["skipped"]:
        click.echo(f"  skipped {counts['skipped']:,} entries (listed in manifest.json)")
    for note in result.manifest.get("notes", []):
        click.echo(f"  note: {note}")


@cli.command("mock-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, metavar="HOST", help="Interface to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    metavar="PORT",
    help="Port to listen on.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Wait N milliseconds before every answer.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    metavar="F",
    help="Fraction of requests answered with a 500 error (0 to 1).",
)
def mock_server_command(host: str, port: int, latency_ms: float, error_rate: float) -> None:
    """Serve an OpenAI-compatible API for offline demos and tests (Ctrl+C stops it).

    Chat completions (streamed or not, tools, structured outputs), Responses, Completions,
    embeddings, models, files and fine-tuning jobs, with deterministic answers. Requests can ask
    for faults with x-mock-* headers (x-mock-status, x-mock-latency-ms, x-mock-fail-attempts).
    """
    from .mock_server import serve  # starlette and uvicorn are only needed here

    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}/v1"
    click.echo(f"Mock OpenAI API on {base_url}")
    click.echo(f"Point a client at it:  OPENAI_BASE_URL={base_url} OPENAI_API_KEY=mock python app.py")
    sys.stdout.flush()
    serve(host=host, port=port, latency_ms=latency_ms, error_rate=error_rate)


def main() -> None:
    """Console script entry point (``flywheel``)."""
    cli.main(prog_name="flywheel")
