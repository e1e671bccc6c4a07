"""The background writer against real stores: batching, caps, outages and the spool, exit, fork.

Exchanges are built here directly (no HTTP): the writer's contract starts at ``submit``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from sdk import _health, _writer
from sdk._exchange import Exchange, RecordOptions
from sdk._migrate import upgrade
from sdk._writer import Recorder
from sdk.schema import calls

API_KEY = "sk-proj-SECRET-writer-test-0123456789"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    _health._reset_for_tests()
    yield
    _writer.set_global_redact(None)


@pytest.fixture
def recorders(tmp_path: Path) -> Iterator[Callable[..., Recorder]]:
    """Make recorders (spooling into tmp_path/spool); each is shut down after the test."""
    made: list[Recorder] = []

    def make(url: str, **kwargs: Any) -> Recorder:
        kwargs.setdefault("spool_dir", tmp_path / "spool")
        recorder = Recorder(url, **kwargs)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.shutdown(timeout=10)


@pytest.fixture
def store(db_url: str) -> str:
    """A migrated store (PostgreSQL needs `flywheel migrate`; SQLite would migrate itself)."""
    upgrade(db_url)
    return db_url


# -- exchanges --------------------------------------------------------------------------------

QUESTION = (
    "Our customer writes: I was charged twice for the March invoice (INV-2291) and the second "
    "charge still shows as pending on my card. Can you check whether the refund went out, and "
    "tell me when I should expect it? I also want to switch to annual billing from next month. "
)


def chat_exchange(n: int, *, stream: bool = False, **fields: Any) -> Exchange:
    """A realistic chat completion (2-3 KB of JSON), plain or streamed."""
    messages = [
        {"role": "system", "content": "You are a support assistant for Acme Billing. " * 8},
        {"role": "user", "content": f"[ticket {n}] " + QUESTION * 3},
    ]
    request = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.2, "stream": stream}
    answer = f"Thanks for reaching out about ticket {n}. The duplicate charge was reversed; " * 6
    usage = {"prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508}
    if stream:
        words = answer.split(" ")
        events = [
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}],
            }
            for w in words
        ]
        events.append({"id": f"chatcmpl-{n}", "choices": [], "usage": usage, "model": "gpt-4o-mini"})
        body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        chunks = [body[i : i + 512] for i in range(0, len(body), 512)]
        content_type = "text/event-stream; charset=utf-8"
    else:
        response = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        chunks = [orjson.dumps(response)]
        content_type = "application/json"
    values: dict[str, Any] = {
        "started_at": time.time(),
        "method": "POST",
        "url": "https://api.openai.com/v1/chat/completions",
        "request_content_type": "application/json",
        "request_body": orjson.dumps(request),
        "tags": {"n": str(n), "feature": "billing"},
        "status_code": 200,
        "response_content_type": content_type,
        "request_id": f"req_{n}",
        "response_chunks": chunks,
        "latency_ms": 812.0,
        "ttft_ms": 95.0 if stream else None,
    }
    values.update(fields)
    if "response_size" not in values:  # as the transport does
        values["response_size"] = sum(map(len, values["response_chunks"] or ()))
    return Exchange(**values)


def stored(url: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """(calls rows, tags by call id) in the store at ``url``."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(calls).order_by(calls.c.id))]
            tags: dict[str, dict[str, str]] = {}
            for call_id, key, value in conn.execute(sa.text("SELECT call_id, key, value FROM call_tags")):
                tags.setdefault(call_id, {})[key] = value
    finally:
        engine.dispose()
    return rows, tags


def stored_numbers(url: str) -> list[int]:
    """The ``n`` tag of every stored call, sorted (duplicates show up twice)."""
    rows, tags = stored(url)
    return sorted(int(tags[row["id"]]["n"]) for row in rows)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def count_rows(url: str) -> int:
    try:
        return len(stored_numbers(url))
    except sa.exc.SQLAlchemyError:
        return -1


# -- the normal path --------------------------------------------------------------------------


def test_submitted_exchanges_land_with_tags(store: str, recorders: Callable[..., Recorder]) -> None:
    recorder = recorders(store)
    for n in range(30):
        recorder.submit(chat_exchange(n, stream=n % 3 == 0))
    assert recorder.flush(timeout=30)
    rows, tags = stored(store)
    assert len(rows) == 30
    assert sorted(int(tags[r["id"]]["n"]) for r in rows) == list(range(30))
    assert all(tags[r["id"]]["feature"] == "billing" for r in rows)
    by_n = {int(tags[r["id"]]["n"]): r for r in rows}
    plain, streamed = by_n[1], by_n[3]
    assert plain["endpoint"] == "/chat/completions" and plain["model"] == "gpt-4o-mini"
    assert plain["prompt_tokens"] == 412 and plain["completion_tokens"] == 96
    assert not plain["stream"] and streamed["stream"]
    assert orjson.loads(streamed["response"])["choices"][0]["message"]["content"].startswith("Thanks")
    assert _health.snapshot()["rows_written"] == 30
    assert recorder.stats()["queue_records"] == 0


def test_many_submits_are_written_in_few_transactions(store: str, recorders: Callable[..., Recorder]) -> None:
    recorder = recorders(store, flush_interval=60)
    recorder.submit(chat_exchange(-1))
    assert recorder.flush(timeout=30)  # engine and schema check done
    commits: list[str] = []

    def on_commit(conn: sa.Connection) -> None:
        commits.append(str(conn.engine.url))

    sa.event.listen(sa.Engine, "commit", on_commit)
    try:
        exchanges = [chat_exchange(n) for n in range(4500)]
        for ex in exchanges:
            recorder.submit(ex)
        assert recorder.flush(timeout=60)
    finally:
        sa.event.remove(sa.Engine, "commit", on_commit)
    assert len(stored_numbers(store)) == 4501
    # 4500 rows at 2000 per batch: three transactions (a wake-up at half-full may split one more).
    assert 3 <= len(commits) <= 4, commits


def test_full_queue_drops_and_counts_without_blocking(
    tmp_path: Path, recorders: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("FLYWHEEL_MAX_QUEUE_RECORDS", "5")
    recorder = recorders(url)
    monkeypatch.setattr(recorder, "_start", lambda: None)  # no writer yet: the queue only fills
    started = time.perf_counter()
    for n in range(10_000):
        recorder.submit(chat_exchange(n))
    assert time.perf_counter() - started < 5
    assert recorder.stats()["queue_records"] == 5
    assert _health.snapshot()["dropped_queue_full"] == 9_995
    monkeypatch.undo()
    assert recorder.flush(timeout=30)
    assert stored_numbers(url) == [0, 1, 2, 3, 4]


def test_byte_cap_drops_once_the_queue_holds_that_many_body_bytes(
    tmp_path: Path, recorders: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(chat_exchange(0).request_body or b"") + len(chat_exchange(0).response_chunks[0])  # type: ignore[index]
    recorder = recorders(f"sqlite:///{tmp_path / 'store.db'}", max_queue_bytes=3 * size)
    monkeypatch.setattr(recorder, "_start", lambda: None)
    for n in range(10):
        recorder.submit(chat_exchange(n))
    assert recorder.stats()["queue_records"] == 3
    assert recorder.stats()["queue_bytes"] == 3 * size
    assert _health.snapshot()["dropped_queue_full"] == 7


def test_disabled_recorder_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DISABLED", "1")
    recorder = Recorder(f"sqlite:///{tmp_path / 'store.db'}")
    recorder.submit(chat_exchange(1))
    assert recorder.stats()["queue_records"] == 0
    assert recorder._thread is None
    assert recorder.flush(timeout=1)
    assert not (tmp_path / "store.db").exists()


def test_redact_hooks_client_first_then_global(store: str, recorders: Callable[..., Recorder]) -> None:
    def drop_secret(record: dict[str, Any]) -> dict[str, Any] | None:
        return None if record["tags"].get("n") == "1" else record

    def mark_client(record: dict[str, Any]) -> dict[str, Any] | None:
        record["tags"]["redacted_by"] = "client"
        return record

    _writer.set_global_redact(drop_secret)
    recorder = recorders(store)
    recorder.submit(chat_exchange(0))
    recorder.submit(chat_exchange(1))
    recorder.submit(chat_exchange(2, options=RecordOptions(redact=mark_client)))
    assert recorder.flush(timeout=30)
    _, tags = stored(store)
    assert sorted((t["n"], t.get("redacted_by")) for t in tags.values()) == [("0", None), ("2", "client")]


def test_get_recorder_is_one_per_url_and_module_flush_covers_all(tmp_path: Path) -> None:
    url_a, url_b = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    assert _writer.get_recorder(url_a) is _writer.get_recorder(url_a)
    assert _writer.get_recorder() is _writer.get_recorder(os.environ["FLYWHEEL_DATABASE_URL"])
    try:
        _writer.get_recorder(url_a).submit(chat_exchange(1))
        _writer.get_recorder(url_b).submit(chat_exchange(2))
        assert _writer.flush(timeout=30)
        assert stored_numbers(url_a) == [1] and stored_numbers(url_b) == [2]
        report = _writer.stats()
        assert report["queue_records"] == 0 and report["counters"]["rows_written"] == 2
    finally:
        assert _writer.shutdown(timeout=10)


# -- bad rows ---------------------------------------------------------------------------------


def test_a_row_the_store_refuses_is_quarantined_and_the_rest_land(
    store: str, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    recorder = recorders(store)
    for n in range(10):
        # A NULL tag value violates call_tags.value NOT NULL: an IntegrityError for that row only.
        tags: dict[str, Any] = {"n": str(n), "bad": None} if n == 4 else {"n": str(n)}
        recorder.submit(chat_exchange(n, tags=tags))
    assert recorder.flush(timeout=30)
    assert stored_numbers(store) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    (entry,) = [orjson.loads(line) for line in recorder.spool.rejected_path.read_bytes().splitlines()]
    assert entry["row"]["tags"] == {"n": "4", "bad": None}
    assert "IntegrityError" in entry["error"] or "NotNullViolation" in entry["error"]
    assert _health.snapshot()["rows_rejected"] == 1
    assert stat.S_IMODE(recorder.spool.rejected_path.stat().st_mode) == 0o600


def test_a_bad_row_in_the_spool_does_not_wedge_the_replay(
    store: str, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    from sdk._spool import Spool

    rows = [recorder_row(n) for n in range(5)]
    rows[2]["method"] = None  # NOT NULL
    spool = Spool(tmp_path / "spool", store)
    spool.append(rows)
    spool.rotate()
    recorder = recorders(store)
    recorder.submit(chat_exchange(99))
    assert recorder.flush(timeout=30)
    assert stored_numbers(store) == [0, 1, 3, 4, 99]
    assert spool.pending_files() == []
    assert _health.snapshot()["rows_rejected"] == 1


def recorder_row(n: int) -> dict[str, Any]:
    """A row as ``build_record`` makes it (what the spool holds)."""
    from sdk._pricing import PriceTable
    from sdk._records import build_record

    row = build_record(chat_exchange(n), PriceTable({}))
    assert row is not None
    return row


# -- outages and the spool ----------------------------------------------------------------------


@pytest.fixture
def missing_pg_database(pg_database_url: str) -> Iterator[str]:
    """The URL of a PostgreSQL database that does not exist yet (dropped after the test)."""
    name = f"flywheel_outage_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(pg_database_url).set(database=name).render_as_string(hide_password=False)
    yield url
    admin = sa.create_engine(pg_database_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def create_pg_database(url: str) -> None:
    parsed = sa.make_url(url)
    admin = sa.create_engine(
        parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def test_postgresql_outage_spools_then_replays_exactly_once(
    missing_pg_database: str, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    url = missing_pg_database
    recorder = recorders(url, retry_initial=0.05, retry_max=0.2)
    for n in range(50):
        recorder.submit(chat_exchange(n, stream=n % 5 == 0))
    assert recorder.flush(timeout=30)  # durable in the spool
    assert sum(len(Path(p).read_bytes().splitlines()) for p in recorder.spool.pending_files()) == 50
    assert _health.snapshot()["rows_spooled"] == 50
    assert recorder.stats()["store"] == "down"

    create_pg_database(url)  # the database exists but has no schema: still spooling
    for n in range(50, 60):
        recorder.submit(chat_exchange(n))
    assert recorder.flush(timeout=30)
    upgrade(url)  # `flywheel migrate`
    wait_for(lambda: count_rows(url) == 60)
    for n in range(60, 70):
        recorder.submit(chat_exchange(n))
    assert recorder.flush(timeout=30)
    assert stored_numbers(url) == list(range(70))
    assert recorder.spool.pending_files() == []
    assert recorder.stats()["store"] == "up"


def test_sqlite_outage_spools_then_replays(recorders: Callable[..., Recorder], tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the store's directory should be")
    url = f"sqlite:///{blocker / 'store.db'}"
    recorder = recorders(url, retry_initial=0.05, retry_max=0.2)
    for n in range(20):
        recorder.submit(chat_exchange(n))
    assert recorder.flush(timeout=30)
    assert recorder.spool.pending_files()
    blocker.unlink()
    blocker.mkdir()
    wait_for(lambda: count_rows(url) == 20)
    recorder.submit(chat_exchange(20))
    assert recorder.flush(timeout=30)
    assert stored_numbers(url) == list(range(21))
    assert recorder.spool.pending_files() == []


def test_a_long_backlog_is_replayed_in_order_with_new_rows_behind_it(
    recorders: Callable[..., Recorder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writer, "REPLAY_BUDGET_S", 0.0)  # one spool file per wake-up
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'store.db'}"
    recorder = recorders(url, batch_rows=4, flush_interval=0.05, retry_initial=0.05, retry_max=0.1)
    for n in range(40):
        recorder.submit(chat_exchange(n))
    assert recorder.flush(timeout=30)
    assert len(recorder.spool.pending_files()) == 10
    blocker.unlink()
    blocker.mkdir()
    for n in range(40, 60):  # arrive while the backlog is being replayed
        recorder.submit(chat_exchange(n))
        time.sleep(0.01)
    wait_for(lambda: count_rows(url) == 60)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        order = conn.execute(
            sa.text(
                "SELECT t.value FROM calls c JOIN call_tags t ON t.call_id = c.id AND t.key = 'n' "
                "ORDER BY c.rowid"
            )
        ).scalars()
        assert [int(v) for v in order] == list(range(60))  # SQLite's rowid: insertion order
    engine.dispose()


def test_rows_wait_in_memory_when_neither_store_nor_spool_takes_them(
    recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    (tmp_path / "data").write_text("not a directory")
    (tmp_path / "cache").write_text("not a directory either")
    url = f"sqlite:///{tmp_path / 'data' / 'store.db'}"
    recorder = recorders(url, spool_dir=tmp_path / "cache" / "spool", retry_initial=0.05, retry_max=0.2)
    for n in range(5):
        recorder.submit(chat_exchange(n))
    assert not recorder.flush(timeout=30)  # not durable anywhere: flush says so
    assert _health.snapshot()["spool_failures"] >= 1
    (tmp_path / "data").unlink()
    (tmp_path / "data").mkdir()
    wait_for(lambda: count_rows(url) == 5)
    assert recorder.flush(timeout=30)
    assert stored_numbers(url) == list(range(5))


def test_spool_files_are_private_and_hold_no_credentials(
    recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    (tmp_path / "data").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'data' / 'store.db'}"
    recorder = recorders(url)
    for n in range(5):
        # Azure-style key in the query string; the client sent `Authorization: Bearer sk-...`.
        recorder.submit(
            chat_exchange(n, url=f"https://example.openai.azure.com/v1/chat/completions?api-key={API_KEY}")
        )
    assert recorder.flush(timeout=30)
    spool_dir = tmp_path / "spool"
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    files = list(spool_dir.iterdir())
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_bytes()
        assert b"store.db" not in path.name.encode()
        for secret in (b"Authorization", b"authorization", b"sk-", b"SECRET", b"api-key"):
            assert secret not in data
        assert data.count(b"\n") == 5


def test_spool_left_by_a_crashed_process_is_replayed_despite_a_torn_line(
    store: str, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    from sdk._spool import Spool, encode_row

    spool = Spool(tmp_path / "spool", store)
    spool.append([recorder_row(n) for n in range(3)])
    spool.rotate()
    (path,) = spool.pending_files()
    with open(path, "ab") as handle:
        handle.write(encode_row(recorder_row(3))[:100])
    recorder = recorders(store)
    recorder.submit(chat_exchange(10))
    assert recorder.flush(timeout=30)
    assert stored_numbers(store) == [0, 1, 2, 10]
    assert _health.snapshot()["spool_bad_lines"] == 1
    assert spool.pending_files() == []


# -- process lifecycle ----------------------------------------------------------------------------

CHILD_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_writer import chat_exchange
from sdk._writer import get_recorder
recorder = get_recorder()
for n in range({count}):
    recorder.submit(chat_exchange(n))
"""


def run_child(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_records_submitted_right_before_exit_are_kept(db_url: str) -> None:
    upgrade(db_url)
    script = CHILD_SCRIPT.format(tests=str(Path(__file__).parent), count=300)
    done = run_child(script, {"FLYWHEEL_DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
    assert stored_numbers(db_url) == list(range(300))


@pytest.mark.slow
def test_exit_with_a_stuck_writer_spools_everything(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    locker = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"isolation_level": None})
    with locker.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the writer waits on this lock (busy timeout 10 s)
        script = CHILD_SCRIPT.format(tests=str(Path(__file__).parent), count=200)
        started = time.monotonic()
        done = run_child(script, {"FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_EXIT_TIMEOUT": "1"})
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 8
        conn.exec_driver_sql("ROLLBACK")
    locker.dispose()
    recorder = recorders(url)
    assert recorder.spool.pending_files()
    recorder.submit(chat_exchange(1000))
    assert recorder.flush(timeout=30)
    assert stored_numbers(url) == [*range(200), 1000]


def test_fork_child_records_its_own_exchanges_only(store: str, recorders: Callable[..., Recorder]) -> None:
    recorder = recorders(store)
    for n in range(10):
        recorder.submit(chat_exchange(n))
    assert recorder.flush(timeout=30)  # the writer thread and the engine's pool exist in the parent
    for n in range(10, 15):
        recorder.submit(chat_exchange(n))  # queued in the parent at fork: the parent's job
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for n in range(100, 105):
                recorder.submit(chat_exchange(n))
            code = 0 if recorder.flush(timeout=30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.submit(chat_exchange(20))
    assert recorder.flush(timeout=30)
    assert stored_numbers(store) == [*range(15), 20, *range(100, 105)]


def test_recorder_created_before_fork_but_first_used_in_workers(
    store: str, recorders: Callable[..., Recorder]
) -> None:
    recorder = recorders(store)  # gunicorn --preload: client made in the master, calls in workers
    children = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for n in range(5):
                    recorder.submit(chat_exchange(worker * 10 + n))
                code = 0 if recorder.flush(timeout=30) else 2
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert recorder._thread is None  # the master itself never recorded anything
    assert stored_numbers(store) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


def test_submit_never_raises(tmp_path: Path, recorders: Callable[..., Recorder]) -> None:
    recorder = recorders(f"sqlite:///{tmp_path / 'store.db'}")
    recorder.submit(None)  # type: ignore[arg-type]
    recorder.submit(chat_exchange(1, response_chunks=[object()], response_size=0))
    assert _health.snapshot()["errors.submit"] >= 1


def test_concurrent_submitters_lose_nothing(store: str, recorders: Callable[..., Recorder]) -> None:
    recorder = recorders(store, flush_interval=0.05)

    def submit_range(start: int) -> None:
        for n in range(start, start + 250):
            recorder.submit(chat_exchange(n))

    threads = [threading.Thread(target=submit_range, args=(i * 1000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.flush(timeout=30)
    assert stored_numbers(store) == [i * 1000 + n for i in range(4) for n in range(250)]
    assert recorder.stats()["queue_bytes"] == 0
