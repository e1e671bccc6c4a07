"""Shared by the benchmarks: a store of the run's own, SQLite in a temporary directory or a
PostgreSQL database created on the local server (127.0.0.1:5432) and dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

PG_SERVER_URL = os.environ.get("FLYWHEEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_store(store: str, directory: Path) -> Iterator[str]:
    """The URL of an empty store: ``store`` is ``sqlite`` (a file in ``directory``) or ``postgresql``."""
    if store == "sqlite":
        yield f"sqlite:///{directory}/bench.db"
        return
    name = f"flywheel_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
