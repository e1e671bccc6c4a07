"""Shared fixtures: real databases (SQLite file, PostgreSQL schema) and a real loopback mock server.

PostgreSQL: each test session creates its own database on 127.0.0.1:5432 and each test gets its own
schema in it (via ``search_path``), so runs never see each other's rows. Under ``CI=true`` a missing
PostgreSQL server is an error, never a skip.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_SERVER_URL = os.environ.get("FLYWHEEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "no server here"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, dropped at the end."""
    problem = _pg_reachable()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    name = f"flywheel_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_SERVER_URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_schema_url(database_url: str) -> str:
    """Create a fresh schema in the session database; return a URL whose search_path is that schema."""
    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = sa.make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return pg_schema_url(request.getfixturevalue("pg_database_url"))


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may write a store or spool into the working directory."""
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", f"sqlite:///{tmp_path / 'default.db'}")
    monkeypatch.setenv("FLYWHEEL_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("FLYWHEEL_DISABLED", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(autouse=True)
def _garbage_collected_after_each_client_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A connection a test leaves open is closed by the garbage collector, with a ResourceWarning
    (an error here); collecting after each test that talks to the mock server puts that warning in
    the test that left it, under its own warning filters, not in whichever test happens to run when
    the collector does. (After every test, the collections cost the suite about 100 s.)"""
    yield
    if "mock_server" in request.fixturenames:
        gc.collect()


@pytest.fixture(scope="session")
def mock_server() -> Iterator[object]:
    """The OpenAI-compatible mock server on 127.0.0.1, shared by the whole session.

    ``mock_server.base_url`` is ``http://127.0.0.1:PORT/v1``.
    """
    from flywheel.mock_server import MockServer

    with MockServer() as server:
        yield server
