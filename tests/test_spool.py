"""The spool on its own: file format, permissions, rotation, locking between processes, damage."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sdk import _health
from sdk._spool import Spool, decode_row, encode_row, spool_key

URL = "postgresql+psycopg://flywheel:hunter2-password@db.internal:5432/calls"


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    _health._reset_for_tests()


def make_row(n: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"{n:032x}",
        "created_at": dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "method": "POST",
        "endpoint": "/chat/completions",
        "model": "gpt-4o-mini",
        "request": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        "response": '{"choices":[{"message":{"role":"assistant","content":"h\\u00e9llo"}}]}',
        "status_code": 200,
        "stream": False,
        "latency_ms": 12.5,
        "cost_usd": None,
        "tags": {"n": str(n), "feature": "search"},
    }
    row.update(overrides)
    return row


def replay_all(spool: Spool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for spool_file in spool.claim_pending():
        rows.extend(spool_file.read_rows())
        spool_file.done()
    return rows


def test_row_round_trip_keeps_types() -> None:
    row = make_row(1)
    assert decode_row(encode_row(row)) == row
    naive = make_row(2, created_at=dt.datetime(2025, 1, 2, 3, 4, 5))
    assert decode_row(encode_row(naive)) == naive


def test_append_then_replay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", URL)
    spool.append([make_row(n) for n in range(3)])
    spool.append([make_row(n) for n in range(3, 5)])
    assert [r["tags"]["n"] for r in replay_all(spool)] == ["0", "1", "2", "3", "4"]
    assert spool.pending_files() == []


def test_files_are_private_and_never_named_after_the_url(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", URL)
    spool.append([make_row(1)])
    spool.reject(make_row(2), "IntegrityError: boom")
    directory = tmp_path / "spool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.startswith(spool_key(URL))
        for secret in ("hunter2", "db.internal", "flywheel"):
            assert secret not in path.name
        assert b"hunter2" not in path.read_bytes()


def test_files_rotate_at_max_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path, URL, max_file_rows=2)
    spool.append([make_row(n) for n in range(5)])
    assert len(spool.pending_files()) == 3
    assert len(replay_all(spool)) == 5


def test_a_file_being_written_is_not_replayed(tmp_path: Path) -> None:
    writer = Spool(tmp_path, URL)
    other_process = Spool(tmp_path, URL)  # a separate descriptor: flock treats it like another process
    writer.append([make_row(1)])
    assert len(other_process.pending_files()) == 1
    assert replay_all(other_process) == []  # locked: its owner may still append
    writer.rotate()  # closed: anyone may replay it now
    assert [r["id"] for r in replay_all(other_process)] == [make_row(1)["id"]]


def test_a_file_being_replayed_is_not_claimed_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path, URL)
    spool.append([make_row(1)])
    spool.rotate()
    first = next(Spool(tmp_path, URL).claim_pending())
    assert list(Spool(tmp_path, URL).claim_pending()) == []
    first.release()
    assert len(replay_all(Spool(tmp_path, URL))) == 1


def test_files_of_a_dead_process_are_replayed(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # a process that spools and dies without closing its file
        try:
            Spool(tmp_path, URL).append([make_row(7)])
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert [r["tags"]["n"] for r in replay_all(Spool(tmp_path, URL))] == ["7"]


def test_a_forked_child_does_not_unlock_the_parents_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, URL)
    spool.append([make_row(1)])
    pid = os.fork()
    if pid == 0:
        try:
            spool.after_fork_in_child()
            spool.append([make_row(2)])  # the child's own file
            spool.rotate()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    # The child's file is free; the parent's is still locked by the parent.
    assert [r["tags"]["n"] for r in replay_all(Spool(tmp_path, URL))] == ["2"]
    spool.append([make_row(3)])
    spool.rotate()
    assert [r["tags"]["n"] for r in replay_all(Spool(tmp_path, URL))] == ["1", "3"]


def test_truncated_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, URL)
    spool.append([make_row(1), make_row(2)])
    spool.rotate()
    (path,) = spool.pending_files()
    with open(path, "ab") as handle:
        handle.write(encode_row(make_row(3))[:40])  # a write cut short by a crash
    with caplog.at_level("WARNING", logger="flywheel.sdk"):
        rows = replay_all(spool)
    assert [r["tags"]["n"] for r in rows] == ["1", "2"]
    assert _health.snapshot()["spool_bad_lines"] == 1
    assert "truncated last line 3" in caplog.text


def test_damaged_middle_line_does_not_stop_the_rest(tmp_path: Path) -> None:
    path = tmp_path / f"{spool_key(URL)}-00000000000000000001-1-0.jsonl"
    path.write_bytes(encode_row(make_row(1)) + b"{not json\n" + b"[1, 2]\n" + encode_row(make_row(2)))
    assert [r["tags"]["n"] for r in replay_all(Spool(tmp_path, URL))] == ["1", "2"]
    assert _health.snapshot()["spool_bad_lines"] == 2


def test_rejected_rows_are_kept_with_the_reason(tmp_path: Path) -> None:
    import orjson

    spool = Spool(tmp_path, URL)
    spool.reject(make_row(1), "IntegrityError: NOT NULL constraint failed: calls.method")
    spool.reject(make_row(2), "DataError: value too long")
    lines = [orjson.loads(line) for line in spool.rejected_path.read_bytes().splitlines()]
    assert [entry["row"]["tags"]["n"] for entry in lines] == ["1", "2"]
    assert lines[0]["error"].startswith("IntegrityError")
    assert spool.pending_files() == []  # rejected rows are never replayed
