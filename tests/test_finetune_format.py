"""Recorded chat calls become OpenAI fine-tuning lines (supervised and preference), and prune rules
remove a repeated instruction the same way for training and inference."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cookbook_checks import cookbook_format_errors

from flywheel.errors import UsageError
from flywheel.finetune_format import (
    DropSystemPrompt,
    StripPrefix,
    UnconvertibleCallError,
    apply_prune_rules,
    chat_example,
    output_message,
    preference_example,
    prune_rule_from_dict,
    text_sha256,
)
from flywheel.validate import validate_chat_example, validate_dataset, validate_preference_example

SYSTEM_PROMPT = "You are the support bot of Acme. Be brief and polite."


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    """A recorded chat.completion response body with one choice."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


PLAIN_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Where is my parcel?"},
    ],
    "temperature": 0.2,
    "max_tokens": 50,
}
PLAIN_RESPONSE = completion(
    {"role": "assistant", "content": "It ships today.", "refusal": None, "annotations": []}
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str, city: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }


def test_plain_chat_call() -> None:
    before = copy.deepcopy(PLAIN_REQUEST)
    example = chat_example(PLAIN_REQUEST, PLAIN_RESPONSE)
    assert example == {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Where is my parcel?"},
            {"role": "assistant", "content": "It ships today."},
        ]
    }
    assert before == PLAIN_REQUEST  # inputs are not mutated
    assert validate_chat_example(example) == []
    assert cookbook_format_errors([example]) == {}


def test_tool_call_turn_and_final_answer() -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "Paris")], "refusal": None},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    }
    example = chat_example(request, completion({"role": "assistant", "content": "21°C and sunny."}))
    assert example["tools"] == [WEATHER_TOOL]
    assert "tool_choice" not in example
    assert example["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("call_1", "Paris")],
    }
    assert example["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
    assert example["messages"][3] == {"role": "assistant", "content": "21°C and sunny."}
    assert validate_chat_example(example) == []
    # The cookbook's checks predate tools: they flag exactly the tool-shaped parts.
    assert set(cookbook_format_errors([example])) == {
        "message_unrecognized_key",
        "unrecognized_role",
        "missing_content",
    }


def test_parallel_tool_calls_as_the_output() -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": True,
    }
    response = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_a", "Paris"), call("call_b", "Rome")],
        },
        finish_reason="tool_calls",
    )
    example = chat_example(request, response)
    assert example["parallel_tool_calls"] is True
    assert [c["id"] for c in example["messages"][-1]["tool_calls"]] == ["call_a", "call_b"]
    assert validate_chat_example(example) == []
    # With parallel calls switched off, the same output is inconsistent, and the validator says so.
    serial = chat_example({**request, "parallel_tool_calls": False}, response)
    assert serial["parallel_tool_calls"] is False
    assert [issue.code for issue in validate_chat_example(serial)] == ["parallel_tool_calls_disabled"]


def test_content_parts_developer_role_and_images() -> None:
    request = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "No emoji."}],
            },
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/dog.png", "detail": "low"},
                    },
                ],
            },
        ],
    }
    messages = chat_example(request, completion({"role": "assistant", "content": "A dog."}))["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief.\nNo emoji."}
    assert messages[1] == {"role": "user", "content": "What is this?"}
    assert messages[2] == {"role": "assistant", "content": "A cat."}
    assert messages[3]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/dog.png", "detail": "low"},
    }
    assert validate_chat_example({"messages": messages}) == []


def test_audio_parts_and_unknown_roles_are_refused_with_the_field() -> None:
    audio = {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}}],
    }
    with pytest.raises(UnconvertibleCallError) as info:
        chat_example({"messages": [audio]}, PLAIN_RESPONSE)
    assert info.value.where == "request.messages[0].content[0]"
    with pytest.raises(UnconvertibleCallError) as info:
        chat_example({"messages": [{"role": "critic", "content": "x"}]}, PLAIN_RESPONSE)
    assert info.value.where == "request.messages[0].role"
    with pytest.raises(UnconvertibleCallError, match="no choices"):
        chat_example(PLAIN_REQUEST, {"error": {"message": "rate limited"}})
    with pytest.raises(UnconvertibleCallError, match="no messages"):
        chat_example({"model": "gpt-4o", "input": "hi"}, PLAIN_RESPONSE)


def test_an_explicit_output_replaces_the_recorded_one_and_train_on_last() -> None:
    request = {
        **PLAIN_REQUEST,
        "messages": [
            *PLAIN_REQUEST["messages"],
            {"role": "assistant", "content": "Let me check."},
            {"role": "user", "content": "Well?"},
        ],
    }
    example = chat_example(
        request, PLAIN_RESPONSE, output={"content": "It left the depot at 9:00."}, train_on="last"
    )
    assistants = [m for m in example["messages"] if m["role"] == "assistant"]
    assert assistants == [
        {"role": "assistant", "content": "Let me check.", "weight": 0},
        {"role": "assistant", "content": "It left the depot at 9:00.", "weight": 1},
    ]
    assert validate_chat_example(example) == []
    assert cookbook_format_errors([example]) == {}


def test_refusal_becomes_content_and_other_choices_can_be_taken() -> None:
    refused = completion({"role": "assistant", "content": None, "refusal": "I can't help with that."})
    assert output_message(refused) == {"role": "assistant", "content": "I can't help with that."}
    two = completion({"role": "assistant", "content": "first"})
    two["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
    )
    assert output_message(two, choice=1)["content"] == "second"
    with pytest.raises(UnconvertibleCallError, match="choice 2"):
        output_message(two, choice=2)


def test_legacy_functions_are_kept() -> None:
    request = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "functions": [WEATHER_TOOL["function"]],
    }
    response = completion(
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    )
    example = chat_example(request, response)
    assert example["functions"] == [WEATHER_TOOL["function"]]
    assert example["messages"][-1]["function_call"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert validate_chat_example(example) == []


def test_preference_example() -> None:
    example = preference_example(
        {**PLAIN_REQUEST, "tools": [WEATHER_TOOL], "parallel_tool_calls": False},
        preferred={"content": "It left the depot at 9:00.", "weight": 1},
        non_preferred=output_message(PLAIN_RESPONSE),
    )
    assert example == {
        "input": {
            "messages": PLAIN_REQUEST["messages"],
            "tools": [WEATHER_TOOL],
            "parallel_tool_calls": False,
        },
        "preferred_output": [{"role": "assistant", "content": "It left the depot at 9:00."}],
        "non_preferred_output": [{"role": "assistant", "content": "It ships today."}],
    }
    assert validate_preference_example(example) == []


def test_drop_system_prompt_rule() -> None:
    rule = DropSystemPrompt(text_sha256(SYSTEM_PROMPT))
    example = chat_example(PLAIN_REQUEST, PLAIN_RESPONSE, prune_rules=[rule])
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]
    # Inference applies the same rule, read back from its stored form, to raw request messages.
    stored = json.loads(json.dumps(rule.as_dict()))
    assert stored == {"kind": "drop_system_prompt", "text_sha256": text_sha256(SYSTEM_PROMPT)}
    at_inference = apply_prune_rules(PLAIN_REQUEST["messages"], [prune_rule_from_dict(stored)])
    assert at_inference == [{"role": "user", "content": "Where is my parcel?"}]
    # Another system prompt is left alone.
    other = [{"role": "system", "content": "Something else."}]
    assert apply_prune_rules(other, [rule]) == other


def test_strip_prefix_rule() -> None:
    rule = StripPrefix("You are the support bot of Acme. ")
    messages = [
        {"role": "developer", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "You are the support bot of Acme. Hi"},  # other roles untouched
    ]
    pruned = apply_prune_rules(messages, [rule])
    assert pruned == [{"role": "developer", "content": "Be brief and polite."}, messages[1]]
    assert messages[0]["content"] == SYSTEM_PROMPT  # not mutated
    whole = StripPrefix(SYSTEM_PROMPT)
    assert apply_prune_rules(messages, [whole]) == [messages[1]]  # nothing left: message dropped
    assert prune_rule_from_dict(rule.as_dict()) == rule
    with pytest.raises(UsageError, match="not a prune rule"):
        prune_rule_from_dict({"kind": "rewrite_everything"})


def test_converted_lines_written_as_jsonl_pass_the_validator_and_the_cookbook(tmp_path: Path) -> None:
    questions = [f"Where is parcel {n}?" for n in range(12)]
    examples = [
        chat_example(
            {
                **PLAIN_REQUEST,
                "messages": [PLAIN_REQUEST["messages"][0], {"role": "user", "content": question}],
            },
            completion({"role": "assistant", "content": f"Parcel {n} ships today.", "refusal": None}),
            prune_rules=[StripPrefix("You are the support bot of Acme. ")],
        )
        for n, question in enumerate(questions)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples))
    parsed = [json.loads(line) for line in path.read_text().splitlines()]
    report = validate_dataset(
        [(f"train.jsonl:{n}", line) for n, line in enumerate(parsed, 1)], base_model="gpt-4o-mini-2024-07-18"
    )
    assert report.ok and report.issues == ()
    assert cookbook_format_errors(parsed) == {}
    assert parsed[0]["messages"][0] == {"role": "system", "content": "Be brief and polite."}
