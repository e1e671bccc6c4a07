"""Shared by the benchmarks: a store of the run's own, SQLite in a temporary directory or a
PostgreSQL database created on the local server (127.0.0.1:5432) and dropped afterwards, and the
child process each measurement runs in (so that its peak RSS is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def run_child(script: str, store: str, *args: str) -> dict[str, Any] | None:
    """Run ``script --child STORE ARGS`` in a new interpreter; its last line of output, as JSON.

    ``None`` (after printing the child's stderr) when it failed.
    """
    done = subprocess.run(
        [sys.executable, script, "--child", store, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
