"""The mock server's category rule: a large model reads the descriptions, a small one only the names.

The pure functions first (parsing the list, the suffix rule, choosing, the reply's format), then
the same rule through the real ``openai`` client on the session's loopback mock server, streamed
and not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from flywheel.mock_server import MockServer
from flywheel.mock_server._categories import (
    PROSE_ABOVE_WORDS,
    CategoryQuestion,
    category_reply,
    choose_category,
    parse_category_question,
    reads_descriptions,
    stem,
)
from flywheel.quickstart import SYSTEM as QUICKSTART_SYSTEM

SYSTEM = (
    'Reply in JSON as {"category": ...} with one category: billing (invoices, charges, refunds, '
    "payment), login (sign in, password, SSO, 2FA, locked out, reset link), bug (error, crash, "
    "broken, fails) or other. Be brief."
)
PLAIN_SYSTEM = SYSTEM.replace('Reply in JSON as {"category": ...} with one', "Reply with one")
CHARGED = "I was charged twice for my invoice."  # names no category; "charged" meets "charges"
NAMED = "The login page says my password expired."  # names its category


def messages(text: str, system: str = SYSTEM) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def question(system: str = SYSTEM) -> CategoryQuestion:
    parsed = parse_category_question(system)
    assert parsed is not None
    return parsed


# --- parsing ----------------------------------------------------------------------------------


def test_the_list_parses_into_names_descriptions_fallback_and_key() -> None:
    parsed = question()
    assert [c.name for c in parsed.categories] == ["billing", "login", "bug", "other"]
    login = parsed.categories[1]
    # Phrases keep their words together; the sentence ends at the "." after "other".
    assert login.description_terms == (
        ("sign", "in"), ("password",), ("sso",), ("2fa",), ("lock", "out"), ("reset", "link"),
    )  # fmt: skip
    assert parsed.categories[3].description_terms == ()
    assert parsed.fallback == "other"
    assert parsed.json_key == "category"
    assert question(PLAIN_SYSTEM).json_key is None


def test_not_a_category_question() -> None:
    assert parse_category_question("You are a helpful assistant.") is None
    assert parse_category_question("Pick one category: billing.") is None  # one is no choice
    # `{"category": ...}` alone is a JSON shape, not a list (the marker needs the colon right after).
    assert parse_category_question('Reply in JSON as {"category": "x"}.') is None


def test_fallback_is_the_last_category_without_a_description_else_the_last() -> None:
    assert question("Categories: spam (offer, winner), ham, news (today).").fallback == "ham"
    assert question("Categories: spam (offer), news (today).").fallback == "news"


def test_suffix_rule_is_the_same_on_both_sides() -> None:
    assert stem("charged") == stem("charges") == stem("charge") == "charg"
    assert stem("crashes") == stem("crash") == "crash"
    assert stem("Failed") == stem("fails") == "fail"
    assert stem("access") == "access"  # -ss is not a plural
    assert stem("need") == "need"  # too short to lose -ed


def test_small_models_are_the_mini_and_nano_ones() -> None:
    assert reads_descriptions("gpt-4o") and reads_descriptions("flywheel:triage")
    assert not reads_descriptions("gpt-4o-mini-2024-07-18")
    assert not reads_descriptions("GPT-4.1-NANO")


# --- choosing ---------------------------------------------------------------------------------


def test_a_large_model_reads_the_descriptions_a_small_one_only_the_names() -> None:
    parsed = question()
    assert choose_category(parsed, CHARGED, descriptions=True) == ("billing", True)
    assert choose_category(parsed, CHARGED, descriptions=False) == ("other", False)
    assert choose_category(parsed, NAMED, descriptions=False) == ("login", True)
    assert choose_category(parsed, "Export crashes and fails.", descriptions=True) == ("bug", True)


def test_most_terms_win_and_ties_go_to_the_category_listed_first() -> None:
    parsed = question()
    # billing: refund (1); login: password, reset link (2).
    assert choose_category(parsed, "Refund? No: my password reset link.", descriptions=True)[0] == "login"
    # one term each: billing is listed first.
    assert choose_category(parsed, "A refund error.", descriptions=True)[0] == "billing"
    # A phrase counts only whole: "sign" without "in" is no term.
    assert choose_category(parsed, "Please sign here.", descriptions=True) == ("other", False)


# --- the reply --------------------------------------------------------------------------------


def test_reply_formats() -> None:
    json_object = {"type": "json_object"}
    assert orjson.loads(category_reply("gpt-4o", messages(CHARGED), None) or "") == {"category": "billing"}
    assert category_reply("gpt-4o", messages(CHARGED, PLAIN_SYSTEM), None) == "billing"
    # response_format asks for JSON when the prompt does not: the default key.
    reply = category_reply("gpt-4o", messages(CHARGED, PLAIN_SYSTEM), json_object)
    assert orjson.loads(reply or "") == {"category": "billing"}
    # A schema is not the category rule's business.
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert category_reply("gpt-4o", messages(CHARGED), schema) is None
    assert category_reply("gpt-4o", messages(CHARGED, "Be helpful."), None) is None


def test_small_model_breaks_the_format_in_two_documented_ways() -> None:
    long_named = NAMED + " " + " ".join(["really"] * PROSE_ABOVE_WORDS)
    long_unnamed = CHARGED + " " + " ".join(["really"] * PROSE_ABOVE_WORDS)
    small = "gpt-4o-mini"
    # Found a name, short: the JSON asked for.
    assert orjson.loads(category_reply(small, messages(NAMED), None) or "") == {"category": "login"}
    # Fell back: a key nobody asked for.
    assert orjson.loads(category_reply(small, messages(CHARGED), None) or "") == {
        "category": "other",
        "confidence": "low",
    }
    # Longer than PROSE_ABOVE_WORDS and JSON asked only in the prompt: prose.
    assert category_reply(small, messages(long_named), None) == "The category is login."
    assert category_reply(small, messages(long_unnamed), None) == "The category is other."
    # response_format holds it to JSON (the extra key stays).
    forced = category_reply(small, messages(long_unnamed), {"type": "json_object"})
    assert orjson.loads(forced or "") == {"category": "other", "confidence": "low"}
    # The large model keeps the format whatever the length.
    assert orjson.loads(category_reply("gpt-4o", messages(long_unnamed), None) or "") == {
        "category": "billing"
    }
    # Exactly PROSE_ABOVE_WORDS words is still short.
    at_limit = " ".join(["login"] * PROSE_ABOVE_WORDS)
    assert orjson.loads(category_reply(small, messages(at_limit), None) or "") == {"category": "login"}


def test_the_quickstart_asks_a_category_question() -> None:
    parsed = question(QUICKSTART_SYSTEM)
    assert [c.name for c in parsed.categories] == ["billing", "login", "bug", "other"]
    assert parsed.json_key == "category"


# --- through the server ------------------------------------------------------------------------


@pytest.fixture
def client(mock_server: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-test", base_url=mock_server.base_url, max_retries=0) as c:
        yield c


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        ("gpt-4o", CHARGED, '{"category":"billing"}'),
        ("gpt-4o-mini", CHARGED, '{"category":"other","confidence":"low"}'),
        ("gpt-4o-mini", NAMED, '{"category":"login"}'),
    ],
)
def test_the_server_answers_by_the_rule_streamed_or_not(
    client: openai.OpenAI, model: str, text: str, expected: str
) -> None:
    body = client.chat.completions.create(model=model, messages=messages(text))  # type: ignore[arg-type]
    assert body.choices[0].message.content == expected
    assert body.choices[0].finish_reason == "stop"
    assert body.usage is not None and body.usage.completion_tokens == (len(expected) + 3) // 4
    again = client.chat.completions.create(model=model, messages=messages(text))  # type: ignore[arg-type]
    assert again.choices[0].message.content == expected  # deterministic
    stream = client.chat.completions.create(model=model, messages=messages(text), stream=True)  # type: ignore[arg-type]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected


def test_the_server_keeps_the_ordinary_reply_for_other_prompts(client: openai.OpenAI) -> None:
    body = client.chat.completions.create(
        model="gpt-4o",
        messages=messages("Hello there", "You are a helpful assistant."),  # type: ignore[arg-type]
    )
    assert (body.choices[0].message.content or "").startswith("Mock reply: Hello there")


def test_tools_still_win_over_the_rule(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    body = client.chat.completions.create(model="gpt-4o", messages=messages(CHARGED), tools=[tool])  # type: ignore[arg-type, list-item]
    assert body.choices[0].finish_reason == "tool_calls"
