"""``flywheel.query(...)``: counting, streaming in batches and ``to_pandas`` on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from test_query import call_row, insert_calls, migrated

import flywheel
from flywheel.errors import BadFilterError, StoreError, UsageError
from flywheel.query import DEFAULT_COLUMNS, CallFilter, CallQuery

pd = pytest.importorskip("pandas")

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> tuple[str, list[str]]:
    """25 calls, one a minute, oldest first; every third has env=prod, every fifth is a 429."""
    rows = [
        call_row(
            at=NOW - timedelta(minutes=25 - i),
            status=429 if i % 5 == 0 else 200,
            prompt=f"question number {i}",
            latency_ms=100.0 + i,
            tags={"prompt_id": "classify", **({"env": "prod"} if i % 3 == 0 else {})},
        )
        for i in range(25)
    ]
    url = migrated(db_url)
    insert_calls(url, rows)
    return url, [row["id"] for row in rows]


def test_query_is_lazy_and_validates_its_criteria() -> None:
    lazy = flywheel.query(database_url="sqlite:////nonexistent/dir/store.db", model="m")
    assert isinstance(lazy, CallQuery) and lazy.call_filter == CallFilter(model="m")
    with pytest.raises(StoreError):
        lazy.count()  # only now is the store touched
    with pytest.raises(BadFilterError) as caught:
        flywheel.query(min_tokens=-1)
    assert caught.value.where == "--min-tokens"


def test_criteria_replace_the_fields_of_a_filter(store: tuple[str, list[str]]) -> None:
    url, _ = store
    base = CallFilter(tags=(("env", "prod"),), status="ok")
    assert flywheel.query(base, database_url=url).count() == 7  # i = 3, 6, 9, 12, 18, 21, 24
    assert flywheel.query(base, database_url=url, status="error").count() == 2  # i = 0, 15
    assert flywheel.query(base, database_url=url, tags={}).count() == 20
    assert flywheel.query(database_url=url, search="question number 7").count() == 1


def test_count_and_iteration_oldest_first(store: tuple[str, list[str]]) -> None:
    url, ids = store
    everything = flywheel.query(database_url=url)
    assert everything.count() == 25
    calls = list(everything)
    assert [call["id"] for call in calls] == ids
    first = calls[0]
    assert first["created_at"] == NOW - timedelta(minutes=25)
    assert first["created_at"].utcoffset() == timedelta(0)
    assert first["tags"] == {"env": "prod", "prompt_id": "classify"}
    assert first["total_tokens"] is None  # a 429 has no usage
    assert calls[1]["total_tokens"] == 15
    assert set(first) == {*DEFAULT_COLUMNS, "tags"}


def test_batches_are_bounded_and_cover_everything_once(store: tuple[str, list[str]]) -> None:
    url, ids = store
    batches = list(flywheel.query(database_url=url).batches(size=4, tags=["env"], columns=["model"]))
    assert [len(batch) for batch in batches] == [4, 4, 4, 4, 4, 4, 1]
    assert [call["id"] for batch in batches for call in batch] == ids
    assert set(batches[0][0]) == {"id", "model", "tag:env"}
    assert [call["tag:env"] for call in batches[0]] == ["prod", None, None, "prod"]
    with pytest.raises(UsageError):
        next(flywheel.query(database_url=url).batches(size=0))


def test_a_half_read_stream_can_be_dropped(store: tuple[str, list[str]]) -> None:
    url, _ = store
    stream = flywheel.query(database_url=url).batches(size=2)
    assert len(next(stream)) == 2
    stream.close()  # closes the cursor and the connection
    assert flywheel.query(database_url=url).count() == 25


def test_to_pandas_columns_and_dtypes(store: tuple[str, list[str]]) -> None:
    url, ids = store
    frame = flywheel.query(database_url=url, status="ok").to_pandas()
    assert list(frame.columns) == [*DEFAULT_COLUMNS, "tags"]
    assert len(frame) == 20 and frame["id"].tolist() == [i for n, i in enumerate(ids) if n % 5]
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert frame["created_at"].iloc[0] == pd.Timestamp(NOW - timedelta(minutes=24))
    assert str(frame["status_code"].dtype) == "Int64" and str(frame["total_tokens"].dtype) == "Int64"
    assert frame["latency_ms"].dtype == "float64" and frame["latency_ms"].iloc[0] == 101.0
    assert frame["stream"].dtype == bool
    assert isinstance(frame["model"].dtype, pd.StringDtype)
    assert frame["ttft_ms"].isna().all()
    assert frame["tags"].iloc[0] == {"prompt_id": "classify"}


def test_to_pandas_with_chosen_columns_tag_columns_and_bodies(store: tuple[str, list[str]]) -> None:
    url, _ = store
    frame = flywheel.query(database_url=url).to_pandas(
        columns=["created_at", "status_code", "request", "response"], tags=["env", "prompt_id", "absent"]
    )
    assert list(frame.columns) == [
        "id",
        "created_at",
        "status_code",
        "request",
        "response",
        "tag:env",
        "tag:prompt_id",
        "tag:absent",
    ]
    assert frame["request"].iloc[3]["messages"][-1]["content"] == "question number 3"
    assert frame["response"].iloc[0]["error"]["message"].startswith("Rate limit")
    assert frame["tag:env"].tolist()[:4] == ["prod", pd.NA, pd.NA, "prod"]
    assert (frame["tag:prompt_id"] == "classify").all() and frame["tag:absent"].isna().all()
    assert frame["status_code"].tolist()[:2] == [429, 200]
    assert list(flywheel.query(database_url=url).to_pandas(columns=[], tags=False).columns) == ["id"]


def test_to_pandas_of_nothing_keeps_the_columns_and_dtypes(store: tuple[str, list[str]]) -> None:
    url, _ = store
    empty = flywheel.query(database_url=url, model="nothing").to_pandas(tags=["env"])
    assert len(empty) == 0
    assert list(empty.columns) == [*DEFAULT_COLUMNS, "tag:env"]
    assert isinstance(empty["created_at"].dtype, pd.DatetimeTZDtype)
    assert str(empty["prompt_tokens"].dtype) == "Int64"


def test_to_pandas_rejects_unknown_columns(store: tuple[str, list[str]]) -> None:
    url, _ = store
    with pytest.raises(UsageError) as caught:
        flywheel.query(database_url=url).to_pandas(columns=["model", "colour"])
    assert "'colour'" in caught.value.message and caught.value.where == "columns"
    with pytest.raises(UsageError):
        flywheel.query(database_url=url).to_pandas(tags=[""])


def test_to_pandas_without_pandas_says_what_to_install(
    store: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = store
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(UsageError) as caught:
        flywheel.query(database_url=url).to_pandas()
    assert "pip install" in caught.value.message


def test_the_sdk_imports_neither_pandas_nor_flywheel() -> None:
    import subprocess

    code = "import sdk, sys; sys.exit(1 if {'pandas', 'flywheel'} & set(sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
