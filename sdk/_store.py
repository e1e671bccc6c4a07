"""The SDK's access to the store: engine setup, the schema check, and batched idempotent inserts.

Only the background writer calls this module, never the app's call path.

Invariants:
- A SQLite store file is created with mode 0600 before SQLite opens it: call bodies are private.
  SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they are 0600 too.
- SQLite runs in WAL mode with a busy timeout, so several processes (gunicorn workers, a CLI next
  to an app) can write one file; each batch is one short write transaction.
- ``insert_batch`` is idempotent: ids are generated client-side, and calls already stored are
  skipped with their tags, so replaying a batch (the spool after a partial failure) inserts
  nothing twice.
- Messages never contain the URL's password (``safe_url``).
- The SDK never creates tables itself: the schema comes from the Alembic migrations only. On SQLite
  the SDK runs them (a local file has one owner and nobody else to run them); on PostgreSQL that
  is the operator's job (``flywheel migrate``) and the SDK only checks.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.sql.dml import Insert

from sdk import _health
from sdk.schema import RawJSON, call_tags, calls

__all__ = [
    "create_store_engine",
    "enable_wal",
    "ensure_schema",
    "insert_batch",
    "prepare_sqlite_file",
    "safe_url",
    "sqlite_file",
]

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5


def safe_url(url: str | URL) -> str:
    """``url`` for messages: the password (also one passed as a query parameter) is masked."""
    try:
        url = sa.make_url(url)
    except Exception:  # unparsable: show nothing of it rather than risk a secret
        return "<unparsable database URL>"
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL opens, or None (not SQLite, in-memory, or a ``file:`` URI)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def prepare_sqlite_file(url: URL) -> None:
    """Create the SQLite file (and its directory) with mode 0600 if it does not exist yet."""
    path = sqlite_file(url)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return
    try:
        # The umask may have taken bits away; the owner must still be able to read and write.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def create_store_engine(url: str) -> Engine:
    """An engine for the store at ``url``, set up for the SDK's background writer.

    SQLite: the file is created 0600 first; each connection gets WAL, a 10 s busy timeout,
    ``synchronous=NORMAL`` (durable across app crashes; a power loss may drop the last batches)
    and foreign keys. PostgreSQL: pre-ping pooled connections, and a 5 s connect timeout so an
    unreachable store fails fast and the writer spools instead of hanging.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        prepare_sqlite_file(parsed)
        engine = sa.create_engine(parsed)
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        if "application_name" not in parsed.query:
            connect_args["application_name"] = "flywheel-sdk"
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: everything after it may have to wait for other processes' locks.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
    enable_wal(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS / 1000)


def enable_wal(dbapi_connection: Any, timeout_s: float) -> None:
    """Switch a sqlite3 connection's database to WAL (a no-op once it is WAL: the mode persists).

    The switch needs the database to itself, and SQLite does not always wait for that through the
    busy handler (several processes opening a new store at once get "database is locked"), so it
    is retried here for up to ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def ensure_schema(engine: Engine) -> bool:
    """Make sure the store has the schema this SDK writes; True when records can be inserted.

    SQLite: a missing or outdated schema is migrated to head right here (processes doing this at
    the same time queue up on the migration lock). PostgreSQL: nothing is changed; a missing or
    outdated schema is logged once (per ``sdk._health.LOG_INTERVAL_S``) with the hint to run
    ``flywheel migrate``, and False tells the writer to spool. A schema newer than this SDK
    ("ahead": the store was migrated by a newer release) is used as is, with one warning.

    Raises ``sqlalchemy.exc.SQLAlchemyError`` only when the store cannot be reached or read.
    """
    from sdk import _migrate

    where = safe_url(engine.url)
    status = _migrate.schema_status(engine)
    if status == "current":
        return True
    if status == "ahead":
        _health.warn_once(
            f"schema-ahead:{where}",
            "flywheel: the store at %s has schema revision %s, newer than this SDK (%s) knows; "
            "recording continues, but upgrade llm-flywheel",
            where,
            _migrate.current_revision(engine),
            _migrate.head_revision(),
        )
        return True
    if engine.dialect.name == "sqlite":
        try:
            _migrate.upgrade(engine.url.render_as_string(hide_password=False))
            status = _migrate.schema_status(engine)
            if status not in ("current", "ahead"):  # e.g. ":memory:": the migration saw another database
                raise RuntimeError(f"the schema is still {status} after the upgrade")
        except Exception as exc:
            _health.count("schema_upgrade_failed")
            _health.log_problem(
                f"schema-upgrade:{where}",
                "flywheel: could not create the flywheel schema in the store at %s (%s: %s); "
                "records are kept in the spool",
                where,
                type(exc).__name__,
                exc,
            )
            return False
        return True
    if status == "missing":
        _health.log_problem(
            f"schema-missing:{where}",
            "flywheel: the store at %s has no flywheel schema; run `flywheel migrate` "
            "(records are kept in the spool until then)",
            where,
        )
    else:
        _health.log_problem(
            f"schema-outdated:{where}",
            "flywheel: the store at %s has schema revision %s but this SDK needs %s; run `flywheel migrate` "
            "(records are kept in the spool until then)",
            where,
            _migrate.current_revision(engine),
            _migrate.head_revision(),
        )
    return False


def _scalar_default(column: sa.Column[Any]) -> Any:
    default = column.default
    return default.arg if isinstance(default, sa.ColumnDefault) and default.is_scalar else None


# Column names of `calls` with the value a missing key gets (the column's Python-side default).
_CALL_COLUMNS: tuple[tuple[str, Any], ...] = tuple(
    (column.name, _scalar_default(column)) for column in calls.columns
)
_CALL_NAMES = [name for name, _ in _CALL_COLUMNS]
_JSON_INDEXES = [index for index, column in enumerate(calls.columns) if isinstance(column.type, RawJSON)]
_KNOWN_KEYS = frozenset(_CALL_NAMES) | {"tags"}

TagRow = tuple[str, str, str]


def insert_batch(engine: Engine, records: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``records`` into ``calls`` and their ``"tags"`` into ``call_tags``, in one transaction.

    Each record is keyed by ``calls`` column name, plus an optional ``"tags"`` mapping of str to
    str. ``request``/``response`` are JSON text; ``created_at`` a UTC datetime (aware, or naive
    meaning UTC). Missing columns get their default (NULL mostly); other keys are ignored with a
    warning.

    Idempotent: a call whose id is already stored is skipped together with its tags, so a batch can
    be replayed (the spool after a partial failure); a repeated id within a batch keeps its first
    record. How, per database (figures in docs/schema.md):

    - PostgreSQL through psycopg: the stored ids are looked up and the new rows streamed with
      ``COPY``, the cheapest way in for the app's process and for the server.
    - SQLite: under the write lock (``BEGIN IMMEDIATE``) the stored ids are looked up and the new
      rows go through the driver's executemany of ``INSERT ... ON CONFLICT DO NOTHING``, with
      values converted by the column types' own SQLAlchemy bind processors (the format SQLAlchemy
      reads back, without its per-row parameter handling).
    - Other drivers: the same lookup, then SQLAlchemy's executemany of the same statements.
    """
    if not records:
        return
    unknown = set().union(*(record.keys() for record in records)) - _KNOWN_KEYS
    if unknown:
        _health.warn_once(
            "store-unknown-keys",
            "flywheel: records carry keys that are not columns of `calls` and are not stored: %s",
            sorted(unknown),
        )
    dialect = engine.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        _insert_by_copy(engine, records)
        return
    with engine.begin() as conn:
        if dialect.name == "sqlite":
            # Take the write lock before reading: a deferred transaction that reads, then writes,
            # fails at once (SQLITE_BUSY_SNAPSHOT) if another process wrote in between.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        new = _new_records(conn, records)
        if not new:
            return
        if dialect.name == "sqlite":
            _insert_sqlite(conn, new)
        else:
            _insert_generic(conn, new)


_ID_LOOKUP_CHUNK = 500  # ids per IN (...): well below any database's bound-parameter limit
_PG_STORED_IDS = sa.select(calls.c.id).where(
    calls.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String(32))))
)


def _new_records(conn: Connection, records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``records`` whose id is not stored yet, the first of each id only."""
    ids = list({record["id"] for record in records})
    seen: set[str] = set()
    if conn.dialect.name == "postgresql":
        # One array parameter: the same statement text (and plan) for any batch size.
        seen.update(conn.execute(_PG_STORED_IDS, {"ids": ids}).scalars())
    elif conn.dialect.name == "sqlite":
        # One JSON array parameter, unpacked by SQLite itself: no per-id parameter handling.
        found = conn.exec_driver_sql(_SQLITE_STORED_IDS, (orjson.dumps(ids).decode(),))
        seen.update(row[0] for row in found)
    else:
        for start in range(0, len(ids), _ID_LOOKUP_CHUNK):
            chunk = ids[start : start + _ID_LOOKUP_CHUNK]
            seen.update(conn.execute(sa.select(calls.c.id).where(calls.c.id.in_(chunk))).scalars())
    new = []
    for record in records:
        if record["id"] not in seen:
            seen.add(record["id"])
            new.append(record)
    return new


def _tag_rows(records: Sequence[Mapping[str, Any]]) -> list[TagRow]:
    return [
        (record["id"], key, value)
        for record in records
        if record.get("tags")
        for key, value in record["tags"].items()
    ]


_SQLITE_STORED_IDS = "SELECT id FROM calls WHERE id IN (SELECT value FROM json_each(?))"
_SQLITE_INSERT_CALLS = (
    f"INSERT INTO calls ({', '.join(_CALL_NAMES)}) VALUES ({', '.join('?' * len(_CALL_NAMES))}) "
    "ON CONFLICT (id) DO NOTHING"
)
_SQLITE_INSERT_TAGS = (
    "INSERT INTO call_tags (call_id, key, value) VALUES (?, ?, ?) ON CONFLICT (call_id, key) DO NOTHING"
)


_ALL_CALL_VALUES = operator.itemgetter(*_CALL_NAMES)
"""A record's values in column order, when it has every column (as ``build_record``'s rows do)."""


def _call_values(record: Mapping[str, Any]) -> list[Any]:
    try:
        return list(_ALL_CALL_VALUES(record))
    except KeyError:  # a partial record (the defaults fill in)
        return [record.get(name, default) for name, default in _CALL_COLUMNS]


def _insert_sqlite(conn: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    processors = _bind_processors(conn.dialect)
    rows = []
    for record in records:
        row = _call_values(record)
        for index, process in processors:
            row[index] = process(row[index])
        rows.append(tuple(row))
    # exec_driver_sql: the driver's executemany as is, with SQLAlchemy's error wrapping kept.
    conn.exec_driver_sql(_SQLITE_INSERT_CALLS, rows)
    tag_rows = _tag_rows(records)
    if tag_rows:
        conn.exec_driver_sql(_SQLITE_INSERT_TAGS, tag_rows)


def _bind_processors(dialect: Dialect) -> list[tuple[int, Callable[[Any], Any]]]:
    """(column index, converter) for the ``calls`` columns whose type converts values on this dialect."""
    cached: list[tuple[int, Callable[[Any], Any]]] | None = getattr(
        dialect, "_flywheel_call_processors", None
    )
    if cached is None:
        cached = []
        for index, column in enumerate(calls.columns):
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                cached.append((index, process))
        dialect._flywheel_call_processors = cached  # type: ignore[attr-defined]
    return cached


@functools.cache
def _upserts(dialect_name: str) -> tuple[Insert, Insert]:
    tag_key = [call_tags.c.call_id, call_tags.c.key]
    if dialect_name == "postgresql":
        return (
            postgresql.insert(calls).on_conflict_do_nothing(index_elements=[calls.c.id]),
            postgresql.insert(call_tags).on_conflict_do_nothing(index_elements=tag_key),
        )
    if dialect_name == "sqlite":
        return (
            sqlite.insert(calls).on_conflict_do_nothing(index_elements=[calls.c.id]),
            sqlite.insert(call_tags).on_conflict_do_nothing(index_elements=tag_key),
        )
    # Other databases: plain INSERT (the id lookup before it keeps replays out).
    return sa.insert(calls), sa.insert(call_tags)


def _insert_generic(conn: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    insert_calls, insert_tags = _upserts(conn.dialect.name)
    if conn.dialect.name == "postgresql":
        call_rows = [dict(zip(_CALL_NAMES, _pg_row(record), strict=True)) for record in records]
    else:
        call_rows = [
            {name: record.get(name, default) for name, default in _CALL_COLUMNS} for record in records
        ]
    conn.execute(insert_calls, call_rows)
    tag_rows = _tag_rows(records)
    if tag_rows:
        conn.execute(
            insert_tags,
            [{"call_id": call_id, "key": key, "value": value} for call_id, key, value in tag_rows],
        )


_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _pg_row(record: Mapping[str, Any]) -> list[Any]:
    """The ``calls`` values of ``record`` in column order, its JSON made acceptable to ``jsonb``.

    ``jsonb`` rejects the escape ``\\u0000``, which a model's output can contain; one such body
    would make every replay of its batch fail, so the escape becomes U+FFFD instead.
    """
    row = _call_values(record)
    for index in _JSON_INDEXES:
        value = row[index]
        if isinstance(value, str) and "\\u0000" in value:
            row[index] = _JSON_NUL_ESCAPE.sub(r"\1\\ufffd", value)
    return row


_PG_COPY_CALLS = f"COPY calls ({', '.join(_CALL_NAMES)}) FROM STDIN"
_PG_COPY_TAGS = "COPY call_tags (call_id, key, value) FROM STDIN"
_PG_UNIQUE_VIOLATION = "23505"
_PG_COPY_ATTEMPTS = 3


def _insert_by_copy(engine: Engine, records: Sequence[Mapping[str, Any]]) -> None:
    """COPY the records whose ids are not stored yet; ``COPY`` has no ON CONFLICT, hence the lookup.

    Another process may store one of the same ids between the lookup and the COPY (two replays
    of one spool): the COPY then fails on the primary key after that process commits, and the
    next attempt's lookup sees its rows.
    """
    for attempt in range(_PG_COPY_ATTEMPTS):
        try:
            with engine.begin() as conn:
                _copy_new_rows(conn, records)
            return
        except Exception as exc:
            sqlstate = getattr(getattr(exc, "orig", exc), "sqlstate", None)
            if sqlstate != _PG_UNIQUE_VIOLATION or attempt == _PG_COPY_ATTEMPTS - 1:
                raise


def _copy_new_rows(conn: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    # COPY parses timestamps as text: a naive created_at must mean UTC, whatever the server's zone.
    conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
    new = _new_records(conn, records)
    if not new:
        return
    with _driver_cursor(conn, _PG_COPY_CALLS) as cursor, cursor.copy(_PG_COPY_CALLS) as copy:
        for record in new:
            copy.write_row(_pg_row(record))
    tag_rows = _tag_rows(new)
    if tag_rows:
        with _driver_cursor(conn, _PG_COPY_TAGS) as cursor, cursor.copy(_PG_COPY_TAGS) as copy:
            for tag in tag_rows:
                copy.write_row(tag)


@contextmanager
def _driver_cursor(conn: Connection, statement: str) -> Iterator[Any]:
    """A DBAPI cursor (for what SQLAlchemy has no API for, like COPY) with SQLAlchemy's error handling.

    Driver errors come out as ``sqlalchemy.exc.DBAPIError`` subclasses, as from ``conn.execute``,
    and a connection found dead is invalidated so the pool does not hand it out again.
    """
    dialect = conn.dialect
    dbapi_connection = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as exc:
        disconnected = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if disconnected:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=dialect,
        ) from exc
    finally:
        if not conn.invalidated:
            cursor.close()
