"""The SDK's store access (``sdk._store``) on real SQLite files and PostgreSQL schemas.

File modes and pragmas, batched inserts and their replay, several processes on one SQLite file,
the schema check on each database, and that no message ever shows the URL's password.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from conftest import pg_schema_url

from sdk import _health, _migrate
from sdk._store import _insert_generic, create_store_engine, ensure_schema, insert_batch, safe_url
from sdk.schema import call_tags, calls

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_health() -> Iterator[None]:
    """``log_problem`` is rate-limited per kind for the whole process: start each test clean."""
    _health._reset_for_tests()
    yield
    _health._reset_for_tests()


@pytest.fixture
def store(db_url: str) -> Iterator[sa.Engine]:
    """A store engine on an empty database at the current schema."""
    _migrate.upgrade(db_url)
    engine = create_store_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_database_url: str) -> str:
    """An empty PostgreSQL schema (for what only PostgreSQL does)."""
    return pg_schema_url(pg_database_url)


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[sa.Engine]:
    _migrate.upgrade(pg_url)
    engine = create_store_engine(pg_url)
    yield engine
    engine.dispose()


def record(n: int, **overrides: Any) -> dict[str, Any]:
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"question {n} " + "x" * 2000}],
    }
    response = {
        "choices": [{"message": {"role": "assistant", "content": f"answer {n}"}, "finish_reason": "stop"}]
    }
    row: dict[str, Any] = {
        "id": f"{n:032x}",
        "created_at": T0 + timedelta(seconds=n),
        "method": "POST",
        "base_url": "https://api.openai.com/v1",
        "endpoint": "/chat/completions",
        "model": "gpt-4o-mini",
        "request": orjson.dumps(request).decode(),
        "response": orjson.dumps(response).decode(),
        "status_code": 200,
        "error": None,
        "stream": n % 2 == 1,
        "complete": True,
        "attempt": 0,
        "latency_ms": 100.0 + n,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "cost_usd": 0.00001,
        "request_id": f"req_{n}",
        "input_hash": f"{n:064x}",
        "tags": {"prompt_id": "qa", "n": str(n)},
    }
    row.update(overrides)
    return row


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        n_calls = conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar_one()
        n_tags = conn.execute(sa.select(sa.func.count()).select_from(call_tags)).scalar_one()
    return n_calls, n_tags


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- SQLite engine ---------------------------------------------------------------------------------


def test_sqlite_file_and_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "store.db"
    url = f"sqlite:///{path}"
    old_umask = os.umask(0)  # the most permissive umask: 0600 must not come from it
    try:
        engine = create_store_engine(url)
        assert mode(path) == 0o600, "created before SQLite ever opened it"
        try:
            assert ensure_schema(engine)
            with engine.connect() as conn:  # an open connection keeps -wal and -shm around
                insert_batch(engine, [record(1)])
                conn.execute(sa.text("SELECT 1"))
                for suffix in ("", "-wal", "-shm"):
                    assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
        finally:
            engine.dispose()
    finally:
        os.umask(old_umask)


def test_existing_sqlite_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    create_store_engine(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o640


def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert pragma == {"journal_mode": "wal", "busy_timeout": 10000, "synchronous": 1, "foreign_keys": 1}


def test_postgresql_engine_fails_fast_when_unreachable() -> None:
    engine = create_store_engine("postgresql+psycopg://flywheel:pw@127.0.0.1:1/none")
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError):
            ensure_schema(engine)
    finally:
        engine.dispose()
    assert time.monotonic() - started < 10


# -- insert_batch ----------------------------------------------------------------------------------


def test_insert_batch_writes_calls_and_tags(store: sa.Engine) -> None:
    batch = [record(n) for n in range(1, 6)]
    insert_batch(store, batch)
    assert counts(store) == (5, 10)
    with store.connect() as conn:
        rows = conn.execute(sa.select(calls).order_by(calls.c.id)).mappings().all()
        tags = conn.execute(sa.select(call_tags).where(call_tags.c.call_id == f"{3:032x}")).all()
    first = rows[0]
    assert orjson.loads(first["request"]) == orjson.loads(batch[0]["request"])
    assert orjson.loads(first["response"])["choices"][0]["message"]["content"] == "answer 1"
    assert first["stream"] is True and rows[1]["stream"] is False
    assert first["created_at"].replace(tzinfo=UTC) == T0 + timedelta(seconds=1)
    assert first["latency_ms"] == 101.0
    assert sorted((key, value) for _, key, value in tags) == [("n", "3"), ("prompt_id", "qa")]


def test_replaying_a_batch_is_a_no_op(store: sa.Engine) -> None:
    batch = [record(n) for n in range(1, 4)]
    insert_batch(store, batch)
    insert_batch(store, batch)
    assert counts(store) == (3, 6)
    # A replay that overlaps: stored rows stay as they are, new ones are added.
    changed = record(2, model="something-else", tags={"prompt_id": "changed", "extra": "1"})
    insert_batch(store, [changed, record(4)])
    assert counts(store) == (4, 8)
    with store.connect() as conn:
        assert (
            conn.execute(sa.select(calls.c.model).where(calls.c.id == changed["id"])).scalar_one()
            == "gpt-4o-mini"
        )


def test_repeated_id_within_a_batch_keeps_the_first(store: sa.Engine) -> None:
    insert_batch(store, [record(1, model="first"), record(1, model="second")])
    with store.connect() as conn:
        assert conn.execute(sa.select(calls.c.model)).scalars().all() == ["first"]


def test_missing_columns_get_defaults_and_unknown_keys_warn(
    store: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    minimal = {"id": "f" * 32, "created_at": T0, "method": "GET", "endpoint": "/models", "bogus": 1}
    with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
        insert_batch(store, [minimal])
    assert "bogus" in caplog.text
    with store.connect() as conn:
        row = conn.execute(sa.select(calls)).mappings().one()
    assert (row["stream"], row["complete"], row["attempt"], row["request"], row["model"]) == (
        False,
        True,
        0,
        None,
        None,
    )
    assert counts(store) == (1, 0)


def test_json_bodies_come_back_as_json_text(store: sa.Engine) -> None:
    bodies = ['"just a string"', "null", "[1, 2]", '{"a": "x\\u0000y", "b": "\\\\u0000"}']
    insert_batch(store, [record(n, response=body) for n, body in enumerate(bodies, 1)])
    with store.connect() as conn:
        stored = conn.execute(sa.select(calls.c.response).order_by(calls.c.id)).scalars().all()
    parsed = [orjson.loads(text) for text in stored]
    assert parsed[:3] == ["just a string", None, [1, 2]]
    # jsonb cannot hold U+0000: PostgreSQL gets U+FFFD; an escaped backslash before "u0000" is kept.
    nul = "\ufffd" if store.dialect.name == "postgresql" else "\x00"
    assert parsed[3] == {"a": f"x{nul}y", "b": "\\u0000"}


def test_invalid_json_on_postgresql_is_a_data_error(pg_store: sa.Engine) -> None:
    """Driver errors come out as SQLAlchemy's, like from conn.execute (the writer classifies them)."""
    with pytest.raises(sa.exc.DataError):
        insert_batch(pg_store, [record(1, response="<html>502 Bad Gateway</html>")])
    insert_batch(pg_store, [record(2)])  # the connection is still good
    assert counts(pg_store) == (1, 2)


def test_generic_insert_path(store: sa.Engine) -> None:
    """The SQLAlchemy executemany path (drivers other than sqlite3 and psycopg)."""
    with store.begin() as conn:
        _insert_generic(conn, [record(n) for n in range(1, 4)])
    with store.begin() as conn:  # no lookup here: ON CONFLICT DO NOTHING alone keeps it idempotent
        _insert_generic(conn, [record(n) for n in range(1, 5)])
    assert counts(store) == (4, 8)


def test_postgresql_store_survives_a_dropped_connection(pg_store: sa.Engine) -> None:
    store = pg_store
    insert_batch(store, [record(1)])
    with store.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    admin = sa.create_engine(store.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()
    insert_batch(store, [record(2)])  # pool_pre_ping replaces the dead connection
    assert counts(store) == (2, 4)


def test_naive_created_at_means_utc(store: sa.Engine) -> None:
    insert_batch(store, [record(1, created_at=datetime(2024, 6, 1, 12, 0))])
    with store.connect() as conn:
        stored = conn.execute(sa.select(calls.c.created_at)).scalar_one()
    assert stored.replace(tzinfo=stored.tzinfo or UTC) == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from sdk._store import create_store_engine, ensure_schema, insert_batch

    url, worker, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    time.sleep(max(0.0, start_at - time.time()))
    engine = create_store_engine(url)
    assert ensure_schema(engine), "schema not usable"
    for batch in range(20):
        rows = [
            {"id": f"{worker:08x}{batch:08x}{n:016x}", "created_at": datetime.now(UTC), "method": "POST",
             "endpoint": "/chat/completions", "request": '{"n": %d}' % n, "tags": {"worker": str(worker)}}
            for n in range(100)
        ]
        insert_batch(engine, rows)
    engine.dispose()
    """
)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    """Both start on a file with no schema: one migrates, the other waits; then both write."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    start_at = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, str(worker), str(start_at)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    engine = sa.create_engine(url)
    try:
        assert counts(engine) == (4000, 4000)
        assert _migrate.schema_status(engine) == "current"
    finally:
        engine.dispose()


# -- ensure_schema ---------------------------------------------------------------------------------


def test_ensure_schema_creates_the_sqlite_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_store_engine(url)
    try:
        assert ensure_schema(engine) is True
        assert _migrate.schema_status(engine) == "current"
        assert ensure_schema(engine) is True
    finally:
        engine.dispose()


def _with_password(url: str, password: str) -> str:
    return sa.make_url(url).set(password=password).render_as_string(hide_password=False)


def test_ensure_schema_on_empty_postgresql_asks_for_flywheel_migrate(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55word"
    url = _with_password(pg_url, secret)  # trust auth: accepted and ignored by the server
    engine = create_store_engine(url)
    try:
        with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
            assert ensure_schema(engine) is False
            assert ensure_schema(engine) is False  # logged once, not on every retry
        assert sa.inspect(engine).get_table_names() == [], "the SDK never creates tables on PostgreSQL"
    finally:
        engine.dispose()
    messages = [r.getMessage() for r in caplog.records if r.name == "flywheel.sdk"]
    assert len(messages) == 1, messages
    assert "has no flywheel schema; run `flywheel migrate`" in messages[0]
    assert safe_url(url) in messages[0]
    assert secret not in caplog.text


def test_ensure_schema_on_migrated_postgresql(db_url: str) -> None:
    _migrate.upgrade(db_url)
    engine = create_store_engine(db_url)
    try:
        assert ensure_schema(engine) is True
    finally:
        engine.dispose()


def test_ensure_schema_outdated_postgresql_names_both_revisions(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _migrate.upgrade(pg_url)
    stored = _migrate.head_revision()
    monkeypatch.setattr(_migrate, "head_revision", lambda: "9999_next")
    engine = create_store_engine(pg_url)
    try:
        with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
            assert ensure_schema(engine) is False
    finally:
        engine.dispose()
    assert stored in caplog.text and "9999_next" in caplog.text and "flywheel migrate" in caplog.text


def test_ensure_schema_accepts_a_newer_schema_with_a_warning(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _migrate.upgrade(db_url)
    engine = create_store_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
        with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
            assert ensure_schema(engine) is True
    finally:
        engine.dispose()
    assert "0099_future" in caplog.text


def test_sqlite_upgrade_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:  # tables without an alembic_version: the migration collides
            conn.execute(sa.text("CREATE TABLE calls (id TEXT)"))
        with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
            assert ensure_schema(engine) is False
    finally:
        engine.dispose()
    assert "could not create the flywheel schema" in caplog.text
    assert str(path) in caplog.text


# -- safe_url --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://app:hunter2@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        (
            "postgresql+psycopg://app@db/x?password=hunter2",
            "postgresql+psycopg://app@db/x?password=%2A%2A%2A",
        ),
        ("sqlite:///flywheel.db", "sqlite:///flywheel.db"),
        ("not a url", "<unparsable database URL>"),
    ],
)
def test_safe_url_hides_passwords(url: str, shown: str) -> None:
    assert safe_url(url) == shown
    assert "hunter2" not in safe_url(url)
