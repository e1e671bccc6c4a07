"""The common filter: option parsing (pure) and the WHERE clauses on real SQLite and PostgreSQL stores.

``call_row``/``insert_calls`` build realistic rows (JSON bodies as the SDK stores them) and are
shared with ``test_stats.py`` and ``test_cli.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from itertools import count
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

import flywheel
from flywheel.errors import BadFilterError
from flywheel.query import CallFilter, filter_calls, format_tag, parse_tag, parse_time
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
    assert parse_tag("empty=") == ("empty", "")  # KEY= is the empty value...
    assert parse_tag("prompt_id") == ("prompt_id", None)  # ...KEY alone is "has the tag"
    assert parse_tag(" env ") == ("env", None)
    for key, value in [("a", "b"), ("a", ""), ("a", None), ("q", "x=y")]:
        assert parse_tag(format_tag(key, value)) == (key, value)


@pytest.mark.parametrize("text", ["=value", "", " =x", "  "])
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
        since_relative="2h",
        until_relative="1h",
        status="error",
    )
    assert call_filter.as_dict() == {
        "tags": ["prompt_id=classify", "env=prod"],
        "model": "gpt-4o",
        "status": "error",
        "since": "2024-05-10T10:00:00+00:00",
        "until": "2024-05-10T11:00:00+00:00",
        "since_relative": "2h",
        "until_relative": "1h",
    }
    assert CallFilter.model_validate(call_filter.as_dict()) == call_filter


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


# --- the model: validation, JSON round trip, relative times (pure) --------------------------------


@pytest.mark.parametrize(
    ("criteria", "option", "fragment"),
    [
        ({"status": "fine"}, "--status", "'fine'"),
        ({"min_latency_ms": -1}, "--min-latency", "greater than or equal to 0"),
        ({"max_latency_ms": float("nan")}, "--max-latency", "finite"),
        ({"min_tokens": -5}, "--min-tokens", "-5"),
        ({"max_prompt_tokens": 1.5}, "--max-prompt-tokens", "integer"),
        ({"min_completion_tokens": "many"}, "--min-completion-tokens", "'many'"),
        ({"min_tokens": 50, "max_tokens": 10}, "--min-tokens/--max-tokens", "50"),
        ({"min_latency_ms": 9.5, "max_latency_ms": 2}, "--min-latency/--max-latency", "9.5"),
        ({"search": ""}, "--search", "at least 1 character"),
        ({"tags": [("", "x")]}, "--tag", "must not be empty"),
        ({"tags": 5}, "--tag", "5"),
        ({"tags": ["=x"]}, "--tag", "'=x'"),
        ({"since": "yesterday"}, "--since", "'yesterday'"),
        ({"since_relative": "2024-05-01"}, "--since", "time ago"),
        ({"until": "1w", "since": "1d"}, "--since/--until", "not before"),
        ({"colour": "red"}, "colour", "unknown filter criterion 'colour'"),
    ],
)
def test_invalid_criteria_raise_one_line_naming_the_option(
    criteria: dict[str, Any], option: str, fragment: str
) -> None:
    with pytest.raises(BadFilterError) as caught:
        CallFilter.model_validate(criteria)
    assert caught.value.where == option
    assert fragment in caught.value.message
    assert "\n" not in str(caught.value)
    with pytest.raises(BadFilterError):  # the constructor converts the same way
        CallFilter(**criteria)


def test_tags_accept_mappings_and_option_text_and_convert_like_the_sdk() -> None:
    expected = (("prompt_id", "classify"), ("env", None), ("v", "2"), ("beta", "true"))
    mapping = {"prompt_id": "classify", "env": None, "v": 2, "beta": True}
    assert CallFilter.model_validate({"tags": mapping}).tags == expected
    assert (
        CallFilter.model_validate({"tags": ["prompt_id=classify", "env", "v=2", "beta=true"]}).tags
        == expected
    )
    assert CallFilter.model_validate({"tags": "env"}).tags == (("env", None),)
    assert flywheel.query(tags=mapping).call_filter.tags == expected


def test_the_model_is_frozen_and_hashable() -> None:
    call_filter = CallFilter(model="gpt-4o")
    with pytest.raises(ValidationError):
        call_filter.model = "other"
    assert hash(call_filter) == hash(CallFilter(model="gpt-4o"))
    assert call_filter.replace(model="x") == CallFilter(model="x")
    with pytest.raises(BadFilterError):
        call_filter.replace(min_tokens=-1)  # replace validates, unlike model_copy


def test_json_round_trip_rebuilds_the_filter_exactly() -> None:
    call_filter = CallFilter.from_options(
        tags=["prompt_id=classify", "reviewed", "note="],
        model="gpt-4o",
        endpoint="chat/completions",
        since="30d",
        until="2024-05-10T11:30:00.123456+02:00",
        status="ok",
        search='say "hi" for 50% €',
        min_latency_ms=12.5,
        max_latency_ms=900,
        min_tokens=1,
        max_tokens=4000,
        min_prompt_tokens=0,
        max_completion_tokens=512,
        now=NOW,
    )
    stored = orjson.dumps(call_filter.model_dump(mode="json"))
    assert CallFilter.model_validate(orjson.loads(stored)) == call_filter
    assert CallFilter.model_validate_json(call_filter.model_dump_json()) == call_filter
    # Loaded later, the stored filter still means the same absolute window.
    again = CallFilter.model_validate(orjson.loads(stored), context={"now": NOW + timedelta(days=3)})
    assert again.since == NOW - timedelta(days=30)
    assert again.since_relative == "30d"
    assert again.until == datetime(2024, 5, 10, 9, 30, 0, 123456, tzinfo=UTC)


def test_refreshed_resolves_relative_times_again_and_keeps_absolute_ones() -> None:
    call_filter = CallFilter.from_options(since="30d", until="2024-05-09", model="m", now=NOW)
    later = NOW + timedelta(days=2)
    refreshed = CallFilter.from_options(since="30d", now=NOW).refreshed(later)
    assert refreshed.since == later - timedelta(days=30)
    assert refreshed.since_relative == "30d"
    kept = call_filter.refreshed(later)
    assert kept.until == datetime(2024, 5, 9, tzinfo=UTC) and kept.model == "m"
    assert CallFilter(model="m").refreshed(later) == CallFilter(model="m")
    # A relative text given alone is resolved when the filter is made.
    assert CallFilter.model_validate({"until_relative": "1h"}, context={"now": NOW}).until == NOW - timedelta(
        hours=1
    )


def test_replacing_a_bound_drops_its_relative_text() -> None:
    call_filter = CallFilter.from_options(since="7d", now=NOW)
    replaced = call_filter.replace(since=datetime(2024, 1, 1, tzinfo=UTC))
    assert replaced.since_relative is None
    assert replaced.refreshed(NOW + timedelta(days=1)).since == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("needle", ["%", "_", "'; DROP TABLE calls; --", "50%_off\\"])
def test_search_and_bounds_are_bound_parameters(needle: str) -> None:
    statement = filter_calls(
        sa.select(calls.c.id),
        CallFilter(search=needle, min_latency_ms=1.5, max_tokens=77, tags=(("k", None),)),
    )
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = statement.compile(dialect=dialect)
        assert "DROP" not in str(compiled) and "50" not in str(compiled) and "77" not in str(compiled)
        assert 1.5 in compiled.params.values() and 77 in compiled.params.values()


# --- the new criteria on a real store -------------------------------------------------------------


@pytest.fixture
def varied(db_url: str) -> tuple[str, dict[str, str]]:
    """Calls that differ in body text, latency, tokens and tags; returns (url, name -> call id)."""
    at = NOW - timedelta(hours=1)
    escaped = call_row(at=at, prompt="Straße \u00e9t\u00e9 \U0001f600", latency_ms=None)
    # Stored as json.dumps(ensure_ascii=True) would write it: non-ASCII as \\uXXXX escapes.
    escaped["request"] = json.dumps(orjson.loads(escaped["request"]))
    rows = {
        "percent": call_row(at=at, prompt="Get 50% off today", latency_ms=80.0, prompt_tokens=10),
        "underscore": call_row(at=at, prompt="call get_weather", reply="ok", latency_ms=250.0),
        # What % and _ would also match if they were wildcards.
        "wildcard_bait": call_row(at=at, prompt="Get 50 percent off, call getXweather", latency_ms=None),
        "hostile": call_row(
            at=at, prompt="x'; DROP TABLE calls; --", prompt_tokens=400, completion_tokens=100
        ),
        "quoted": call_row(at=at, prompt='She said "bonjour"', reply="Crème brûlée", tags={"reviewed": ""}),
        "escaped": escaped,
        "upper": call_row(at=at, prompt="The PARIS agreement", tags={"reviewed": "yes"}, completion_tokens=0),
        "no_usage": call_row(at=at, status=None, tags={"env": "prod"}),
        "plain": call_row(at=at, prompt="hello", tags={"env": "prod", "reviewed": "no"}),
    }
    url = migrated(db_url)
    insert_calls(url, rows.values())
    return url, {name: row["id"] for name, row in rows.items()}


def test_tag_presence_and_the_empty_value(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    assert matching(url, CallFilter.from_options(tags=["reviewed"])) == names(ids, "quoted", "upper", "plain")
    assert matching(url, CallFilter.from_options(tags=["reviewed="])) == names(ids, "quoted")
    assert matching(url, CallFilter.from_options(tags=["reviewed", "env=prod"])) == names(ids, "plain")
    assert matching(url, CallFilter.from_options(tags=["reviewed", "env"])) == names(ids, "plain")
    assert matching(url, CallFilter.from_options(tags=["nothing"])) == set()


@pytest.mark.parametrize(
    ("needle", "expected"),
    [
        ("50% off", {"percent"}),
        ("%", {"percent"}),  # a literal percent sign, not "anything"
        ("get_weather", {"underscore"}),  # a literal underscore, not "any character"
        ("get%weather", set()),
        ("'; DROP TABLE calls; --", {"hostile"}),
        ('said "bonjour"', {"quoted"}),  # quotes are \\" in the stored JSON
        ("CRèME BRûLéE", {"quoted"}),  # ASCII letters fold on both databases (all letters on PostgreSQL)
        ("straße", {"escaped"}),  # stored as Stra\\u00dfe
        ("\U0001f600", {"escaped"}),  # a surrogate pair in the stored JSON
        ("the paris AGREEMENT", {"upper"}),
        ("PARIS AGREEMENT", {"upper"}),
        ("Rate limit", set()),
        ("no such text anywhere", set()),
    ],
)
def test_search_is_a_literal_case_insensitive_substring_of_the_bodies(
    varied: tuple[str, dict[str, str]], needle: str, expected: set[str]
) -> None:
    url, ids = varied
    assert matching(url, CallFilter(search=needle)) == names(ids, *expected)


def test_search_looks_in_string_values_not_in_keys_or_json_syntax(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    assert matching(url, CallFilter(search="_")) == names(ids, "underscore")  # not "finish_reason"
    assert matching(url, CallFilter(search="finish_reason")) == set()
    assert matching(url, CallFilter(search='"content":')) == set()
    assert matching(url, CallFilter(search="\\")) == set()  # only the stored text has backslashes
    stop = matching(url, CallFilter(search="stop"))  # the value of finish_reason does match
    assert stop == set(ids.values()) - names(ids, "no_usage")


def test_search_in_a_body_that_is_not_json_on_sqlite(tmp_path: Path) -> None:
    url = migrated(f"sqlite:///{tmp_path / 'store.db'}")
    row = call_row(at=NOW)
    row["request"] = "<binary body: 2048 bytes of audio/wav>"
    insert_calls(url, [row])
    assert matching(url, CallFilter(search="AUDIO/wav")) == {row["id"]}
    assert matching(url, CallFilter(search="Paris")) == {row["id"]}  # the response is JSON
    assert matching(url, CallFilter(search="video")) == set()


def test_search_finds_text_in_the_response_and_the_table_survives(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    assert matching(url, CallFilter(search="brûlée")) == names(ids, "quoted")  # only in the reply
    assert matching(url, CallFilter(search="Paris.")) >= names(ids, "percent", "plain")  # the default reply
    assert len(matching(url, CallFilter())) == len(ids)  # '; DROP TABLE' was only ever a value


def test_latency_bounds_are_inclusive_and_skip_unknown_values(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    assert matching(url, CallFilter(max_latency_ms=80)) == names(ids, "percent")
    assert matching(url, CallFilter(min_latency_ms=250)) == names(ids, "underscore")
    unknown = names(ids, "escaped", "wildcard_bait")  # no latency recorded
    assert matching(url, CallFilter(min_latency_ms=80, max_latency_ms=250)) == set(ids.values()) - unknown
    assert matching(url, CallFilter(min_latency_ms=80.5, max_latency_ms=249.5)) == (
        set(ids.values()) - unknown - names(ids, "percent", "underscore")  # the 120 ms calls
    )
    assert matching(url, CallFilter(min_latency_ms=0)) == set(ids.values()) - unknown


def test_token_bounds_total_prompt_and_completion(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    # Default rows: 12 prompt + 3 completion tokens; "percent" 10 + 3; "hostile" 400 + 100; "upper" 12 + 0.
    assert matching(url, CallFilter(min_tokens=500)) == names(ids, "hostile")
    assert matching(url, CallFilter(max_tokens=13)) == names(ids, "percent", "upper")
    assert matching(url, CallFilter(min_tokens=13, max_tokens=13)) == names(ids, "percent")
    assert matching(url, CallFilter(max_prompt_tokens=10)) == names(ids, "percent")
    assert matching(url, CallFilter(min_prompt_tokens=400, max_prompt_tokens=400)) == names(ids, "hostile")
    assert matching(url, CallFilter(max_completion_tokens=0)) == names(ids, "upper")
    assert matching(url, CallFilter(min_completion_tokens=100)) == names(ids, "hostile")
    # A call without usage (a timeout) matches no token bound, not even min_tokens=0.
    assert ids["no_usage"] not in matching(url, CallFilter(min_tokens=0))
    assert matching(url, CallFilter(min_tokens=0)) == set(ids.values()) - names(ids, "no_usage")


def test_new_criteria_combine_with_the_others(varied: tuple[str, dict[str, str]]) -> None:
    url, ids = varied
    combined = CallFilter.from_options(
        tags=["reviewed"], search="paris", status="ok", max_tokens=20, min_completion_tokens=0, now=NOW
    )
    assert matching(url, combined) == names(ids, "upper", "plain")  # "plain" has the reply Paris.
    window = combined.replace(since=NOW - timedelta(hours=2), until=NOW - timedelta(minutes=30))
    assert matching(url, window) == names(ids, "upper", "plain")
    assert matching(url, combined.replace(since=NOW - timedelta(minutes=30))) == set()
