"""The validator finds each kind of problem at the right place, passes good lines (which the
cookbook's independent checks pass too), and checks counts and lengths over a dataset."""

from __future__ import annotations

import copy
import json
import types
from typing import Any

import pytest
from cookbook_checks import cookbook_format_errors

from flywheel import finetune_format, split, tokens, validate
from flywheel.validate import (
    ISSUE_CODES,
    MIN_EXAMPLES,
    Issue,
    training_token_limit,
    validate_chat_example,
    validate_dataset,
    validate_preference_example,
)

GOOD_PLAIN: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You classify support tickets."},
        {"role": "user", "content": "My parcel is late", "name": "customer"},
        {"role": "assistant", "content": "shipping"},
    ]
}
GOOD_WEIGHTED: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?", "weight": 0},
        {"role": "user", "content": "Track order 42"},
        {"role": "assistant", "content": "Order 42 arrives Friday.", "weight": 1},
    ]
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "track",
            "description": "Track an order.",
            "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}},
        },
    }
]
GOOD_TOOLS: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Where are orders 42 and 43?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "track", "arguments": '{"order": 42}'}},
                {"id": "c2", "type": "function", "function": {"name": "track", "arguments": '{"order": 43}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Friday"},
        {"role": "tool", "tool_call_id": "c2", "content": "Monday"},
        {"role": "assistant", "content": "42 arrives Friday, 43 on Monday."},
    ],
    "tools": TOOLS,
    "parallel_tool_calls": True,
}


def issues_of(example: Any) -> list[tuple[str, str]]:
    return [(issue.code, issue.field) for issue in validate_chat_example(example, entry="e1")]


def broken(example: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``example`` with ``value`` set at ``path`` (``messages.2.content``);
    ``DELETE`` removes the key instead."""
    changed = copy.deepcopy(example)
    *parents, last = path.split(".")
    target: Any = changed
    for step in parents:
        target = target[int(step)] if isinstance(target, list) else target[step]
    key: Any = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return changed


DELETE = object()


@pytest.mark.parametrize("example", [GOOD_PLAIN, GOOD_WEIGHTED, GOOD_TOOLS])
def test_good_examples_pass(example: dict[str, Any]) -> None:
    assert validate_chat_example(example) == []


@pytest.mark.parametrize("example", [GOOD_PLAIN, GOOD_WEIGHTED])
def test_good_examples_without_tools_pass_the_cookbook_too(example: dict[str, Any]) -> None:
    assert cookbook_format_errors([json.loads(json.dumps(example))]) == {}


# The cookbook's own checks, each found where it is.
@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (["not", "an", "object"], [("data_type", "")]),
        ({"messages": []}, [("missing_messages_list", "messages")]),
        (
            {"prompt": "hi", "completion": "yo"},
            [
                ("unrecognized_key", "prompt"),
                ("unrecognized_key", "completion"),
                ("missing_messages_list", "messages"),
            ],
        ),
        (broken(GOOD_PLAIN, "messages.1.content", DELETE), [("message_missing_key", "messages[1].content")]),
        (broken(GOOD_PLAIN, "messages.0.role", DELETE), [("message_missing_key", "messages[0].role")]),
        (broken(GOOD_PLAIN, "messages.2.mood", "happy"), [("message_unrecognized_key", "messages[2].mood")]),
        (broken(GOOD_PLAIN, "messages.0.role", "narrator"), [("unrecognized_role", "messages[0].role")]),
        (broken(GOOD_PLAIN, "messages.1.content", ""), [("missing_content", "messages[1].content")]),
        (broken(GOOD_PLAIN, "messages.2.content", None), [("missing_content", "messages[2].content")]),
        (
            broken(GOOD_PLAIN, "messages.2.role", "user"),
            [("example_missing_assistant_message", "messages")],
        ),
    ],
)
def test_cookbook_error_classes(example: Any, expected: list[tuple[str, str]]) -> None:
    assert issues_of(example) == expected


def test_cookbook_error_classes_agree_with_the_cookbook() -> None:
    # The same broken lines, seen by the independent checks: each class is found by both.
    for path, value, code in [
        ("messages.1.content", DELETE, "message_missing_key"),
        ("messages.2.mood", "happy", "message_unrecognized_key"),
        ("messages.0.role", "narrator", "unrecognized_role"),
        ("messages.1.content", "", "missing_content"),
    ]:
        line = broken(GOOD_PLAIN, path, value)
        assert code in cookbook_format_errors([line])
        assert code in {issue.code for issue in validate_chat_example(line)}


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (broken(GOOD_PLAIN, "messages.1.content", 42), [("invalid_content", "messages[1].content")]),
        (broken(GOOD_PLAIN, "messages.1.name", ""), [("invalid_name", "messages[1].name")]),
        (
            broken(GOOD_PLAIN, "messages.1.content", [{"type": "input_audio", "input_audio": {}}]),
            [("invalid_content", "messages[1].content[0].type")],
        ),
        (
            broken(
                GOOD_PLAIN,
                "messages.0.content",
                [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
            ),
            [("invalid_content", "messages[0].content[0].type")],
        ),
        (broken(GOOD_PLAIN, "messages.1", "hello"), [("message_data_type", "messages[1]")]),
        (broken(GOOD_WEIGHTED, "messages.3.weight", 0.5), [("invalid_weight", "messages[3].weight")]),
        (broken(GOOD_WEIGHTED, "messages.3.weight", True), [("invalid_weight", "messages[3].weight")]),
        (broken(GOOD_WEIGHTED, "messages.0.weight", 1), [("invalid_weight", "messages[0].weight")]),
        (broken(GOOD_WEIGHTED, "messages.3.weight", 0), [("no_trained_message", "messages")]),
    ],
)
def test_structure_errors(example: Any, expected: list[tuple[str, str]]) -> None:
    assert issues_of(example) == expected


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "messages.1.tool_calls.0.id",
            DELETE,
            [
                ("invalid_tool_call", "messages[1].tool_calls[0].id"),
                ("orphan_tool_message", "messages[2].tool_call_id"),
            ],
        ),
        ("messages.1.tool_calls.0.type", "code", [("invalid_tool_call", "messages[1].tool_calls[0].type")]),
        (
            "messages.1.tool_calls.0.function.arguments",
            {"order": 42},
            [("invalid_tool_call", "messages[1].tool_calls[0].function.arguments")],
        ),
        (
            "messages.1.tool_calls.0.function.arguments",
            "{order: 42",
            [("invalid_tool_call", "messages[1].tool_calls[0].function.arguments")],
        ),
        (
            "messages.1.tool_calls.0.function.name",
            "",
            [("invalid_tool_call", "messages[1].tool_calls[0].function.name")],
        ),
        (
            "messages.1.tool_calls",
            [],
            [
                ("missing_content", "messages[1].content"),
                ("invalid_tool_call", "messages[1].tool_calls"),
                ("orphan_tool_message", "messages[2].tool_call_id"),
                ("orphan_tool_message", "messages[3].tool_call_id"),
            ],
        ),
        (
            "messages.1.tool_calls.1.id",
            "c1",
            [
                ("duplicate_tool_call_id", "messages[1].tool_calls[1].id"),
                ("orphan_tool_message", "messages[3].tool_call_id"),
            ],
        ),
        (
            "messages.3.tool_call_id",
            "c9",
            [
                ("orphan_tool_message", "messages[3].tool_call_id"),
                ("unanswered_tool_call", "messages[1].tool_calls[1]"),
            ],
        ),
        (
            "messages.3.tool_call_id",
            DELETE,
            [
                ("message_missing_key", "messages[3].tool_call_id"),
                ("unanswered_tool_call", "messages[1].tool_calls[1]"),
            ],
        ),
        (
            "messages.3.role",
            "user",
            [
                ("unanswered_tool_call", "messages[1].tool_calls[1]"),
                ("message_unrecognized_key", "messages[3].tool_call_id"),
            ],
        ),
        (
            "messages.1.tool_calls.0.function.name",
            "teleport",
            [("unknown_tool", "messages[1].tool_calls[0].function.name")],
        ),
        ("parallel_tool_calls", "yes", [("invalid_parallel_tool_calls", "parallel_tool_calls")]),
        ("parallel_tool_calls", False, [("parallel_tool_calls_disabled", "messages[1].tool_calls")]),
        (
            "tools.0.type",
            "retrieval",
            [
                ("invalid_tools", "tools[0].type"),
                ("unknown_tool", "messages[1].tool_calls[0].function.name"),
                ("unknown_tool", "messages[1].tool_calls[1].function.name"),
            ],
        ),
        (
            "tools.0.function.name",
            "track orders",
            [
                ("invalid_tools", "tools[0].function.name"),
                ("unknown_tool", "messages[1].tool_calls[0].function.name"),
                ("unknown_tool", "messages[1].tool_calls[1].function.name"),
            ],
        ),
        ("tools.0.function.parameters", "order:int", [("invalid_tools", "tools[0].function.parameters")]),
        ("tools", {"track": {}}, [("invalid_tools", "tools")]),
        ("messages.0.tool_calls", [], [("message_unrecognized_key", "messages[0].tool_calls")]),
    ],
)
def test_tool_errors(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert issues_of(broken(GOOD_TOOLS, path, value)) == expected


def test_a_tool_call_may_be_the_output_but_must_be_answered_before_the_next_turn() -> None:
    calling = {"messages": GOOD_TOOLS["messages"][:2], "tools": TOOLS}
    assert issues_of(calling) == []
    skipped = {
        "messages": [*GOOD_TOOLS["messages"][:2], {"role": "assistant", "content": "Done."}],
        "tools": TOOLS,
    }
    assert issues_of(skipped) == [
        ("unanswered_tool_call", "messages[1].tool_calls[0]"),
        ("unanswered_tool_call", "messages[1].tool_calls[1]"),
    ]


def test_trailing_user_message_is_a_warning() -> None:
    example = {"messages": [*GOOD_PLAIN["messages"], {"role": "user", "content": "thanks"}]}
    [issue] = validate_chat_example(example, entry="train.jsonl:7")
    assert (issue.code, issue.field, issue.severity) == (
        "last_message_not_assistant",
        "messages[3]",
        "warning",
    )
    assert str(issue).startswith("train.jsonl:7: messages[3]: ")


def test_issue_codes_are_documented_and_issues_name_the_entry() -> None:
    issues = validate_chat_example(
        broken(GOOD_TOOLS, "messages.1.tool_calls.0.type", "code"), entry="call-17"
    )
    assert all(issue.entry == "call-17" and issue.code in ISSUE_CODES for issue in issues)
    assert issues[0].as_dict() == {
        "code": "invalid_tool_call",
        "severity": "error",
        "entry": "call-17",
        "field": "messages[1].tool_calls[0].type",
        "message": "type must be 'function', not 'code'",
    }


GOOD_PREFERENCE: dict[str, Any] = {
    "input": {"messages": [{"role": "user", "content": "Summarize: the parcel is late."}], "tools": TOOLS},
    "preferred_output": [{"role": "assistant", "content": "Your parcel is delayed."}],
    "non_preferred_output": [{"role": "assistant", "content": "ok"}],
}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("input", DELETE, [("missing_input", "input")]),
        ("input.messages", [], [("missing_messages_list", "input.messages")]),
        ("input.functions", [], [("unrecognized_key", "input.functions")]),
        (
            "input.messages",
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            [("input_ends_with_assistant", "input.messages[1]")],
        ),
        (
            "input.messages.0.content",
            [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
            [("invalid_content", "input.messages[0].content[0].type")],
        ),
        ("preferred_output", {"role": "assistant", "content": "x"}, [("invalid_output", "preferred_output")]),
        (
            "non_preferred_output",
            [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
            [("invalid_output", "non_preferred_output")],
        ),
        ("preferred_output.0.role", "user", [("invalid_output", "preferred_output[0].role")]),
        ("preferred_output.0.content", "", [("missing_content", "preferred_output[0].content")]),
        ("preferred_output.0.weight", 1, [("invalid_weight", "preferred_output[0].weight")]),
        (
            "non_preferred_output.0.content",
            "Your parcel is delayed.",
            [("identical_outputs", "non_preferred_output")],
        ),
        ("messages", [], [("unrecognized_key", "messages")]),
        (
            "input.messages",
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello", "weight": 1},
                {"role": "user", "content": "Summarize it"},
            ],
            [("invalid_weight", "input.messages[1].weight")],
        ),
    ],
)
def test_preference_errors(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert validate_preference_example(GOOD_PREFERENCE) == []
    found = validate_preference_example(broken(GOOD_PREFERENCE, path, value), entry="e1")
    assert [(issue.code, issue.field) for issue in found] == expected


def test_preference_output_may_call_a_defined_tool() -> None:
    calling = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "track", "arguments": '{"order": 1}'}}
        ],
    }
    assert validate_preference_example(broken(GOOD_PREFERENCE, "preferred_output", [calling])) == []
    calling["tool_calls"][0]["function"]["name"] = "teleport"  # type: ignore[index]
    found = validate_preference_example(broken(GOOD_PREFERENCE, "preferred_output", [calling]))
    assert [(issue.code, issue.field) for issue in found] == [
        ("unknown_tool", "preferred_output[0].tool_calls[0].function.name")
    ]


def lines(example: Any, count: int) -> list[tuple[str, Any]]:
    return [(f"train.jsonl:{n}", example) for n in range(1, count + 1)]


def test_dataset_passes_with_enough_good_examples() -> None:
    report = validate_dataset(lines(GOOD_PLAIN, MIN_EXAMPLES), base_model="gpt-4o-mini-2024-07-18")
    assert report.ok and report.issues == ()
    assert report.examples == MIN_EXAMPLES
    assert report.token_limit == 65_536
    assert set(report.token_counts.values()) == {report.token_counts["train.jsonl:1"]}
    assert report.token_counts["train.jsonl:1"] > 10


def test_dataset_needs_the_minimum_count() -> None:
    report = validate_dataset(lines(GOOD_PLAIN, 9), base_model="gpt-4o-mini-2024-07-18")
    assert not report.ok
    assert [(i.code, i.entry) for i in report.issues] == [("too_few_examples", None)]
    assert validate_dataset(lines(GOOD_PLAIN, 3), min_examples=0).ok  # e.g. a test file


def test_dataset_checks_tokens_against_the_limit() -> None:
    long = broken(GOOD_PLAIN, "messages.1.content", "word " * 200)
    report = validate_dataset(
        [*lines(GOOD_PLAIN, 10), ("call-99", long)], base_model="gpt-4o", token_limit=100
    )
    [issue] = report.issues
    assert (issue.code, issue.entry) == ("too_many_tokens", "call-99")
    assert str(report.token_counts["call-99"]) in issue.message
    assert report.token_counts["call-99"] > 200


def test_dataset_report_counts_per_code() -> None:
    bad_role = broken(GOOD_PLAIN, "messages.0.role", "narrator")
    examples = [*lines(GOOD_PLAIN, 8), ("a", bad_role), ("b", bad_role), ("c", "garbage")]
    report = validate_dataset(examples, base_model="my-local-model")
    assert report.counts_by_code() == {"unrecognized_role": 2, "data_type": 1, "unknown_base_model": 1}
    summary = report.as_dict()
    assert (summary["ok"], summary["examples"], summary["errors"], summary["warnings"]) == (False, 11, 3, 1)
    assert "c" not in report.token_counts


def test_dataset_of_preference_examples() -> None:
    report = validate_dataset(lines(GOOD_PREFERENCE, 10), method="dpo", base_model="gpt-4.1-mini-2025-04-14")
    assert report.ok and report.issues == ()
    chat_report = validate_dataset(lines(GOOD_PREFERENCE, 10), method="supervised")
    assert chat_report.counts_by_code()["missing_messages_list"] == 10


def test_token_limits_by_base_model() -> None:
    assert training_token_limit("gpt-3.5-turbo-0613") == 4_096
    assert training_token_limit("gpt-4o-mini") == 65_536
    assert training_token_limit("ft:gpt-3.5-turbo-0125:acme::abc") == 16_385
    assert training_token_limit("llama-3-8b") is None


def test_validation_never_raises_on_junk() -> None:
    junk: list[Any] = [
        None,
        {"messages": "hi"},
        {"messages": [None, 3, {"role": ["assistant"]}, {"role": "assistant", "content": {"a": 1}}]},
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [None, {"function": 5}]}]},
        {"messages": [{"role": "assistant", "content": "x"}], "tools": [None, {"type": "function"}]},
        {"input": {"messages": [{}]}, "preferred_output": [[]], "non_preferred_output": None},
    ]
    for example in junk:
        assert all(isinstance(issue, Issue) for issue in validate_chat_example(example))
        assert all(isinstance(issue, Issue) for issue in validate_preference_example(example))
    assert not validate_dataset([(str(n), example) for n, example in enumerate(junk)], min_examples=0).ok


@pytest.mark.parametrize("module", [split, finetune_format, validate, tokens])
def test_export_lists_are_complete(module: types.ModuleType) -> None:
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (name.isupper() or getattr(value, "__module__", None) == module.__name__)
    }
    assert defined <= set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
