"""The common filter over recorded calls, its SQL, and lazy read access to the calls it selects.

Every command that selects calls (``logs``, ``stats``, later ``dataset create``) and the library
(``flywheel.query(...)``) take the same ``CallFilter``, a frozen pydantic model, and apply it with
``filter_conditions``/``filter_calls``, so "which calls" means the same thing everywhere.
Invariants:

- The filter is pushed down: every criterion is a SQL condition and every value reaches the
  database as a bound parameter, never as SQL text. Nothing is filtered in Python.
- ``since``/``until`` are timezone-aware UTC datetimes; ``since`` is inclusive, ``until`` is
  exclusive, so ``--since 2024-05-01 --until 2024-05-02`` is exactly the 1st of May (UTC).
- A relative time (``7d``) is resolved once, when the filter is made; the text is kept beside the
  resolved moment (``since_relative``). A stored filter (``model_dump(mode="json")``) therefore
  selects the same calls whenever it is loaded again; ``refreshed()`` is the explicit way to slide
  the window to a new "now".
- Tags are ANDed, one ``EXISTS`` each, served by the ``(key, value)`` index on ``call_tags``:
  ``(key, value)`` requires that value, ``(key, None)`` only that the tag is present.
- ``status="ok"`` is an HTTP 2xx/3xx answer; ``"error"`` is 4xx/5xx or no answer at all
  (``status_code IS NULL``: timeout, connection error).
- Bounds (latency, tokens) are inclusive at both ends and never match a call whose value is unknown.
- ``search`` looks in the string values of the request and response JSON, decoded (escapes such as
  ``\"`` or ``\u00e9`` in the stored text do not matter), never in keys: a cheap ``LIKE`` on the
  stored text narrows the calls, then ``json_tree`` (SQLite) / ``jsonb_path_query`` (PostgreSQL)
  checks the strings of those. It is a scan, linear in the calls that pass the other criteria.
- Invalid criteria raise ``BadFilterError`` naming the option (``--min-latency``), never a pydantic
  ``ValidationError``.

Adding a criterion touches three places, all kept next to each other on purpose: a field of
``CallFilter`` (with its option name in ``_OPTION_OF``), its condition in ``filter_conditions``, and
its option in ``flywheel.cli.filter_options``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVarTuple

import orjson
import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from sdk._config import database_url as default_database_url
from sdk._migrate import current_revision, head_revision, schema_status
from sdk._store import create_store_engine, sqlite_file
from sdk.schema import call_tags, calls

from .errors import BadFilterError, StoreError, UsageError, display_url, store_error

if TYPE_CHECKING:
    import pandas

__all__ = [
    "DEFAULT_COLUMNS",
    "TIME_FORMATS_HELP",
    "TOTAL_TOKENS",
    "CallFilter",
    "CallQuery",
    "Status",
    "as_utc",
    "connect",
    "filter_calls",
    "filter_conditions",
    "format_tag",
    "parse_duration",
    "parse_tag",
    "parse_time",
    "query",
]

Status = Literal["ok", "error"]

TIME_FORMATS_HELP = (
    "an ISO date or datetime (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00:00+02:00; UTC unless an "
    "offset is given) or a time ago: 30m, 12h, 7d, 2w"
)

TOTAL_TOKENS: ColumnElement[Any] = sa.func.coalesce(
    calls.c.total_tokens, calls.c.prompt_tokens + sa.func.coalesce(calls.c.completion_tokens, 0)
)
"""A call's total tokens: ``total_tokens`` as recorded, else prompt + completion (NULL if unknown)."""

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

_Ts = TypeVarTuple("_Ts")


# --- parsing option text (pure) -----------------------------------------------------------------


def parse_tag(text: str, *, option: str = "--tag") -> tuple[str, str | None]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, split at the first ``=``; ``KEY`` alone -> ``(KEY, None)``.

    ``(KEY, None)`` means "the call has the tag, whatever its value"; ``KEY=`` is the empty value.
    Raises ``BadFilterError`` naming ``option`` and the bad value when the key is empty.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not key:
        raise BadFilterError(
            f"invalid tag {text!r}: expected KEY=VALUE or KEY, e.g. prompt_id=classify", option
        )
    return key, value if sep else None


def format_tag(key: str, value: str | None) -> str:
    """Option text of a tag criterion: ``KEY=VALUE``, or ``KEY`` for presence (``parse_tag`` reversed)."""
    return key if value is None else f"{key}={value}"


def parse_duration(text: str) -> timedelta | None:
    """``N`` + ``s``/``m``/``h``/``d``/``w`` (``"30m"``, ``" 7 d"``) as a ``timedelta``; ``None`` when
    ``text`` is not such a duration. The relative times of ``--since`` and the config's durations
    (``min_interval``) are both read by it."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative is None:
        return None
    return timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})


def relative_time(text: str) -> str | None:
    """``text`` normalized (``" 7 d"`` -> ``"7d"``) when it is a relative time, else ``None``."""
    relative = _RELATIVE.fullmatch(text.strip())
    return f"{relative.group(1)}{relative.group(2)}" if relative else None


def parse_time(text: str, now: datetime | None = None, *, option: str = "--since") -> datetime:
    """Parse an absolute or relative time into an aware UTC datetime.

    Accepted: ISO dates (``2024-05-01``, midnight UTC), ISO datetimes (naive ones are UTC, ones with
    an offset or ``Z`` are converted), and relative times ``N`` + ``s``/``m``/``h``/``d``/``w``
    meaning that long before ``now`` (default: the current time).
    Raises ``BadFilterError`` naming ``option`` and the bad value.
    """
    stripped = text.strip()
    try:
        ago = parse_duration(stripped)
        if ago is not None:
            return (as_utc(now) if now is not None else datetime.now(UTC)) - ago
    except OverflowError:
        raise BadFilterError(f"time {text!r} is too far back", option) from None
    try:
        return as_utc(datetime.fromisoformat(stripped))
    except ValueError:
        raise BadFilterError(f"invalid time {text!r}: expected {TIME_FORMATS_HELP}", option) from None


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken as UTC already (as SQLite hands them back)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _tag_text(value: object) -> object:
    # The SDK stores tags as strings this way (sdk._tags): bools as true/false, numbers via str().
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _tag_pair(item: object) -> object:
    if isinstance(item, str):
        return parse_tag(item)
    if isinstance(item, Iterable):
        return tuple(_tag_text(part) for part in item)
    return item  # left for pydantic to reject


# --- the filter model ---------------------------------------------------------------------------

_OPTION_OF = {
    "tags": "--tag",
    "model": "--model",
    "endpoint": "--endpoint",
    "since": "--since",
    "until": "--until",
    "since_relative": "--since",
    "until_relative": "--until",
    "status": "--status",
    "search": "--search",
    "min_latency_ms": "--min-latency",
    "max_latency_ms": "--max-latency",
    "min_tokens": "--min-tokens",
    "max_tokens": "--max-tokens",
    "min_prompt_tokens": "--min-prompt-tokens",
    "max_prompt_tokens": "--max-prompt-tokens",
    "min_completion_tokens": "--min-completion-tokens",
    "max_completion_tokens": "--max-completion-tokens",
}
"""The command-line option of each field: what error messages name."""

_BOUNDS = (
    ("min_latency_ms", "max_latency_ms"),
    ("min_tokens", "max_tokens"),
    ("min_prompt_tokens", "max_prompt_tokens"),
    ("min_completion_tokens", "max_completion_tokens"),
)

_NOW_CONTEXT = "now"
"""Validation context key: the moment relative times are resolved against (default: the clock)."""


class CallFilter(BaseModel):
    """Which calls a command works on. All criteria are ANDed; ``None``/empty means "any".

    Parameters:
        tags: ``(key, value)`` pairs the call must all carry; a ``None`` value only requires the
            key. Also accepted: a mapping ``{key: value}`` or option strings (``"env=prod"``,
            ``"env"``); numbers and booleans are converted as the SDK stores them.
        model: exact model name as recorded (``calls.model``).
        endpoint: API path below the root, e.g. ``/chat/completions`` (a missing leading ``/`` is added).
        since: calls created at or after this moment. A datetime (naive is UTC) or text as
            ``parse_time`` reads it; a relative text (``7d``) is resolved now and kept in
            ``since_relative``.
        until: calls created strictly before this moment (same forms as ``since``).
        since_relative, until_relative: the relative text a bound was resolved from, kept so that
            ``refreshed()`` can resolve it again; given alone, it is resolved now.
        status: ``"ok"`` (HTTP 2xx/3xx) or ``"error"`` (HTTP >= 400 or no response).
        search: text that a string value in the request or response body must contain (message
            contents, tool arguments, ...; JSON keys and punctuation never match), case-insensitive
            (ASCII letters on SQLite, all letters on PostgreSQL), literal (``%``/``_`` are no wildcards).
        min_latency_ms, max_latency_ms: inclusive bounds on ``latency_ms``.
        min_tokens, max_tokens: inclusive bounds on total tokens (``TOTAL_TOKENS``).
        min_prompt_tokens, max_prompt_tokens, min_completion_tokens, max_completion_tokens:
            inclusive bounds on ``prompt_tokens`` / ``completion_tokens``.

    Invalid values raise ``BadFilterError`` naming the option. The model is frozen and JSON-ready:
    ``CallFilter.model_validate(f.model_dump(mode="json")) == f``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: tuple[tuple[str, str | None], ...] = ()
    model: str | None = None
    endpoint: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    since_relative: str | None = None
    until_relative: str | None = None
    status: Status | None = None
    search: str | None = Field(default=None, min_length=1)
    min_latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    min_tokens: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    min_completion_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_the_option(cls, data: Any, handler: Callable[[Any], CallFilter]) -> CallFilter:
        try:
            return handler(data)
        except ValidationError as exc:
            raise _bad_filter(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _resolve_times(cls, data: Any, info: ValidationInfo) -> Any:
        # Both bounds are resolved against one moment, so `--since 2h --until 1h` is one hour long.
        if not isinstance(data, Mapping):
            return data
        resolved = dict(data)
        context = info.context if isinstance(info.context, Mapping) else {}
        now = context.get(_NOW_CONTEXT) or datetime.now(UTC)
        for name in ("since", "until"):
            option, relative_name = _OPTION_OF[name], f"{name}_relative"
            value, relative = resolved.get(name), resolved.get(relative_name)
            if isinstance(value, str):
                resolved[name] = parse_time(value, now, option=option)
                if relative_time(value) is not None:
                    resolved[relative_name] = relative_time(value)
            elif value is None and isinstance(relative, str):
                resolved[name] = parse_time(relative, now, option=option)
        return resolved

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_pairs(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple((key, _tag_text(tag)) for key, tag in value.items())
        if isinstance(value, str):
            return (parse_tag(value),)
        if isinstance(value, Iterable):
            return tuple(_tag_pair(item) for item in value)
        return value

    @field_validator("tags")
    @classmethod
    def _tag_keys_are_not_empty(cls, value: tuple[tuple[str, str | None], ...]) -> Any:
        if any(not key.strip() for key, _ in value):
            raise ValueError("a tag key must not be empty")
        return value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # Normalized once here so that every query binds UTC (SQLite compares datetimes as text).
        return None if value is None else as_utc(value)

    @field_validator("since_relative", "until_relative")
    @classmethod
    def _relative_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normalized = relative_time(value)
        if normalized is None:
            raise ValueError("expected a time ago such as 30m, 12h, 7d or 2w")
        return normalized

    @field_validator("endpoint")
    @classmethod
    def _rooted(cls, value: str | None) -> str | None:
        return value if value is None or value.startswith("/") else "/" + value

    @model_validator(mode="after")
    def _ranges_are_not_empty(self) -> CallFilter:
        # Raised as BadFilterError directly: an after-validator runs outside the wrap above.
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise BadFilterError(
                f"empty time range: since {self.since.isoformat()} is not before until "
                f"{self.until.isoformat()}",
                "--since/--until",
            )
        for low, high in _BOUNDS:
            minimum, maximum = getattr(self, low), getattr(self, high)
            if minimum is not None and maximum is not None and minimum > maximum:
                raise BadFilterError(
                    f"empty range: minimum {minimum} is above maximum {maximum}",
                    f"{_OPTION_OF[low]}/{_OPTION_OF[high]}",
                )
        return self

    @classmethod
    def from_options(
        cls,
        *,
        tags: Iterable[str] = (),
        model: str | None = None,
        endpoint: str | None = None,
        since: str | None = None,
        until: str | None = None,
        status: str | None = None,
        search: str | None = None,
        now: datetime | None = None,
        **bounds: float | None,
    ) -> CallFilter:
        """Build a filter from option text (``--tag k=v``, ``--since 7d``, ...), as the CLI gets it.

        ``bounds`` are the numeric fields (``min_latency_ms=``, ``max_tokens=``, ...); ``None`` and
        empty strings mean "not given". Relative times are resolved against ``now`` (default: the
        current time), once, so ``--since 2h --until 1h`` is a one-hour window.
        Raises ``BadFilterError`` naming the option.
        """
        given: dict[str, Any] = {
            "tags": tuple(tags),
            "model": model or None,
            "endpoint": endpoint or None,
            "since": since or None,
            "until": until or None,
            "status": status or None,
            "search": search or None,
            **{name: value for name, value in bounds.items() if value is not None},
        }
        return cls.model_validate(given, context={_NOW_CONTEXT: as_utc(now) if now else None})

    def replace(self, **criteria: Any) -> CallFilter:
        """A copy with ``criteria`` replaced, validated like a new filter (unlike ``model_copy``).

        Replacing ``since``/``until`` drops the relative text it was resolved from.
        """
        current = self.model_dump(exclude_defaults=True)
        for name in ("since", "until"):
            if name in criteria:
                current.pop(f"{name}_relative", None)
        return CallFilter.model_validate({**current, **criteria})

    def refreshed(self, now: datetime | None = None) -> CallFilter:
        """This filter with its relative times resolved again against ``now`` (default: the clock).

        ``--since 30d`` stored last month selected the 30 days before it was made; ``refreshed()``
        selects the 30 days before ``now``. Absolute times and the other criteria are unchanged.
        """
        current = self.model_dump(exclude_defaults=True)
        for name in ("since", "until"):
            if current.get(f"{name}_relative"):
                current.pop(name, None)
        return CallFilter.model_validate(current, context={_NOW_CONTEXT: as_utc(now) if now else None})

    def is_empty(self) -> bool:
        """True when the filter matches every call."""
        return self == CallFilter()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description of the set criteria: tags as option text (``KEY=VALUE``/``KEY``),
        times in ISO 8601. ``CallFilter.model_validate`` reads it back."""
        described = self.model_dump(mode="json", exclude_defaults=True)
        if self.tags:
            described["tags"] = [format_tag(key, value) for key, value in self.tags]
        for name in ("since", "until"):
            moment: datetime | None = getattr(self, name)
            if moment is not None:
                described[name] = moment.isoformat()
        return described


def _bad_filter(exc: ValidationError) -> BadFilterError:
    """The first problem of a ``ValidationError`` as one line naming its option."""
    errors = exc.errors(include_url=False)
    first: ErrorDetails = errors[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        known = ", ".join(CallFilter.model_fields)
        return BadFilterError(f"unknown filter criterion {field!r}: expected one of {known}{more}", field)
    message = first["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return BadFilterError(f"invalid value {first['input']!r}: {message}{more}", _OPTION_OF.get(field, field))


# --- SQL ------------------------------------------------------------------------------------------


def _json_forms(needle: str) -> list[str]:
    """How ``needle`` can appear inside the JSON text of a body: JSON-escaped (quotes, backslashes,
    control characters), with non-ASCII characters either as they are (UTF-8 text, PostgreSQL's
    ``jsonb`` output) or as ``\\uXXXX`` escapes (``json.dumps`` with ``ensure_ascii``)."""
    forms = [json.dumps(needle, ensure_ascii=False)[1:-1], json.dumps(needle, ensure_ascii=True)[1:-1]]
    return list(dict.fromkeys(forms))


class _StringInBody(FunctionElement[bool]):
    """True when a string value anywhere inside the JSON ``body`` contains ``needle`` (case-insensitive).

    Dialect-specific SQL (below), both with the needle as a bound parameter and no pattern syntax
    (``instr``/``strpos``): ``json_tree`` on SQLite, ``jsonb_path_query(body, 'strict $.**')`` on
    PostgreSQL. Keys and JSON punctuation never match, escapes in the stored text are decoded.
    """

    inherit_cache = True
    name = "string_in_body"
    type = sa.Boolean()

    def __init__(self, body: ColumnElement[Any], needle: str) -> None:
        super().__init__(body, sa.bindparam(None, needle, type_=sa.Text))


@compiles(_StringInBody, "sqlite")
def _string_in_body_sqlite(element: _StringInBody, compiler: SQLCompiler, **kw: Any) -> str:
    body, needle = element.clauses
    # json_tree raises on malformed JSON: such a body (none is written today) is searched as text.
    is_json = sa.func.json_valid(body) == 1
    tree = sa.func.json_tree(sa.case((is_json, body))).table_valued("type", "atom")
    in_a_string = sa.exists().where(
        tree.c.type == "text", sa.func.instr(sa.func.lower(tree.c.atom), sa.func.lower(needle)) > 0
    )
    as_text = sa.and_(~is_json, sa.func.instr(sa.func.lower(body), sa.func.lower(needle)) > 0)
    return f"({compiler.process(sa.or_(in_a_string, as_text), **kw)})"


@compiles(_StringInBody, "postgresql")
def _string_in_body_postgresql(element: _StringInBody, compiler: SQLCompiler, **kw: Any) -> str:
    body, needle = element.clauses
    values = sa.func.jsonb_path_query(body, sa.literal_column("'strict $.**'")).table_valued("value")
    values = values.render_derived()  # AS anon(value): the function returns a single column
    text = values.c.value.op("#>>")(sa.literal_column("'{}'"))
    in_a_string = sa.exists().where(
        sa.func.jsonb_typeof(values.c.value) == "string",
        sa.func.strpos(sa.func.lower(text), sa.func.lower(needle)) > 0,
    )
    return f"({compiler.process(in_a_string, **kw)})"


def _search_condition(needle: str) -> ColumnElement[bool]:
    """Calls with ``needle`` in a string of the request or response body.

    First a cheap necessary condition on the body's JSON text (``LIKE``/``ILIKE``, autoescaped so
    ``%`` and ``_`` are literal; the needle in every form it can take there), then the exact check
    on the decoded strings for the calls that pass it.
    """
    conditions = []
    for body in (calls.c.request, calls.c.response):
        as_text = sa.cast(body, sa.Text)
        maybe = sa.or_(*(as_text.icontains(form, autoescape=True) for form in _json_forms(needle)))
        conditions.append(sa.and_(maybe, _StringInBody(body, needle)))
    return sa.or_(*conditions)


def filter_conditions(call_filter: CallFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions (on ``calls``) that ``call_filter`` stands for, to be ANDed."""
    conditions: list[ColumnElement[bool]] = []
    if call_filter.model is not None:
        conditions.append(calls.c.model == call_filter.model)
    if call_filter.endpoint is not None:
        conditions.append(calls.c.endpoint == call_filter.endpoint)
    if call_filter.since is not None:
        conditions.append(calls.c.created_at >= call_filter.since)
    if call_filter.until is not None:
        conditions.append(calls.c.created_at < call_filter.until)
    if call_filter.status == "ok":
        conditions.append(calls.c.status_code.between(200, 399))
    elif call_filter.status == "error":
        conditions.append(sa.or_(calls.c.status_code.is_(None), calls.c.status_code >= 400))
    for key, value in call_filter.tags:
        tag = [call_tags.c.call_id == calls.c.id, call_tags.c.key == key]
        if value is not None:
            tag.append(call_tags.c.value == value)
        conditions.append(sa.exists().where(*tag))
    bounded: list[tuple[ColumnElement[Any], float | None, float | None]] = [
        (calls.c.latency_ms, call_filter.min_latency_ms, call_filter.max_latency_ms),
        (TOTAL_TOKENS, call_filter.min_tokens, call_filter.max_tokens),
        (calls.c.prompt_tokens, call_filter.min_prompt_tokens, call_filter.max_prompt_tokens),
        (calls.c.completion_tokens, call_filter.min_completion_tokens, call_filter.max_completion_tokens),
    ]
    for measure, minimum, maximum in bounded:
        if minimum is not None:
            conditions.append(measure >= minimum)
        if maximum is not None:
            conditions.append(measure <= maximum)
    if call_filter.search is not None:
        conditions.append(_search_condition(call_filter.search))
    return conditions


def filter_calls(statement: Select[*_Ts], call_filter: CallFilter) -> Select[*_Ts]:
    """Add ``call_filter``'s conditions to ``statement``, which must select from ``calls``."""
    conditions = filter_conditions(call_filter)
    return statement.where(*conditions) if conditions else statement


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A connection to an existing, migrated store, for reading.

    Raises ``StoreError`` (URL shown without its password) when the store is unreachable, when a
    SQLite file does not exist (it is not created: that is ``flywheel migrate``'s job), when the
    ``calls`` table is missing, and for any database error raised inside the ``with`` block.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError("not a valid database URL", "--db / FLYWHEEL_DATABASE_URL") from None
    shown = display_url(parsed)
    path = sqlite_file(parsed)
    if path is not None and not path.exists():
        raise StoreError("no store here yet; run 'flywheel migrate' to create it", shown)
    engine = create_store_engine(url)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise store_error(exc, url, "cannot connect to the store") from exc
        with connection:
            try:
                _check_schema(connection, shown)
                yield connection
            except sa.exc.DBAPIError as exc:
                raise store_error(exc, url, "cannot read the store") from exc
    finally:
        engine.dispose()


def _check_schema(connection: Connection, shown: str) -> None:
    # A newer schema ("ahead") is read as is: migrations add, and this code selects named columns.
    status = schema_status(connection)
    if status == "missing":
        raise StoreError("the store has no flywheel schema yet; run 'flywheel migrate'", shown)
    if status == "outdated":
        raise StoreError(
            f"the store's schema is at revision {current_revision(connection)}, this flywheel needs "
            f"{head_revision()}; run 'flywheel migrate'",
            shown,
        )


# --- lazy access: flywheel.query(...) -------------------------------------------------------------

_BODIES = ("request", "response")

DEFAULT_COLUMNS: tuple[str, ...] = tuple(c.name for c in calls.columns if c.name not in _BODIES)
"""Columns of ``calls`` that ``CallQuery`` yields by default: all but the request/response bodies."""

TagSelection = bool | Sequence[str]
"""``True``: a ``tags`` dict per call; ``False``: no tags; a list of keys: one ``tag:KEY`` column each."""


def query(
    filter: CallFilter | None = None,
    *,
    database_url: str | None = None,
    **criteria: Any,
) -> CallQuery:
    """The calls matching ``filter`` and ``criteria`` (``CallFilter`` fields), read lazily.

    ``flywheel.query(tags={"prompt_id": "classify"}, since="7d", status="ok").to_pandas()``.
    ``criteria`` replace the same fields of ``filter``. Nothing is read until the result is
    counted, iterated or converted. ``database_url`` defaults to ``$FLYWHEEL_DATABASE_URL``, else
    ``sqlite:///flywheel.db``. Raises ``BadFilterError`` for invalid criteria.
    """
    call_filter = filter if filter is not None else CallFilter()
    if criteria:
        call_filter = call_filter.replace(**criteria)
    return CallQuery(call_filter, database_url or default_database_url())


@dataclass(frozen=True, slots=True)
class CallQuery:
    """The calls a ``CallFilter`` selects in one store; a description, read only on demand.

    Calls come oldest first (``created_at``, then ``id``) and are streamed from the database in
    batches (a server-side cursor on PostgreSQL), so iterating holds one batch in memory at a time.
    Each call is a dict of the chosen columns: ``created_at`` an aware UTC datetime, ``total_tokens``
    as ``TOTAL_TOKENS`` computes it, ``request``/``response`` (when chosen) parsed from JSON, and
    the tags as the ``tags`` argument says. Errors reading the store raise ``StoreError``.
    """

    call_filter: CallFilter
    database_url: str

    def count(self) -> int:
        """How many calls match (one ``count(*)`` in the database)."""
        statement = filter_calls(sa.select(sa.func.count()).select_from(calls), self.call_filter)
        with connect(self.database_url) as connection:
            return int(connection.execute(statement).scalar_one())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches():
            yield from batch

    def batches(
        self, size: int = 1000, *, columns: Sequence[str] | None = None, tags: TagSelection = True
    ) -> Generator[list[dict[str, Any]], None, None]:
        """The matching calls, ``size`` at a time (see the class docstring for their shape).

        Stopping early is fine: closing the generator (or dropping it) closes the cursor.

        ``columns`` are names of ``calls`` columns (default ``DEFAULT_COLUMNS``). Raises
        ``UsageError`` for an unknown column, a non-positive ``size`` or an empty tag key.
        """
        if size < 1:
            raise UsageError(f"batch size must be at least 1, got {size}", "size")
        selected = _selected_columns(columns)
        tag_keys = _tag_keys(tags)
        statement = filter_calls(sa.select(*selected), self.call_filter)
        statement = statement.order_by(calls.c.created_at, calls.c.id)
        with connect(self.database_url) as connection:
            # Options on the statement: on the connection they would stream the tag queries too.
            streamed = connection.execute(statement.execution_options(stream_results=True, yield_per=size))
            try:
                for partition in streamed.mappings().partitions():
                    rows = [_call(row) for row in partition]
                    if tags is not False and rows:
                        _attach_tags(connection, rows, tag_keys)
                    yield rows
            finally:
                streamed.close()  # a stream dropped half-read closes its server-side cursor first

    def to_pandas(self, columns: Sequence[str] | None = None, tags: TagSelection = True) -> pandas.DataFrame:
        """The matching calls as a ``pandas.DataFrame``, one row per call, oldest first.

        ``columns`` as in ``batches``; ``id`` is always included (first). ``created_at`` is
        ``datetime64[..., UTC]``; integer columns are nullable ``Int64``; floats ``float64`` (NaN
        when unknown); ``stream``/``complete`` ``bool``; text columns pandas' string type.
        ``tags=True`` adds a ``tags`` column of dicts; a list of keys adds one ``tag:KEY`` column
        each (missing tags as NA) instead; ``False`` adds none. Raises ``UsageError`` when pandas
        is not installed (``pip install 'llm-flywheel[cli]'``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise UsageError(
                "to_pandas() needs pandas: pip install 'llm-flywheel[cli]' (or pip install pandas)",
                "to_pandas",
            ) from None
        names = [str(column.name) for column in _selected_columns(columns)]
        extra = ["tags"] if tags is True else [f"tag:{key}" for key in _tag_keys(tags)]
        frames = [_frame(pd, batch, names, extra) for batch in self.batches(columns=columns, tags=tags)]
        if not frames:
            return _frame(pd, [], names, extra)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _selected_columns(columns: Sequence[str] | None) -> list[ColumnElement[Any]]:
    wanted = list(dict.fromkeys(["id", *(DEFAULT_COLUMNS if columns is None else columns)]))
    unknown = [name for name in wanted if name not in calls.c]
    if unknown:
        raise UsageError(
            f"unknown column {unknown[0]!r}: expected columns of calls ({', '.join(calls.c.keys())})",
            "columns",
        )
    return [
        TOTAL_TOKENS.label("total_tokens") if name == "total_tokens" else calls.c[name] for name in wanted
    ]


def _tag_keys(tags: TagSelection) -> list[str]:
    if isinstance(tags, bool):
        return []
    keys = [tags] if isinstance(tags, str) else list(tags)
    if not all(isinstance(key, str) and key for key in keys):
        raise UsageError(f"tag keys must be non-empty strings, got {keys!r}", "tags")
    return list(dict.fromkeys(keys))


def _call(row: sa.RowMapping) -> dict[str, Any]:
    call = dict(row)
    if isinstance(call.get("created_at"), datetime):
        call["created_at"] = as_utc(call["created_at"])  # SQLite hands back naive UTC datetimes
    for body in _BODIES:
        if isinstance(call.get(body), str):
            # Text that is not JSON (metadata of a binary body) is kept as it was stored.
            with suppress(orjson.JSONDecodeError):
                call[body] = orjson.loads(call[body])
    return call


def _attach_tags(connection: Connection, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Add each call's tags to its row: a ``tags`` dict, or ``tag:KEY`` values for ``keys``."""
    statement = sa.select(call_tags.c.call_id, call_tags.c.key, call_tags.c.value).where(
        call_tags.c.call_id.in_([row["id"] for row in rows])
    )
    if keys:
        statement = statement.where(call_tags.c.key.in_(keys))
    found: dict[str, dict[str, str]] = {}
    for call_id, key, value in connection.execute(statement.order_by(call_tags.c.key)):
        found.setdefault(call_id, {})[key] = value
    for row in rows:
        tags = found.get(row["id"], {})
        if keys:
            row.update({f"tag:{key}": tags.get(key) for key in keys})
        else:
            row["tags"] = tags


def _frame(pd: Any, rows: list[dict[str, Any]], names: list[str], extra: list[str]) -> Any:
    """One batch as a DataFrame whose dtypes do not depend on the values (so batches concatenate)."""
    frame = pd.DataFrame.from_records(rows, columns=[*names, *extra])
    for name in names:
        kind = calls.c[name].type.python_type if name not in _BODIES else object
        if name == "created_at":
            frame[name] = pd.to_datetime(frame[name], utc=True)
        elif kind is bool:
            frame[name] = frame[name].astype("bool" if not calls.c[name].nullable else "boolean")
        elif kind is int:
            frame[name] = frame[name].astype("Int64")
        elif kind is float:
            frame[name] = frame[name].astype("float64")
        elif kind is str:
            frame[name] = frame[name].astype(pd.StringDtype())
    for name in extra:
        if name != "tags":
            frame[name] = frame[name].astype(pd.StringDtype())
    return frame
