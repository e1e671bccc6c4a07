"""The Alembic migrations against the one schema definition, on real SQLite and PostgreSQL.

- ``upgrade head`` on an empty store gives exactly ``sdk.schema.metadata`` (Alembic's own
  comparison, types included) and exactly ``sdk.schema.SQL_VIEWS``.
- The views answer sensibly for real rows; downgrade and upgrade again work.
- The example SQL in docs/schema.md runs on both databases (so the docs stay true).
- (slow) A built wheel carries the migrations and runs them from a non-editable install.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql

from flywheel.datasets import create_dataset
from flywheel.query import CallFilter
from sdk import _migrate
from sdk._store import create_store_engine, insert_batch
from sdk.schema import SQL_VIEWS, calls, metadata

REPO = Path(__file__).resolve().parent.parent
VIEW_NAMES = sorted(SQL_VIEWS["sqlite"])


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def _diff(engine: sa.Engine, target: sa.MetaData = metadata) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, target))


def chat_record(call_id: str, *, at: datetime, prompt: str, reply: str, **extra: Any) -> dict[str, Any]:
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
    }
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }
    record: dict[str, Any] = {
        "id": call_id,
        "created_at": at,
        "method": "POST",
        "base_url": "https://api.openai.com/v1",
        "endpoint": "/chat/completions",
        "model": "gpt-4o-mini",
        "request": orjson.dumps(request).decode(),
        "response": orjson.dumps(response).decode(),
        "status_code": 200,
        "latency_ms": 250.0,
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "total_tokens": 13,
        "cost_usd": 0.00001,
    }
    record.update(extra)
    return record


# -- upgrade head == the metadata ---------------------------------------------------------------


def test_upgrade_head_on_empty_store_matches_metadata(db_url: str, engine: sa.Engine) -> None:
    assert _migrate.schema_status(db_url) == "missing"
    _migrate.upgrade(db_url)
    assert _migrate.current_revision(db_url) == _migrate.head_revision()
    assert _migrate.schema_status(engine) == "current"
    assert _diff(engine) == []
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert sorted(inspector.get_view_names()) == VIEW_NAMES
        assert {ix["name"] for ix in inspector.get_indexes("calls")} == {
            "ix_calls_created_at",
            "ix_calls_model_created_at",
            "ix_calls_endpoint_created_at",
            "ix_calls_status_code",
            "ix_calls_input_hash",
        }
        assert [ix["name"] for ix in inspector.get_indexes("call_tags")] == ["ix_call_tags_key_value"]
        if engine.dialect.name == "postgresql":  # room for HOT updates of entries (0004)
            options = conn.execute(
                sa.text("SELECT reloptions FROM pg_class WHERE oid = CAST('dataset_entries' AS regclass)")
            ).scalar_one()
            assert options == ["fillfactor=50"]


def test_type_comparison_sees_the_body_columns(db_url: str, engine: sa.Engine) -> None:
    """RawJSON compares equal to TEXT/JSONB only: a store with another body type is a difference."""
    wrong = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(wrong)
    other = postgresql.JSON() if engine.dialect.name == "postgresql" else sa.String(50)
    wrong.tables["calls"].c.request.type = other
    wrong.create_all(engine)
    differences = [d for group in _diff(engine) for d in (group if isinstance(group, list) else [group])]
    assert [(d[0], d[2], d[3]) for d in differences] == [("modify_type", "calls", "request")]


def test_head_views_are_sdk_schema_sql_views(db_url: str, engine: sa.Engine) -> None:
    """The migrations carry their own copy of the view SQL; at head it must equal SQL_VIEWS."""
    _migrate.upgrade(db_url)
    dialect = engine.dialect.name
    with engine.connect() as conn:
        for name, sql in SQL_VIEWS[dialect].items():
            if dialect == "sqlite":
                stored = conn.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = :n"), {"n": name}
                ).scalar_one()
                assert stored.strip() == sql.strip()
            else:
                # Compare PostgreSQL's normalized definitions: migrated view vs one made from SQL_VIEWS.
                conn.execute(
                    sa.text(sql.replace(f"CREATE VIEW {name}", f"CREATE TEMPORARY VIEW {name}_expected"))
                )
                migrated, expected = (
                    conn.execute(
                        sa.text("SELECT pg_get_viewdef(CAST(:v AS regclass))"), {"v": v}
                    ).scalar_one()
                    for v in (name, f"{name}_expected")
                )
                assert migrated == expected
        conn.rollback()


def test_views_answer_for_real_rows(db_url: str) -> None:
    _migrate.upgrade(db_url)
    store = create_store_engine(db_url)
    at = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    chat = chat_record("a" * 32, at=at, prompt="What is 2+2?", reply="4") | {
        "tags": {"prompt_id": "math", "n": "1"}
    }
    embedding = {
        "id": "b" * 32,
        "created_at": at + timedelta(seconds=1),
        "method": "POST",
        "endpoint": "/embeddings",
        "model": "text-embedding-3-small",
        "request": '{"input": "hi", "model": "text-embedding-3-small"}',
        "response": '{"data": [{"embedding": [0.1, 0.2]}]}',
        "status_code": 200,
    }
    try:
        insert_batch(store, [chat, embedding])
        with store.connect() as conn:
            tagged = {
                row.id: row.tags
                for row in conn.execute(sa.text("SELECT id, tags FROM calls_tagged ORDER BY id"))
            }
            chats = conn.execute(sa.text("SELECT * FROM chat_calls")).mappings().all()
    finally:
        store.dispose()
    as_dict = {k: json.loads(v) if isinstance(v, str) else v for k, v in tagged.items()}
    assert as_dict == {"a" * 32: {"prompt_id": "math", "n": "1"}, "b" * 32: {}}
    assert len(chats) == 1
    assert chats[0]["id"] == "a" * 32
    assert chats[0]["last_message"] == "What is 2+2?"
    assert chats[0]["reply"] == "4"
    assert chats[0]["finish_reason"] == "stop"


def test_downgrade_base_then_upgrade_again(db_url: str, engine: sa.Engine) -> None:
    _migrate.upgrade(db_url)
    _migrate.downgrade(db_url, "base")
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert inspector.get_view_names() == []
        assert inspector.get_table_names() == ["alembic_version"]
    assert _migrate.schema_status(db_url) == "missing"
    _migrate.upgrade(db_url)
    assert _migrate.schema_status(db_url) == "current"
    assert _diff(engine) == []


def test_upgrade_from_0001_keeps_calls_and_tags(db_url: str, engine: sa.Engine) -> None:
    """0002 rebuilds call_tags on SQLite: rows recorded under 0001 survive it, and the rebuild is undone
    by its downgrade."""
    _migrate.upgrade(db_url, "0001_initial")
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO calls (id, created_at, method, endpoint, stream, complete, attempt) "
                "VALUES ('0001', :at, 'POST', '/chat/completions', false, true, 0)"
            ),
            {"at": at},
        )
        conn.execute(
            sa.text(
                "INSERT INTO call_tags (call_id, key, value) "
                "VALUES ('0001', 'app', 'bot'), ('0001', 'v', '2')"
            )
        )
    _migrate.upgrade(db_url)
    assert _diff(engine) == []
    with engine.connect() as conn:
        tags = conn.execute(sa.text("SELECT tags FROM calls_tagged WHERE id = '0001'")).scalar_one()
        rows = conn.execute(sa.text("SELECT key, value FROM call_tags ORDER BY key")).all()
        if engine.dialect.name == "sqlite":
            table_sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'call_tags'")
            ).scalar_one()
            assert table_sql.rstrip().upper().endswith("WITHOUT ROWID")
    assert (json.loads(tags) if isinstance(tags, str) else tags) == {"app": "bot", "v": "2"}
    assert [tuple(row) for row in rows] == [("app", "bot"), ("v", "2")]
    _migrate.downgrade(db_url, "0001_initial")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM call_tags")).scalar_one() == 2
        if engine.dialect.name == "sqlite":
            table_sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'call_tags'")
            ).scalar_one()
            assert "WITHOUT ROWID" not in table_sql.upper()


def test_upgrade_at_head_is_a_no_op(db_url: str) -> None:
    _migrate.upgrade(db_url)
    _migrate.upgrade(db_url)
    assert _migrate.schema_status(db_url) == "current"


def test_schema_status_outdated_and_ahead(
    db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrate.upgrade(db_url)
    monkeypatch.setattr(_migrate, "head_revision", lambda: "0002_not_yet")
    assert _migrate.schema_status(db_url) == "outdated"
    monkeypatch.undo()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    assert _migrate.schema_status(engine) == "ahead"


def test_schema_status_of_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    assert _migrate.schema_status(f"sqlite:///{path}") == "missing"
    assert not path.exists()


def test_offline_sql_for_both_dialects() -> None:
    for url in ("sqlite://", "postgresql+psycopg://u@h/db"):
        config = _migrate.alembic_config(url)
        config.output_buffer = io.StringIO()
        command.upgrade(config, "head", sql=True)
        sql = config.output_buffer.getvalue()
        assert "CREATE TABLE calls" in sql
        assert "CREATE VIEW chat_calls" in sql
        assert "alembic_version" in sql


def test_url_with_percent_escapes_survives_the_config() -> None:
    url = "postgresql+psycopg://user:p%40ss%25word@host/db"
    assert _migrate.alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_migrations_dir_in_a_source_checkout() -> None:
    assert _migrate.migrations_dir() == REPO / "migrations"


# -- docs/schema.md ---------------------------------------------------------------------------------

_SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)


def _doc_queries(dialect: str) -> list[str]:
    """SQL blocks of docs/schema.md for ``dialect``: a block whose first line is ``-- sqlite`` or
    ``-- postgresql`` is for that database only; other blocks are for both."""
    text = (REPO / "docs" / "schema.md").read_text()
    queries = []
    for block in _SQL_BLOCK.findall(text):
        first = block.splitlines()[0].strip().lower() if block.strip() else ""
        if first in ("-- sqlite", "-- postgresql") and first != f"-- {dialect}":
            continue
        if block.lstrip().upper().startswith(("CREATE", "-- SCHEMA")):
            continue
        queries.append(block)
    return queries


def test_docs_example_queries_run(db_url: str) -> None:
    _migrate.upgrade(db_url)
    store = create_store_engine(db_url)
    at = datetime.now(UTC) - timedelta(hours=1)
    models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
    records = [
        chat_record(
            f"{i:032x}",
            at=at + timedelta(minutes=i),
            prompt=f"Question {i % 10} about my order",
            reply="You can get a refund within 30 days." if i % 4 == 0 else f"Your order {i} has shipped.",
            model=models[i % 3],
            input_hash=f"{i % 10:064x}",
            latency_ms=100.0 + 10 * i,
            cached_tokens=0,
        )
        | {"tags": {"prompt_id": "qa", "feature": "search" if i % 2 else "chat"} | _routed(i)}
        for i in range(30)
    ]
    records[3] |= {
        "status_code": 429,
        "response": '{"error": {"message": "Rate limit"}}',
        "error": "RateLimitError",
    }
    try:
        insert_batch(store, records)
        dataset = create_dataset(db_url, "qa", CallFilter(tags=(("prompt_id", "qa"),)))
        _a_job_with_events(db_url, dataset.dataset.id, dataset.dataset.version)
        _an_eval_run(
            db_url, dataset.dataset.id, dataset.dataset.version, [record["id"] for record in records]
        )
        queries = _doc_queries(store.dialect.name)
        assert len(queries) >= 10, "docs/schema.md lost its example queries"
        results = []
        with store.connect() as conn:
            for sql in queries:
                results.append(conn.execute(sa.text(sql)).all())
    finally:
        store.dispose()
    assert all(results), "every documented query returns rows for a store with calls"


def _a_job_with_events(db_url: str, dataset_id: int, version: int) -> None:
    """A training job as a launch and two polls leave it: claimed, created, metrics, succeeded."""
    from flywheel.query import connect
    from flywheel.train import jobs
    from flywheel.train.providers.base import JobEvent, JobState

    at = datetime.now(UTC)
    claim = jobs.Claim(
        "qa", dataset_id, version, 1, "openai", "gpt-4o-mini", "supervised", {}, None, None, {}
    )
    with connect(db_url) as conn:
        job = jobs.claim_job(conn, claim, jobs.claimant(), at, Path("jobs"))
        assert job is not None
        metrics = tuple(
            JobEvent(
                at,
                f"Step {n}/2: training loss={1 / n:.2f}",
                kind="metrics",
                data={"step": n, "train_loss": 1 / n},
                provider_event_id=f"ftevent-{n}",
            )
            for n in (1, 2)
        )
        running = jobs.record_state(conn, job, JobState("ftjob-1", "running", events=metrics), at)
        jobs.record_state(
            conn, running, JobState("ftjob-1", "succeeded", fine_tuned_model="ft:gpt-4o-mini:org::x"), at
        )


def _routed(i: int) -> dict[str, str]:
    """Every fifth call came through ``model="flywheel:qa"``."""
    return {"flywheel_route": "qa"} if i % 5 == 0 else {}


def _an_eval_run(db_url: str, dataset_id: int, version: int, call_ids: list[str]) -> None:
    """An eval run as ``flywheel eval`` leaves it: an export, outputs, judgments, a promotion."""
    from sdk.schema import eval_judgments, eval_outputs, eval_runs, exports, promotions

    at = datetime.now(UTC)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        manifest = {"splits": {"train": call_ids[:20], "test": call_ids[20:]}}
        export_id = conn.execute(
            sa.insert(exports)
            .values(
                dataset_id=dataset_id,
                version=version,
                created_at=at,
                out_dir="x",
                manifest=json.dumps(manifest),
            )
            .returning(exports.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(eval_runs).values(
                id="e" * 32, pipeline="qa", dataset_id=dataset_id, dataset_version=version,
                export_id=export_id, status="finished", candidates="[]", judge="gpt-4o", seed=1,
                settings="{}", examples=10, created_at=at, updated_at=at, finished_at=at,
            )
        )  # fmt: skip
        answer = json.dumps({"role": "assistant", "content": "ok"})
        conn.execute(
            sa.insert(eval_outputs),
            [
                {"run_id": "e" * 32, "candidate": candidate, "call_id": call_id, "eval_call_id": call_ids[n],
                 "output": answer if n % 4 else None, "error": None if n % 4 else "HTTP 400",
                 "created_at": at}
                for candidate in ("gpt-4o-mini", "ft:gpt-4o-mini:org::x")
                for n, call_id in enumerate(call_ids[20:])
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(eval_judgments),
            [
                {"run_id": "e" * 32, "candidate": "ft:gpt-4o-mini:org::x", "opponent": "reference",
                 "call_id": call_id, "shown_first": first, "verdict": "win" if n % 3 else "tie",
                 "identical": False, "reasoning": "closer to the reference", "created_at": at}
                for n, call_id in enumerate(call_ids[20:25])
                for first in ("candidate", "opponent")
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(promotions).values(
                pipeline="qa", model="ft:gpt-4o-mini:org::x", previous_model="gpt-4o-mini", action="promote",
                reason="flywheel promote", created_at=at,
            )
        )  # fmt: skip
    engine.dispose()


# -- the wheel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_migrations_that_run_from_an_install(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"sdk", "flywheel", "llm_flywheel-0.1.0.dist-info"}, top
    assert "sdk/_migrations/env.py" in names
    assert "sdk/_migrations/script.py.mako" in names
    assert "sdk/_migrations/versions/0001_initial.py" in names
    assert not [name for name in names if name.endswith(".pyc")]

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    script = (
        "from sdk._migrate import migrations_dir, upgrade; upgrade('sqlite:///x.db'); print(migrations_dir())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=outside, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == site / "sdk" / "_migrations"
    store = sa.create_engine(f"sqlite:///{outside / 'x.db'}")
    try:
        with store.connect() as conn:
            assert {"calls", "call_tags", "alembic_version"} <= set(sa.inspect(conn).get_table_names())
            assert (
                conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
                == _migrate.head_revision()
            )
    finally:
        store.dispose()
    assert (outside / "x.db").stat().st_mode & 0o777 == 0o600


def test_calls_columns_are_documented() -> None:
    text = (REPO / "docs" / "schema.md").read_text()
    for table in metadata.tables.values():
        for column in table.columns:
            assert f"`{column.name}`" in text, f"docs/schema.md does not describe {table.name}.{column.name}"
    assert calls.name in text
