"""Datasets: create, update (growth without disturbing entries), versions, errors; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from recorded_calls import T0, chat_exchange, record, record_chats, scalar

from flywheel.datasets import (
    NotFoundError,
    create_dataset,
    entries_at,
    get_dataset,
    list_datasets,
    update_dataset,
)
from flywheel.errors import StoreError, UsageError
from flywheel.query import CallFilter
from sdk.schema import dataset_entries


def entry_calls(db_url: str, name: str, version: int | None = None) -> list[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            dataset_id = conn.execute(
                sa.text("SELECT id FROM datasets WHERE name = :n"), {"n": name}
            ).scalar_one()
            if version is None:
                version = conn.execute(
                    sa.text("SELECT version FROM datasets WHERE name = :n"), {"n": name}
                ).scalar_one()
            statement = (
                sa.select(dataset_entries.c.call_id)
                .where(entries_at(dataset_id, version))
                .order_by(dataset_entries.c.call_id)
            )
            return list(conn.execute(statement).scalars())
    finally:
        engine.dispose()


def test_create_takes_in_matching_answered_chat_calls(db_url: str) -> None:
    wanted = record_chats(db_url, [f"question {n}" for n in range(5)], tags={"prompt_id": "classify"})
    record_chats(db_url, ["other prompt"], tags={"prompt_id": "summarize"})
    record(db_url, [chat_exchange("failed", status=500, tags={"prompt_id": "classify"})])
    result = create_dataset(db_url, "classify", CallFilter(tags={"prompt_id": "classify"}))
    assert result.created and result.added == 5
    assert result.dataset.version == 1 and result.dataset.entries == 5
    assert entry_calls(db_url, "classify") == sorted(wanted)
    info = get_dataset(db_url, "classify")
    assert [(v.version, v.action, v.details["added"]) for v in info.history] == [(1, "create", 5)]
    assert info.filter == CallFilter(tags={"prompt_id": "classify"})


def test_update_adds_new_calls_and_keeps_old_entries(db_url: str) -> None:
    first = record_chats(db_url, ["a", "b", "c"], tags={"app": "bot"})
    create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    before = scalar(db_url, "SELECT min(id) FROM dataset_entries")
    later = record_chats(db_url, ["d", "e"], start=T0 + timedelta(days=1), tags={"app": "bot"})
    result = update_dataset(db_url, "bot")
    assert result.added == 2 and result.dataset.version == 2 and result.dataset.entries == 5
    # The first version is still there, entry ids untouched.
    assert entry_calls(db_url, "bot", version=1) == sorted(first)
    assert entry_calls(db_url, "bot", version=2) == sorted(first + later)
    assert scalar(db_url, "SELECT min(id) FROM dataset_entries") == before
    assert scalar(db_url, "SELECT added_in FROM dataset_entries WHERE call_id = :c", c=later[0]) == 2


def test_update_with_nothing_new_makes_no_version(db_url: str) -> None:
    record_chats(db_url, ["a"], tags={"app": "bot"})
    create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    result = update_dataset(db_url, "bot")
    assert result.added == 0 and result.dataset.version == 1
    assert scalar(db_url, "SELECT count(*) FROM dataset_versions") == 1


def test_create_again_with_the_same_filter_updates(db_url: str) -> None:
    record_chats(db_url, ["a"], tags={"app": "bot"})
    create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    record_chats(db_url, ["b"], start=T0 + timedelta(hours=1), tags={"app": "bot"})
    again = create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    assert not again.created and again.added == 1 and again.dataset.entries == 2


def test_create_again_with_another_filter_is_refused_and_changes_nothing(db_url: str) -> None:
    record_chats(db_url, ["a"], tags={"app": "bot"})
    create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    with pytest.raises(UsageError, match="exists with another filter"):
        create_dataset(db_url, "bot", CallFilter(model="gpt-4o"))
    assert scalar(db_url, "SELECT count(*) FROM dataset_versions") == 1


def test_relative_since_is_resolved_again_on_update(db_url: str) -> None:
    record_chats(db_url, ["old"], start=T0 - timedelta(days=40))
    record_chats(db_url, ["recent"], start=T0 - timedelta(days=2))
    created = create_dataset(db_url, "recent", CallFilter.from_options(since="30d", now=T0), now=T0)
    assert created.added == 1
    record_chats(db_url, ["newer"], start=T0 + timedelta(days=20))
    updated = update_dataset(db_url, "recent", now=T0 + timedelta(days=21))
    assert (
        updated.added == 1 and updated.dataset.entries == 2
    )  # the first entry stays, though now 23 days old
    assert updated.dataset.filter.since_relative == "30d"


def test_list_and_unknown_names(db_url: str) -> None:
    record_chats(db_url, ["a", "b"], tags={"app": "bot"})
    create_dataset(db_url, "bot", CallFilter(tags={"app": "bot"}))
    create_dataset(db_url, "all", CallFilter())
    assert [(d.name, d.entries) for d in list_datasets(db_url)] == [("all", 2), ("bot", 2)]
    with pytest.raises(NotFoundError, match=r"no dataset named 'nope' \(known: all, bot\)"):
        update_dataset(db_url, "nope")


@pytest.mark.parametrize("name", ["", "has space", "-leading", "x" * 201, "semi;colon"])
def test_bad_names_are_refused(db_url: str, name: str) -> None:
    record_chats(db_url, ["a"])
    with pytest.raises(UsageError, match="invalid dataset name"):
        create_dataset(db_url, name, CallFilter())
    assert scalar(db_url, "SELECT count(*) FROM datasets") == 0


def test_a_missing_store_is_a_store_error(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="flywheel migrate"):
        create_dataset(f"sqlite:///{tmp_path}/none.db", "x", CallFilter())
