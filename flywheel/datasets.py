"""Named, versioned datasets: which recorded calls a training set is made of, and how it changed.

A dataset is a filter (``CallFilter``) plus the calls it has taken in. ``create_dataset`` makes
one and takes in every matching call; ``update_dataset`` takes in the calls that matched since
(re-resolving relative times such as ``--since 30d`` against the current time). Entries are
chat completions that got an answer (HTTP 2xx, read to the end): the calls a fine-tuning example
can be made of.

Invariants:
- Entries are never deleted and outputs never overwritten. What a step changes is tagged with the
  version it makes (``dataset_versions``): entries it adds (``added_in``) or takes out
  (``removed_in``), outputs it makes (``entry_outputs.version``), so the dataset as of any version
  can be rebuilt (``entries_at``, ``current_output_id``). The two columns a step sets afterwards,
  ``cluster_key`` and ``first_exported_in``, are set once, never changed. A step that changes
  nothing makes no version.
- Selection runs in the database (``INSERT ... SELECT`` with the filter's bound conditions), so
  taking in a million calls neither reads them into Python nor holds them in memory.
- Each step is one transaction: it is there whole, or not at all. On SQLite it takes the write
  lock first, so an SDK writing to the same file cannot make it fail half-way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, FromClause

from sdk.schema import call_tags, calls, dataset_entries, dataset_versions, datasets, entry_outputs

from .errors import StoreError, UsageError
from .query import CallFilter, as_utc, connect, filter_conditions

__all__ = [
    "NAME_PATTERN",
    "AddResult",
    "DatasetInfo",
    "DatasetVersion",
    "NotFoundError",
    "Progress",
    "count_entries",
    "count_new_calls",
    "create_dataset",
    "current_output_id",
    "entries_at",
    "entries_with_outputs",
    "get_dataset",
    "insert_skipping_existing",
    "list_datasets",
    "record_version",
    "require_dataset",
    "save_setting",
    "step_time",
    "store_transaction",
    "trainable_conditions",
    "update_dataset",
    "write_transaction",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Dataset names: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit."""

CHAT_ENDPOINT = "/chat/completions"
ANALYZE_FROM = 10_000
"""New entries from which ``dataset create``/``update`` refresh PostgreSQL's statistics of the table."""
TEACHER_TAG = "flywheel_relabel"
"""The tag on the calls ``flywheel relabel`` makes: never taken into a dataset."""
EVAL_TAG = "flywheel_eval"
"""Tag of every call an evaluation makes (candidates and judge): ``flywheel_eval=<run id>``."""
FLYWHEEL_CALL_TAGS = (TEACHER_TAG, EVAL_TAG)
"""Calls the flywheel makes itself; they never become training data."""


class NotFoundError(UsageError):
    """No dataset of that name; ``where`` is the name."""


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One change to a dataset: what made it and what it did."""

    version: int
    created_at: datetime
    action: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "action": self.action,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A dataset as stored: its filter and rules, newest version, entry counts at that version."""

    id: int
    name: str
    created_at: datetime
    filter: CallFilter
    settings: dict[str, Any]
    version: int
    entries: int
    """Entries in the dataset at its newest version (removed ones not counted)."""
    removed: int = 0
    """Entries taken out by a step (dedup) up to the newest version."""
    history: list[DatasetVersion] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "version": self.version,
            "entries": self.entries,
            "removed": self.removed,
            "filter": self.filter.as_dict(),
            "settings": self.settings,
        }
        if self.history:
            described["history"] = [version.as_dict() for version in self.history]
        return described


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``create_dataset``/``update_dataset`` did."""

    dataset: DatasetInfo
    added: int
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return {**self.dataset.as_dict(), "added": self.added, "created": self.created}


# --- the library functions the CLI calls ---------------------------------------------------------


def create_dataset(
    database_url: str,
    name: str,
    call_filter: CallFilter,
    *,
    now: datetime | None = None,
) -> AddResult:
    """Create dataset ``name`` over the calls ``call_filter`` selects, and take them all in.

    Creating a dataset that exists with the same filter is the same as ``update_dataset`` (so a
    pipeline can run ``create`` every time); with another filter it is a ``UsageError``.
    """
    _check_name(name)
    moment = step_time(now)
    with store_transaction(database_url) as conn:
        existing = _dataset_row(conn, name)
        if existing is not None:
            stored = CallFilter.model_validate(_json(existing.filter))
            if stored.refreshed(moment) != call_filter.refreshed(moment):
                raise UsageError(
                    f"dataset {name!r} exists with another filter ({_describe(stored)}); "
                    f"use 'flywheel dataset update {name}' or another name",
                    name,
                )
            added = _take_in(conn, existing.id, existing.version, stored.refreshed(moment), moment, "update")
            return AddResult(_info(conn, name), added, created=False)
        conn.execute(
            sa.insert(datasets).values(
                name=name,
                created_at=moment,
                filter=_dumps(call_filter.model_dump(mode="json", exclude_defaults=True)),
                settings=_dumps({}),
                version=0,
            )
        )
        dataset_id = require_dataset(conn, name).id
        added = _take_in(conn, dataset_id, 0, call_filter, moment, "create", always=True)
        return AddResult(_info(conn, name), added, created=True)


def update_dataset(database_url: str, name: str, *, now: datetime | None = None) -> AddResult:
    """Take into dataset ``name`` the calls that match its filter and are not in it yet.

    Relative times in the filter (``--since 30d``) are resolved again against ``now`` (default: the
    clock). Existing entries are not touched; if nothing is new, no version is made.
    """
    moment = step_time(now)
    with store_transaction(database_url) as conn:
        row = require_dataset(conn, name)
        stored = CallFilter.model_validate(_json(row.filter))
        added = _take_in(conn, row.id, row.version, stored.refreshed(moment), moment, "update")
        return AddResult(_info(conn, name), added, created=False)


def list_datasets(database_url: str) -> list[DatasetInfo]:
    """Every dataset, by name, with its entry counts at its newest version."""
    with connect(database_url) as conn:
        names = conn.execute(sa.select(datasets.c.name).order_by(datasets.c.name)).scalars().all()
        return [_info(conn, name) for name in names]


def get_dataset(database_url: str, name: str, *, history: bool = True) -> DatasetInfo:
    """Dataset ``name`` with (``history=True``) every version it went through, oldest first."""
    with connect(database_url) as conn:
        require_dataset(conn, name)
        return _info(conn, name, with_history=history)


# --- building blocks for the steps (dedup, relabel, export, ...) ---------------------------------


@contextmanager
def store_transaction(database_url: str) -> Iterator[Connection]:
    """A connection to the migrated store inside one write transaction, committed on success."""
    with connect(database_url) as conn, write_transaction(conn):
        yield conn


@contextmanager
def write_transaction(conn: Connection) -> Iterator[None]:
    """Run the block as one transaction; on SQLite, holding the write lock from the start.

    A deferred SQLite transaction that reads and then writes fails at once if another process
    (the SDK's writer) wrote in between; ``BEGIN IMMEDIATE`` waits for the lock instead.
    """
    if conn.in_transaction():
        conn.commit()  # end the read transaction the schema check opened
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def insert_skipping_existing(conn: Connection, table: sa.Table, unique: Sequence[str]) -> Any:
    """An insert into ``table`` that skips rows whose ``unique`` columns another writer stored
    first (``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL alike)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(unique))


def record_version(
    conn: Connection, dataset_id: int, version: int, action: str, details: Mapping[str, Any], moment: datetime
) -> None:
    """Record ``version`` of a dataset (made by ``action``) and make it the dataset's newest."""
    conn.execute(
        sa.insert(dataset_versions).values(
            dataset_id=dataset_id, version=version, created_at=moment, action=action, details=_dumps(details)
        )
    )
    conn.execute(sa.update(datasets).where(datasets.c.id == dataset_id).values(version=version))


def entries_at(dataset_id: int, version: int) -> ColumnElement[bool]:
    """The condition on ``dataset_entries`` for the entries the dataset held at ``version``."""
    e = dataset_entries.c
    return sa.and_(
        e.dataset_id == dataset_id,
        e.added_in <= version,
        sa.or_(e.removed_in.is_(None), e.removed_in > version),
    )


def current_output_id(version: int) -> ColumnElement[Any]:
    """The id of an entry's current ``entry_outputs`` row at ``version`` (a subquery correlated to
    ``dataset_entries``; NULL when the entry still has the call's own output).

    Current means made by the newest version, and within one version the newest row: a review
    imported (version N+2) while a relabel run still writes into its own version N+1 stays current.
    """
    later = entry_outputs.alias("later")
    return (
        sa.select(later.c.id)
        .where(later.c.entry_id == dataset_entries.c.id, later.c.version <= version)
        .order_by(later.c.version.desc(), later.c.id.desc())
        .limit(1)
        .correlate(dataset_entries)
        .scalar_subquery()
    )


def entries_with_outputs(version: int) -> FromClause:
    """``dataset_entries`` joined with their calls and, where there is one, their current output at
    ``version`` (``entry_outputs`` columns are NULL for an entry that keeps its call's output)."""
    return dataset_entries.join(calls, calls.c.id == dataset_entries.c.call_id).outerjoin(
        entry_outputs, entry_outputs.c.id == current_output_id(version)
    )


def save_setting(
    conn: Connection, dataset_id: int, settings: Mapping[str, Any], key: str, value: Any
) -> None:
    """Store ``settings`` (the dataset's, as read) with ``key`` set to ``value``."""
    changed = {**settings, key: value}
    conn.execute(sa.update(datasets).where(datasets.c.id == dataset_id).values(settings=_dumps(changed)))


def step_time(now: datetime | None = None) -> datetime:
    """When a step happens, in UTC: ``now`` if given (naive means UTC), else the clock."""
    return as_utc(now) if now is not None else datetime.now(UTC)


Progress = Callable[[int, int], None]
"""``progress(done, total)``: how far a step over a dataset's entries has got (called every batch)."""


def count_entries(conn: Connection, dataset_id: int, version: int) -> int:
    """How many entries the dataset holds at ``version``."""
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(dataset_entries).where(entries_at(dataset_id, version))
        ).scalar_one()
    )


def count_new_calls(conn: Connection, dataset_id: int | None, call_filter: CallFilter) -> int:
    """How many calls ``call_filter`` selects that an update would take in (all, with no dataset)."""
    conditions = [*filter_conditions(call_filter), *trainable_conditions()]
    if dataset_id is not None:
        conditions.append(
            ~sa.exists().where(
                dataset_entries.c.dataset_id == dataset_id, dataset_entries.c.call_id == calls.c.id
            )
        )
    return int(conn.execute(sa.select(sa.func.count()).select_from(calls).where(*conditions)).scalar_one())


# --- internals -------------------------------------------------------------------------------------


def _take_in(
    conn: Connection,
    dataset_id: int,
    version: int,
    call_filter: CallFilter,
    moment: datetime,
    action: str,
    *,
    always: bool = False,
) -> int:
    """Add the calls ``call_filter`` selects that the dataset does not hold yet, as version + 1."""
    new_version = version + 1
    already = sa.exists().where(
        dataset_entries.c.dataset_id == dataset_id, dataset_entries.c.call_id == calls.c.id
    )
    selected = (
        sa.select(
            sa.literal(dataset_id, sa.Integer),
            calls.c.id,
            sa.literal(new_version, sa.Integer),
        )
        .where(
            *filter_conditions(call_filter),
            *trainable_conditions(),
            ~already,
        )
        .order_by(calls.c.id)
    )
    conn.execute(sa.insert(dataset_entries).from_select(["dataset_id", "call_id", "added_in"], selected))
    # Counted, not taken from rowcount: drivers disagree on it for INSERT ... SELECT.
    added = conn.execute(
        sa.select(sa.func.count()).where(
            dataset_entries.c.dataset_id == dataset_id, dataset_entries.c.added_in == new_version
        )
    ).scalar_one()
    if added >= ANALYZE_FROM and conn.dialect.name == "postgresql":
        # Fresh statistics, or the planner takes the table for the few rows it last saw and sorts
        # a million entries with their bodies on disk where an index walk would stream them.
        conn.execute(sa.text("ANALYZE dataset_entries"))
    if added or always:
        details = {"added": added, "filter": call_filter.as_dict()}
        record_version(conn, dataset_id, new_version, action, details, moment)
    return added


def trainable_conditions() -> list[ColumnElement[bool]]:
    """Calls a fine-tuning example can be made of: answered chat completions, read to the end, that
    the app made (not the flywheel's own teacher and evaluation calls, ``FLYWHEEL_CALL_TAGS``)."""
    return [
        calls.c.endpoint == CHAT_ENDPOINT,
        calls.c.status_code.between(200, 299),
        calls.c.complete.is_(True),
        calls.c.response.is_not(None),
        ~sa.exists().where(call_tags.c.call_id == calls.c.id, call_tags.c.key.in_(FLYWHEEL_CALL_TAGS)),
    ]


def _info(conn: Connection, name: str, *, with_history: bool = False) -> DatasetInfo:
    row = require_dataset(conn, name)
    e = dataset_entries.c
    counts = conn.execute(
        sa.select(
            sa.func.count().filter(e.removed_in.is_(None)),
            sa.func.count().filter(e.removed_in.is_not(None)),
        ).where(e.dataset_id == row.id)
    ).one()
    history: list[DatasetVersion] = []
    if with_history:
        v = dataset_versions.c
        for version, created_at, action, details in conn.execute(
            sa.select(v.version, v.created_at, v.action, v.details)
            .where(v.dataset_id == row.id)
            .order_by(v.version)
        ):
            history.append(DatasetVersion(version, as_utc(created_at), action, _json(details)))
    return DatasetInfo(
        id=row.id,
        name=row.name,
        created_at=as_utc(row.created_at),
        filter=CallFilter.model_validate(_json(row.filter)),
        settings=_json(row.settings),
        version=row.version,
        entries=int(counts[0]),
        removed=int(counts[1]),
        history=history,
    )


def _dataset_row(conn: Connection, name: str) -> sa.Row[Any] | None:
    return conn.execute(sa.select(datasets).where(datasets.c.name == name)).one_or_none()


def require_dataset(conn: Connection, name: str) -> sa.Row[Any]:
    """The ``datasets`` row of ``name``; ``NotFoundError`` (naming the known ones) if none."""
    row = _dataset_row(conn, name)
    if row is None:
        known = conn.execute(sa.select(datasets.c.name).order_by(datasets.c.name).limit(20)).scalars().all()
        hint = f"known: {', '.join(known)}" if known else "there are none yet; see 'flywheel dataset create'"
        raise NotFoundError(f"no dataset named {name!r} ({hint})", name)
    return row


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid dataset name {name!r}: use up to 200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "NAME",
        )


def _describe(call_filter: CallFilter) -> str:
    described = call_filter.as_dict()
    for name in ("since", "until"):
        if f"{name}_relative" in described:  # "since 30d" says more than the moment it meant then
            described.pop(name)
    return orjson.dumps(described).decode() if described else "every call"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json(value: Any) -> Any:
    """A JSON column's value: text on both databases (``RawJSON`` reads jsonb back as text)."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"a JSON column holds invalid JSON: {exc}") from None
    return value
