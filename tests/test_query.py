"""The common filter: option parsing (pure) and the WHERE clauses on real SQLite and PostgreSQL stores.

``call_row``/``insert_calls`` build realistic rows (JSON bodies as the SDK stores them) and are
shared with ``test_stats.py`` and ``test_cli.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from itertools import count
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from flywheel.errors import BadFilterError
from flywheel.query import CallFilter, filter_calls, parse_tag, parse_time
from sdk import _migrate
from sdk.schema import call_tags, calls

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
_ids = count(1)


def call_row(
    *,
    at: datetime,
    model: str | None = "gpt-4o-mini",
    endpoint: str = "/chat/completions",
    status: int | None = 200,
    prompt: str = "What is the capital of France?",
    reply: str = "Paris.",
    latency_ms: float | None = 120.0,
    ttft_ms: float | None = None,
    prompt_tokens: int | None = 12,
    completion_tokens: int | None = 3,
    cost_usd: float | None = 0.0000036,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One ``calls`` row (plus ``"tags"``) shaped like what the SDK records for a chat completion."""
    call_id = f"{next(_ids):032x}"
    request = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
    }
    response: dict[str, Any] | None
    error = None
    if status is None:
        response, error = None, "ConnectTimeout: timed out"
        prompt_tokens = completion_tokens = None
        cost_usd = None
    elif status >= 400:
        message = "Rate limit reached for requests" if status == 429 else "The server had an error"
        response = {"error": {"message": message, "type": "requests", "code": None}}
        error = f"Error code: {status}"
        prompt_tokens = completion_tokens = None
        cost_usd = None
    else:
        response = {
            "id": f"chatcmpl-{call_id[-8:]}",
            "object": "chat.completion",
            "created": int(at.timestamp()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0),
            },
        }
    total = None if prompt_tokens is None else prompt_tokens + (completion_tokens or 0)
    return {
        "id": call_id,
        "created_at": at,
        "method": "POST",
        "base_url": "https://api.openai.com/v1",
        "endpoint": endpoint,
        "model": model,
        "request": orjson.dumps(request).decode(),
        "response": None if response is None else orjson.dumps(response).decode(),
        "status_code": status,
        "error": error,
        "stream": ttft_ms is not None,
        "complete": True,
        "attempt": 0,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
        "cost_usd": cost_usd,
        "request_id": f"req_{call_id[-8:]}",
        "input_hash": None,
        "tags": dict(tags or {}),
    }


def insert_calls(url: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert rows made by ``call_row`` (tags into ``call_tags``) with plain SQLAlchemy."""
    rows = list(rows)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(calls.insert(), [{k: v for k, v in r.items() if k != "tags"} for r in rows])
            tag_rows = [
                {"call_id": r["id"], "key": key, "value": value}
                for r in rows
                for key, value in r["tags"].items()
            ]
            if tag_rows:
                connection.execute(call_tags.insert(), tag_rows)
    finally:
        engine.dispose()


def migrated(url: str) -> str:
    _migrate.upgrade(url)
    return url


# --- parsing (pure) -----------------------------------------------------------------------------


def test_parse_tag_splits_at_the_first_equals_sign() -> None:
    assert parse_tag("prompt_id=classify") == ("prompt_id", "classify")
    assert parse_tag("query=a=b") == ("query", "a=b")
    assert parse_tag("empty=") == ("empty", "")


@pytest.mark.parametrize("text", ["prompt_id", "=value", "", " =x"])
def test_parse_tag_rejects_text_without_key(text: str) -> None:
    with pytest.raises(BadFilterError) as caught:
        parse_tag(text)
    assert caught.value.where == "--tag"
    assert repr(text) in caught.value.message
    assert str(caught.value).endswith("(--tag)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T08:30", datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        ("2024-05-01 08:30:15", datetime(2024, 5, 1, 8, 30, 15, tzinfo=UTC)),
        ("2024-05-01T08:30:00Z", datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        ("2024-05-01T10:30:00+02:00", datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 45s ", NOW - timedelta(seconds=45)),
    ],
)
def test_parse_time_absolute_and_relative(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_parse_time_relative_to_a_non_utc_now() -> None:
    paris = timezone(timedelta(hours=2))
    assert parse_time("1h", datetime(2024, 5, 1, 14, 0, tzinfo=paris)) == datetime(2024, 5, 1, 11, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "7", "7y", "-3d", "2024-13-01", "1.5h"])
def test_parse_time_rejects_other_text_naming_the_option(text: str) -> None:
    with pytest.raises(BadFilterError) as caught:
        parse_time(text, NOW, option="--until")
    assert caught.value.where == "--until"
    assert repr(text) in caught.value.message
    assert "30m" in caught.value.message  # the message shows what would have worked


def test_call_filter_normalizes_times_and_endpoint() -> None:
    paris = timezone(timedelta(hours=2))
    call_filter = CallFilter(
        since=datetime(2024, 5, 1, 10, 0),  # naive: UTC
        until=datetime(2024, 5, 2, 10, 0, tzinfo=paris),
        endpoint="chat/completions",
    )
    assert call_filter.since == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert call_filter.until == datetime(2024, 5, 2, 8, tzinfo=UTC)
    assert call_filter.endpoint == "/chat/completions"
    assert not call_filter.is_empty()
    assert CallFilter().is_empty()


def test_call_filter_from_options_resolves_relative_times_against_one_now() -> None:
    call_filter = CallFilter.from_options(
        tags=["prompt_id=classify", "env=prod"],
        model="gpt-4o",
        since="2h",
        until="1h",
        status="error",
        now=NOW,
    )
    assert call_filter == CallFilter(
        tags=(("prompt_id", "classify"), ("env", "prod")),
        model="gpt-4o",
        since=NOW - timedelta(hours=2),
        until=NOW - timedelta(hours=1),
        status="error",
    )
    assert call_filter.as_dict() == {
        "tags": ["prompt_id=classify", "env=prod"],
        "model": "gpt-4o",
        "status": "error",
        "since": "2024-05-10T10:00:00+00:00",
        "until": "2024-05-10T11:00:00+00:00",
    }


def test_call_filter_rejects_an_empty_time_range_and_a_bad_status() -> None:
    with pytest.raises(BadFilterError) as caught:
        CallFilter.from_options(since="1h", until="2h", now=NOW)
    assert caught.value.where == "--since/--until"
    with pytest.raises(BadFilterError) as caught:
        CallFilter.from_options(status="fine")
    assert caught.value.where == "--status"


def test_filter_calls_binds_values_as_parameters() -> None:
    hostile = "x' OR '1'='1"
    statement = filter_calls(sa.select(calls.c.id), CallFilter(model=hostile, tags=((hostile, hostile),)))
    compiled = statement.compile()
    assert hostile not in str(compiled)
    assert list(compiled.params.values()).count(hostile) == 3


# --- filtering a real store -----------------------------------------------------------------------


@pytest.fixture
def store(db_url: str) -> tuple[str, dict[str, str], datetime]:
    """A store with calls spread over two weeks; returns (url, name -> call id, the reference now)."""
    now = datetime.now(UTC).replace(microsecond=0)
    rows = {
        "recent_ok": call_row(at=now - timedelta(minutes=10), tags={"prompt_id": "classify", "env": "prod"}),
        "recent_429": call_row(
            at=now - timedelta(minutes=20), status=429, tags={"prompt_id": "classify", "env": "staging"}
        ),
        "hours_ago": call_row(at=now - timedelta(hours=5), model="gpt-4o", tags={"prompt_id": "summarize"}),
        "timeout": call_row(at=now - timedelta(days=2), status=None, tags={"env": "prod"}),
        "redirect": call_row(at=now - timedelta(days=3), status=302),
        "embedding": call_row(
            at=now - timedelta(days=4),
            model="text-embedding-3-small",
            endpoint="/embeddings",
            tags={"env": "prod"},
        ),
        "old_500": call_row(
            at=now - timedelta(days=10), status=500, tags={"prompt_id": "classify", "env": "prod"}
        ),
    }
    url = migrated(db_url)
    insert_calls(url, rows.values())
    return url, {name: row["id"] for name, row in rows.items()}, now


def matching(url: str, call_filter: CallFilter) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.scalars(filter_calls(sa.select(calls.c.id), call_filter)))
    finally:
        engine.dispose()


def names(ids: dict[str, str], *wanted: str) -> set[str]:
    return {ids[name] for name in wanted}


def test_no_filter_matches_everything(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, _ = store
    assert matching(url, CallFilter()) == set(ids.values())


def test_filter_by_model_and_endpoint(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, _ = store
    assert matching(url, CallFilter(model="gpt-4o")) == names(ids, "hours_ago")
    assert matching(url, CallFilter(endpoint="/embeddings")) == names(ids, "embedding")
    assert matching(url, CallFilter(endpoint="embeddings")) == names(ids, "embedding")
    assert matching(url, CallFilter(model="no-such-model")) == set()


def test_filter_by_one_tag(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, _ = store
    assert matching(url, CallFilter(tags=(("prompt_id", "classify"),))) == names(
        ids, "recent_ok", "recent_429", "old_500"
    )


def test_two_tags_must_both_be_present(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, _ = store
    both = CallFilter(tags=(("prompt_id", "classify"), ("env", "prod")))
    assert matching(url, both) == names(ids, "recent_ok", "old_500")
    # "summarize" calls have no env tag at all: having one of the two is not enough.
    assert matching(url, CallFilter(tags=(("prompt_id", "summarize"), ("env", "prod")))) == set()
    # The same key twice with different values can never match.
    assert matching(url, CallFilter(tags=(("env", "prod"), ("env", "staging")))) == set()


def test_filter_by_status(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, _ = store
    assert matching(url, CallFilter(status="ok")) == names(
        ids, "recent_ok", "hours_ago", "redirect", "embedding"
    )
    assert matching(url, CallFilter(status="error")) == names(ids, "recent_429", "timeout", "old_500")


def test_filter_by_relative_time(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, now = store
    assert matching(url, CallFilter.from_options(since="1h", now=now)) == names(
        ids, "recent_ok", "recent_429"
    )
    assert matching(url, CallFilter.from_options(since="1w", until="1d", now=now)) == names(
        ids, "timeout", "redirect", "embedding"
    )
    assert matching(url, CallFilter.from_options(until="1w", now=now)) == names(ids, "old_500")


def test_filter_by_absolute_time_since_inclusive_until_exclusive(
    store: tuple[str, dict[str, str], datetime],
) -> None:
    url, ids, now = store
    five_hours_ago = (now - timedelta(hours=5)).isoformat()
    assert matching(url, CallFilter.from_options(since=five_hours_ago)) == names(
        ids, "recent_ok", "recent_429", "hours_ago"
    )
    assert ids["hours_ago"] not in matching(url, CallFilter.from_options(until=five_hours_ago))
    # The same instant written with another offset and as a naive (UTC) datetime.
    offset = (now - timedelta(days=3)).astimezone(timezone(timedelta(hours=-5))).isoformat()
    naive = (now - timedelta(days=3)).replace(tzinfo=None).isoformat()
    assert matching(url, CallFilter.from_options(since=offset, until="2d", now=now)) == names(ids, "redirect")
    assert matching(url, CallFilter.from_options(since=naive, until="2d", now=now)) == names(ids, "redirect")


def test_filters_combined(store: tuple[str, dict[str, str], datetime]) -> None:
    url, ids, now = store
    call_filter = CallFilter.from_options(
        tags=["prompt_id=classify"],
        model="gpt-4o-mini",
        endpoint="/chat/completions",
        status="error",
        now=now,
    )
    assert matching(url, call_filter) == names(ids, "recent_429", "old_500")
    narrower = CallFilter.from_options(
        tags=["prompt_id=classify", "env=prod"], status="error", since="30d", until="1d", now=now
    )
    assert matching(url, narrower) == names(ids, "old_500")
