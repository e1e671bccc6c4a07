"""The SDK's access to the store: engine setup, the schema check, and batched idempotent inserts.

Only the background writer calls this module, never the app's call path.

Invariants:
- A SQLite store file is created with mode 0600 before SQLite opens it: call bodies are private.
  SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they are 0600 too.
- SQLite runs in WAL mode with a busy timeout, so several processes (gunicorn workers, a CLI next
  to an app) can write one file; each batch is one short write transaction.
- ``insert_batch`` is idempotent: ids are generated client-side, and ``INSERT ... ON CONFLICT DO
  NOTHING`` makes replaying a batch (the spool after a partial failure) insert nothing twice.
- Messages never contain the URL's password (``safe_url``).
- The SDK never creates tables itself: the schema comes from the Alembic migrations only. On SQLite
  the SDK runs them (a local file has one owner and nobody else to run them); on PostgreSQL that
  is the operator's job (``flywheel migrate``) and the SDK only checks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.sql.dml import Insert

from sdk import _health
from sdk.schema import call_tags, calls

__all__ = [
    "create_store_engine",
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
        # busy_timeout first: switching to WAL has to wait for other processes' locks too.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


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
        return _migrate.schema_status(engine) in ("current", "ahead")
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


# Column names of `calls` with the value a missing key gets (the column's Python-side default).
_CALL_COLUMNS: tuple[tuple[str, Any], ...] = tuple(
    (column.name, column.default.arg if column.default is not None and column.default.is_scalar else None)
    for column in calls.columns
)
_KNOWN_KEYS = frozenset(name for name, _ in _CALL_COLUMNS) | {"tags"}


@functools.cache
def _inserts(dialect_name: str) -> tuple[Insert, Insert]:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # other databases: plain INSERT, so a replayed batch fails on the duplicate ids
        return sa.insert(calls), sa.insert(call_tags)
    return (
        insert(calls).on_conflict_do_nothing(index_elements=[calls.c.id]),
        insert(call_tags).on_conflict_do_nothing(index_elements=[call_tags.c.call_id, call_tags.c.key]),
    )


def insert_batch(engine: Engine, records: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``records`` into ``calls`` and their ``"tags"`` dicts into ``call_tags``, in one transaction.

    Each record is keyed by ``calls`` column name (``request``/``response`` as JSON text), plus an
    optional ``"tags"`` mapping of str to str. Missing columns get their default (NULL mostly).
    Rows whose id (or call id and key) is already stored are skipped, so a batch can be replayed.
    """
    if not records:
        return
    call_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    for record in records:
        call_rows.append({name: record.get(name, default) for name, default in _CALL_COLUMNS})
        tags = record.get("tags")
        if tags:
            call_id = record["id"]
            tag_rows.extend({"call_id": call_id, "key": key, "value": value} for key, value in tags.items())
        if record.keys() - _KNOWN_KEYS:
            _health.warn_once(
                "store-unknown-keys",
                "flywheel: records carry keys that are not columns of `calls` and are not stored: %s",
                sorted(record.keys() - _KNOWN_KEYS),
            )
    insert_calls, insert_tags = _inserts(engine.dialect.name)
    with engine.begin() as conn:
        conn.execute(insert_calls, call_rows)
        if tag_rows:
            conn.execute(insert_tags, tag_rows)
