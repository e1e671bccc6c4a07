"""input_hash: same messages, tools and settings -> same hash, whatever the key order or delivery."""

from __future__ import annotations

import hashlib
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from sdk._hashing import IGNORED_KEYS, input_hash

REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": [{"type": "text", "text": "My parcel is late"}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "route",
                "parameters": {"type": "object", "properties": {"queue": {"type": "string"}}},
            },
        }
    ],
    "temperature": 0.2,
    "max_tokens": 50,
}


def reorder(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


def test_hash_is_sha256_of_sorted_compact_json() -> None:
    expected_input = {k: v for k, v in REQUEST.items() if k != "model"}
    expected = hashlib.sha256(orjson.dumps(expected_input, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert input_hash(REQUEST) == expected
    assert len(expected) == 64


def test_key_order_does_not_matter_at_any_level() -> None:
    assert list(reorder(REQUEST)) != list(REQUEST)
    assert input_hash(reorder(REQUEST)) == input_hash(REQUEST)


@pytest.mark.parametrize(
    "extra",
    [
        {"model": "gpt-4.1"},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "u-1", "metadata": {"k": "v"}, "store": True},
        {"service_tier": "flex", "prompt_cache_key": "abc", "safety_identifier": "h", "n": 3},
        {"background": True, "prompt_cache_retention": "24h"},
    ],
)
def test_delivery_and_bookkeeping_keys_are_ignored(extra: dict[str, Any]) -> None:
    assert set(extra) <= IGNORED_KEYS
    assert input_hash({**REQUEST, **extra}) == input_hash(REQUEST)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.3},
        {"max_tokens": 51},
        {"seed": 1},
        {"tools": []},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "My parcel is late"}]},
        {"previous_response_id": "resp_1"},
    ],
)
def test_what_the_model_is_asked_changes_the_hash(change: dict[str, Any]) -> None:
    assert input_hash({**REQUEST, **change}) != input_hash(REQUEST)


def test_whole_number_floats_at_top_level_equal_ints() -> None:
    assert input_hash({**REQUEST, "temperature": 1.0}) == input_hash({**REQUEST, "temperature": 1})
    assert input_hash({**REQUEST, "temperature": 1.5}) != input_hash({**REQUEST, "temperature": 1})


def test_any_mapping_is_accepted() -> None:
    assert input_hash(MappingProxyType(REQUEST)) == input_hash(REQUEST)
    assert input_hash({"messages": ({"role": "user", "content": "hi"},)}) == input_hash(
        {"messages": [{"role": "user", "content": "hi"}]}
    )
