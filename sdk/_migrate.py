"""Running the store's Alembic migrations from code: ``flywheel migrate``, SQLite auto-upgrade, tests.

The Alembic environment is the repository's top-level ``migrations/``; the wheel ships the same
directory as ``sdk/_migrations`` and ``migrations_dir`` finds whichever exists. The configuration
is built here, in code: no ``alembic.ini`` is needed anywhere.

Invariant: every upgrade or downgrade runs in one transaction that first takes the store's
migration lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock per
schema). Processes that migrate the same store at the same moment therefore queue up: the first
does the work, the others then find nothing left to do. ``migrations/env.py`` takes the lock
through ``locked_connection``, so the plain ``alembic`` command gets it too.

Alembic is imported inside the functions: the SDK imports this module from its background thread
and only needs Alembic when it actually checks or upgrades a schema.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

__all__ = [
    "SchemaStatus",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "locked_connection",
    "migrations_dir",
    "schema_status",
    "upgrade",
]

SchemaStatus = Literal["missing", "outdated", "current", "ahead"]

# Alembic's ``context``/``op`` proxies are module globals: one migration command per process at a time.
_command_lock = threading.RLock()

# How long a second migrating process waits for the first one's SQLite write lock.
SQLITE_MIGRATION_TIMEOUT_S = 60.0


def migrations_dir() -> Path:
    """The Alembic environment: ``sdk/_migrations`` in a wheel, else the checkout's ``migrations/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"flywheel migrations not found: neither {here / '_migrations'} (wheel install) nor "
        f"{here.parent / 'migrations'} (source checkout) contains env.py"
    )


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for the store at ``url``, with no ini file behind it."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Options pass through ConfigParser interpolation: a literal "%" (URL-escaped passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    # A revision's id is its file name: `--rev-id 0002_datasets` makes versions/0002_datasets.py.
    config.set_main_option("file_template", "%%(rev)s")
    return config


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001_initial
        raise RuntimeError(f"no Alembic revisions in {migrations_dir()}")
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the store at ``url`` up to ``revision`` (creating the SQLite file if needed)."""
    from alembic import command

    with _command_lock:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the store at ``url`` down to ``revision`` (``"base"`` drops everything)."""
    from alembic import command

    with _command_lock:
        command.downgrade(alembic_config(url), revision)


def current_revision(url: str | Engine | Connection) -> str | None:
    """The store's revision, or ``None`` when it has no ``alembic_version`` table (or an empty one)."""
    if isinstance(url, str):
        from sdk._store import sqlite_file

        path = sqlite_file(sa.make_url(url))
        if path is not None and not path.exists():
            return None  # reading must not create the file (SQLite would, with the process umask)
    with _connection(url) as conn:
        return _migration_context(conn).get_current_revision()


def schema_status(engine_or_url: str | Engine | Connection) -> SchemaStatus:
    """Compare the store's revision with this code's head.

    ``missing``: no flywheel schema; ``outdated``: an older revision this code can upgrade;
    ``current``: at head; ``ahead``: a revision this code does not know (a newer release migrated it).
    """
    current = current_revision(engine_or_url)
    if current is None:
        return "missing"
    if current == head_revision():
        return "current"
    from alembic.util import CommandError

    try:
        known = _script().get_revision(current) is not None
    except CommandError:  # ResolutionError and friends: a revision id we have never seen
        known = False
    return "outdated" if known else "ahead"


_PG_MIGRATION_LOCK = sa.text(
    "SELECT pg_advisory_xact_lock(hashtext('flywheel-migrate:' || current_schema()))"
)


@contextmanager
def locked_connection(url: str | URL) -> Iterator[Connection]:
    """A connection inside a transaction that holds the store's migration lock; commits on exit.

    SQLite: the driver is put in autocommit mode so that ``BEGIN IMMEDIATE`` (which takes the
    database's write lock, waiting up to ``SQLITE_MIGRATION_TIMEOUT_S``) starts the transaction and
    all DDL runs inside it. Foreign keys are off on this connection, because Alembic's batch mode
    rebuilds tables by dropping them, and a drop with foreign keys on would cascade-delete rows.
    PostgreSQL: DDL is transactional already; an advisory lock keyed on the current schema makes
    concurrent migrations of one schema wait for each other.
    """
    from sdk._store import prepare_sqlite_file

    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        prepare_sqlite_file(url)
        engine = sa.create_engine(
            url,
            poolclass=sa.NullPool,
            connect_args={"isolation_level": None, "timeout": SQLITE_MIGRATION_TIMEOUT_S},
        )
        sa.event.listen(engine, "connect", _configure_sqlite_migration_connection)
    else:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(_PG_MIGRATION_LOCK)
            yield conn
    finally:
        engine.dispose()


def _configure_sqlite_migration_connection(dbapi_connection: Any, _record: Any) -> None:
    from sdk._store import enable_wal

    dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    enable_wal(dbapi_connection, SQLITE_MIGRATION_TIMEOUT_S)  # persistent: the store is WAL from the start


@contextmanager
def _connection(target: str | Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    if isinstance(target, Engine):
        with target.connect() as conn:
            yield conn
        return
    engine = sa.create_engine(target, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _migration_context(conn: Connection) -> MigrationContext:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn)
