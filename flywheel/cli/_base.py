"""What every ``flywheel`` command shares: the ``cli`` group, one-line errors, the common options
(``--db``, ``--json``, ``--workers``, the filter options), tables and progress bars."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

import click
import orjson

from sdk._config import database_url

from .. import __version__
from ..datasets import Progress
from ..errors import FlywheelError
from ..parallel import WORKERS_FROM, default_workers
from ..query import TIME_FORMATS_HELP, CallFilter
from ..train.cost import format_usd

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


def _print_json(value: Any) -> None:
    """One JSON document (an object or a list), indented, times in UTC."""
    click.echo(orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_INDENT_2).decode())


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


_usd = format_usd


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


@click.group(cls=FlywheelGroup)
@click.version_option(__version__, "--version", prog_name="flywheel", message="%(prog)s %(version)s")
def cli() -> None:
    """Turn logged LLM calls into fine-tuning data.

    The store is a SQL database (--db URL or $FLYWHEEL_DATABASE_URL; default sqlite:///flywheel.db)
    that the flywheel SDK writes and these commands read.
    """


def main() -> None:
    """Console script entry point (``flywheel``)."""
    cli.main(prog_name="flywheel")
