"""The common filter over recorded calls, and read access to the store.

Every command that selects calls (``logs``, ``stats``, later ``dataset create``) takes the same
``CallFilter`` and applies it with ``filter_calls``, so "which calls" means the same thing
everywhere. Invariants:

- ``since``/``until`` are timezone-aware UTC datetimes; ``since`` is inclusive, ``until`` is
  exclusive, so ``--since 2024-05-01 --until 2024-05-02`` is exactly the 1st of May (UTC).
- Tags are ANDed: a call matches when it has every ``key=value`` pair (one ``EXISTS`` each, served
  by the ``(key, value)`` index on ``call_tags``).
- ``status="ok"`` is an HTTP 2xx/3xx answer; ``"error"`` is 4xx/5xx or no answer at all
  (``status_code IS NULL``: timeout, connection error).
- Every value reaches the database as a bound parameter, never as SQL text.

Adding a criterion touches three places, all kept next to each other on purpose: a field of
``CallFilter`` (with its parsing in ``from_options``), its condition in ``filter_conditions``, and
its option in ``flywheel.cli.filter_options``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVarTuple, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Select

from sdk._migrate import current_revision, head_revision, schema_status
from sdk._store import create_store_engine, sqlite_file
from sdk.schema import call_tags, calls

from .errors import BadFilterError, StoreError, UsageError, display_url, store_error

__all__ = [
    "CallFilter",
    "Status",
    "connect",
    "filter_calls",
    "filter_conditions",
    "parse_tag",
    "parse_time",
]

Status = Literal["ok", "error"]

TIME_FORMATS_HELP = (
    "an ISO date or datetime (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00:00+02:00; UTC unless an "
    "offset is given) or a time ago: 30m, 12h, 7d, 2w"
)

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

_Ts = TypeVarTuple("_Ts")


def parse_tag(text: str, *, option: str = "--tag") -> tuple[str, str]:
    """Split ``KEY=VALUE`` at the first ``=``; the value may be empty, the key may not.

    Raises ``BadFilterError`` naming ``option`` and the bad value.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadFilterError(f"invalid tag {text!r}: expected KEY=VALUE, e.g. prompt_id=classify", option)
    return key, value


def parse_time(text: str, now: datetime | None = None, *, option: str = "--since") -> datetime:
    """Parse an absolute or relative time into an aware UTC datetime.

    Accepted: ISO dates (``2024-05-01``, midnight UTC), ISO datetimes (naive ones are UTC, ones with
    an offset or ``Z`` are converted), and relative times ``N`` + ``s``/``m``/``h``/``d``/``w``
    meaning that long before ``now`` (default: the current time).
    Raises ``BadFilterError`` naming ``option`` and the bad value.
    """
    stripped = text.strip()
    relative = _RELATIVE.fullmatch(stripped)
    if relative:
        reference = _as_utc(now) if now is not None else datetime.now(UTC)
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return reference - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise BadFilterError(f"time {text!r} is too far back", option) from None
    try:
        return _as_utc(datetime.fromisoformat(stripped))
    except ValueError:
        raise BadFilterError(f"invalid time {text!r}: expected {TIME_FORMATS_HELP}", option) from None


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Which calls a command works on. All criteria are ANDed; ``None``/empty means "any".

    Parameters:
        tags: ``(key, value)`` pairs the call must all carry.
        model: exact model name as recorded (``calls.model``).
        endpoint: API path below the root, e.g. ``/chat/completions`` (a missing leading ``/`` is added).
        since: calls created at or after this moment (naive datetimes are taken as UTC).
        until: calls created strictly before this moment.
        status: ``"ok"`` (HTTP 2xx/3xx) or ``"error"`` (HTTP >= 400 or no response).
    """

    tags: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    endpoint: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: Status | None = None

    def __post_init__(self) -> None:
        # Normalize once here so that every query binds UTC (SQLite compares datetimes as text).
        if self.since is not None:
            object.__setattr__(self, "since", _as_utc(self.since))
        if self.until is not None:
            object.__setattr__(self, "until", _as_utc(self.until))
        if self.endpoint is not None and not self.endpoint.startswith("/"):
            object.__setattr__(self, "endpoint", "/" + self.endpoint)
        object.__setattr__(self, "tags", tuple((str(k), str(v)) for k, v in self.tags))
        if self.status is not None and self.status not in get_args(Status):
            raise BadFilterError(f"invalid status {self.status!r}: expected ok or error", "--status")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise BadFilterError(
                f"empty time range: since {self.since.isoformat()} is not before until "
                f"{self.until.isoformat()}",
                "--since/--until",
            )

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
        now: datetime | None = None,
    ) -> CallFilter:
        """Build a filter from option text (``--tag k=v``, ``--since 7d``, ...), as the CLI gets it.

        Relative times are resolved against ``now`` (default: the current time), once, so
        ``--since 2h --until 1h`` is a one-hour window. Raises ``BadFilterError`` naming the option.
        """
        reference = _as_utc(now) if now is not None else datetime.now(UTC)
        return cls(
            tags=tuple(parse_tag(text) for text in tags),
            model=model or None,
            endpoint=endpoint or None,
            since=parse_time(since, reference, option="--since") if since else None,
            until=parse_time(until, reference, option="--until") if until else None,
            status=_status(status),
        )

    def is_empty(self) -> bool:
        """True when the filter matches every call."""
        return self == CallFilter()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (set criteria only; tags as ``KEY=VALUE`` strings)."""
        described: dict[str, Any] = {}
        if self.tags:
            described["tags"] = [f"{key}={value}" for key, value in self.tags]
        for name in ("model", "endpoint", "status"):
            if getattr(self, name) is not None:
                described[name] = getattr(self, name)
        for name in ("since", "until"):
            moment: datetime | None = getattr(self, name)
            if moment is not None:
                described[name] = moment.isoformat()
        return described


def _status(text: str | None) -> Status | None:
    if not text:
        return None
    if text == "ok":
        return "ok"
    if text == "error":
        return "error"
    raise BadFilterError(f"invalid status {text!r}: expected ok or error", "--status")


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
        conditions.append(
            sa.exists().where(
                call_tags.c.call_id == calls.c.id,
                call_tags.c.key == key,
                call_tags.c.value == value,
            )
        )
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
