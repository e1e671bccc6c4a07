"""The evaluation's scoring: metric definitions, intervals and user scorers, on hand-built cases.

The expected numbers are computed by hand in this file (counts per metric) and the intervals by
the closed formulas written out here, independently of ``flywheel.evaluate.intervals``; a few are
also checked against published tables (Newcombe 1998 for Wilson, the usual t table).
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.errors import UsageError
from flywheel.evaluate.intervals import Estimate, mean_interval, student_t_quantile, wilson
from flywheel.evaluate.metrics import (
    METRIC_GROUPS,
    METRIC_NAMES,
    ExampleScores,
    aggregate,
    message_text,
    normalize_text,
    per_example_score,
    score_example,
)
from flywheel.evaluate.scorers import ScorerError, load_scorer, load_scorers, score_with

Z = 1.959963984540054  # the standard normal 0.975 quantile


def hand_wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval, written out: (p + z²/2n ± z√(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = successes / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


def assert_estimate(estimate: Estimate, successes: int, n: int) -> None:
    low, high = hand_wilson(successes, n)
    assert estimate.n == n
    assert estimate.value == pytest.approx(successes / n, abs=1e-12)
    assert estimate.ci_low == pytest.approx(max(low, 0.0), abs=1e-12)
    assert estimate.ci_high == pytest.approx(min(high, 1.0), abs=1e-12)


def text(content: str | None) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def calls(*pairs: tuple[str, str], content: str | None = None) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(pairs)
        ],
    }


JSON_REF = text('{"label": "positive", "score": 3}')
WEATHER = ("get_weather", '{"city": "Paris"}')
TIME = ("get_time", '{"tz": "CET", "hour24": true}')

# (output, reference, hand-computed scores of the metrics that apply, fields)
CASE: list[tuple[dict[str, Any] | None, dict[str, Any], dict[str, float], dict[str, bool]]] = [
    # 1. right, keys reordered, spacing and case differ (normalized strings): all 1
    (
        text('{ "score": 3,\n  "label": " Positive " }'),
        JSON_REF,
        {
            "exact_match": 1,
            "json_valid": 1,
            "json_required_keys": 1,
            "json_no_extra_keys": 1,
            "field_accuracy": 1,
        },
        {"label": True, "score": True},
    ),
    # 2. a wrong value, and "3" is not 3
    (
        text('{"label": "negative", "score": "3"}'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 1,
            "json_required_keys": 1,
            "json_no_extra_keys": 1,
            "field_accuracy": 0,
        },
        {"label": False, "score": False},
    ),
    # 3. a missing key
    (
        text('{"score": 3.0}'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 1,
            "json_required_keys": 0,
            "json_no_extra_keys": 1,
            "field_accuracy": 0.5,
        },
        {"label": False, "score": True},
    ),
    # 4. an extra key
    (
        text('{"label": "positive", "score": 3, "why": "upbeat"}'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 1,
            "json_required_keys": 1,
            "json_no_extra_keys": 0,
            "field_accuracy": 1,
        },
        {"label": True, "score": True},
    ),
    # 5. a wrong key (renamed): missing one and extra one
    (
        text('{"Label": "positive", "score": 3}'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 1,
            "json_required_keys": 0,
            "json_no_extra_keys": 0,
            "field_accuracy": 0.5,
        },
        {"label": False, "score": True},
    ),
    # 6. unparseable JSON (a code fence)
    (
        text('```json\n{"label": "positive", "score": 3}\n```'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 0,
            "json_required_keys": 0,
            "json_no_extra_keys": 0,
            "field_accuracy": 0,
        },
        {"label": False, "score": False},
    ),
    # 7. valid JSON, wrong top-level type
    (
        text('["positive", 3]'),
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 0,
            "json_required_keys": 0,
            "json_no_extra_keys": 0,
            "field_accuracy": 0,
        },
        {"label": False, "score": False},
    ),
    # 8. no answer
    (
        None,
        JSON_REF,
        {
            "exact_match": 0,
            "json_valid": 0,
            "json_required_keys": 0,
            "json_no_extra_keys": 0,
            "field_accuracy": 0,
        },
        {"label": False, "score": False},
    ),
    # 9. right tool, wrong argument
    (
        calls(("get_weather", '{"city": "London"}')),
        calls(WEATHER),
        {"exact_match": 0, "tool_name_match": 1, "tool_args_match": 0},
        {},
    ),
    # 10. two calls in the other order, arguments spaced and ordered differently: a tie in order
    (
        calls(("get_time", '{ "hour24" : true, "tz": "CET" }'), ("get_weather", '{"city":"Paris"}')),
        calls(WEATHER, TIME),
        {"exact_match": 1, "tool_name_match": 1, "tool_args_match": 1},
        {},
    ),
    # 11. right name, unparseable arguments
    (
        calls(("get_weather", "{city: Paris}")),
        calls(WEATHER),
        {"exact_match": 0, "tool_name_match": 1, "tool_args_match": 0},
        {},
    ),
    # 12. the call made twice: a multiset, so a repeat is not a match
    (
        calls(WEATHER, WEATHER),
        calls(WEATHER),
        {"exact_match": 0, "tool_name_match": 0, "tool_args_match": 0},
        {},
    ),
    # 13. text instead of the call
    (
        text("It is sunny in Paris."),
        calls(WEATHER),
        {"exact_match": 0, "tool_name_match": 0, "tool_args_match": 0},
        {},
    ),
    # 14. no answer to a tool reference
    (None, calls(WEATHER), {"exact_match": 0, "tool_name_match": 0, "tool_args_match": 0}, {}),
    # 15. plain text equal after normalization
    (text("  the ANSWER\n\tis  42. "), text("The answer is 42."), {"exact_match": 1}, {}),
    # 16. plain text that differs
    (text("The answer is 41."), text("The answer is 42."), {"exact_match": 0}, {}),
]


@pytest.mark.parametrize("number", range(1, len(CASE) + 1))
def test_each_example_scores_as_computed_by_hand(number: int) -> None:
    output, reference, expected, fields = CASE[number - 1]
    scores = score_example(output, reference)
    assert dict(scores.metrics) == expected
    assert dict(scores.fields) == fields


def test_the_hand_built_case_aggregates_to_the_hand_computed_values_and_intervals() -> None:
    summary = aggregate([score_example(output, reference) for output, reference, _, _ in CASE])
    # Counted from the comments above: 16 examples, 8 JSON references (2 fields each), 6 tool ones.
    expected = {
        "exact_match": (3, 16),  # examples 1, 10, 15
        "json_valid": (5, 8),  # 1-5
        "json_required_keys": (3, 8),  # 1, 2, 4
        "json_no_extra_keys": (3, 8),  # 1, 2, 3 (4 and 5 have an extra key, 6-8 no object)
        "field_accuracy": (6, 16),  # fields right: 2 + 0 + 1 + 2 + 1 + 0 + 0 + 0
        "tool_name_match": (3, 6),  # 9, 10, 11
        "tool_args_match": (1, 6),  # 10
    }
    assert list(summary.metrics) == list(METRIC_NAMES)
    for name, (successes, n) in expected.items():
        assert_estimate(summary.metrics[name], successes, n)
    assert list(summary.fields) == ["label", "score"]
    assert_estimate(summary.fields["label"], 2, 8)  # 1, 4
    assert_estimate(summary.fields["score"], 4, 8)  # 1, 3, 4, 5
    # the report's rounded form, e.g. 3/16
    low, high = hand_wilson(3, 16)
    assert summary.as_dict()["metrics"]["exact_match"] == {
        "value": 0.1875,
        "ci_low": round(low, 6),
        "ci_high": round(high, 6),
        "n": 16,
    }


def test_a_metric_that_applies_to_no_example_is_absent() -> None:
    summary = aggregate([score_example(text("b"), text("a")), score_example(None, text("a"))])
    assert list(summary.metrics) == ["exact_match"]
    assert_estimate(summary.metrics["exact_match"], 0, 2)
    assert summary.fields == {}
    assert aggregate([]).metrics == {}


def test_per_example_score_is_the_mean_of_the_answer_metrics() -> None:
    assert METRIC_GROUPS["answer"] == ["exact_match", "field_accuracy", "tool_name_match", "tool_args_match"]
    assert METRIC_GROUPS["format"] == ["json_valid", "json_required_keys", "json_no_extra_keys"]
    scores = [score_example(output, reference) for output, reference, _, _ in CASE]
    assert per_example_score(scores[0]) == 1.0
    assert per_example_score(scores[2]) == 0.25  # exact 0, fields 1/2; format metrics do not count
    assert per_example_score(scores[3]) == 0.5  # extra key: exact 0, fields 2/2
    assert per_example_score(scores[8]) == pytest.approx(1 / 3)  # name only
    assert per_example_score(scores[13]) == 0.0


def test_user_scores_join_the_summary_after_the_built_in_ones() -> None:
    scores = [
        score_example(text("a"), text("a")).with_metrics({"politeness": 0.5}),
        score_example(text("b"), text("a")).with_metrics({"politeness": 0.7}),
        score_example(text("c"), text("a")).with_metrics({"politeness": 0.9}),
        score_example(text("d"), text("a")),  # the scorer did not apply
    ]
    summary = aggregate(scores)
    assert list(summary.metrics) == ["exact_match", "politeness"]
    assert_estimate(summary.metrics["exact_match"], 1, 4)
    politeness = summary.metrics["politeness"]
    # mean 0.7, s = 0.2, t(0.975, 2) = 4.302653 (t table): 0.7 ± 4.302653 · 0.2 / √3, clipped
    assert (politeness.n, politeness.value) == (3, pytest.approx(0.7))
    assert politeness.ci_low == pytest.approx(0.7 - 4.302653 * 0.2 / math.sqrt(3), abs=1e-6)
    assert politeness.ci_high == 1.0


# ---- intervals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    estimate = wilson(successes, n)
    assert (round(estimate.ci_low, 4), round(estimate.ci_high, 4)) == (low, high)
    assert estimate.ci_low <= estimate.value <= estimate.ci_high


def test_wilson_is_exact_at_the_edges_and_rejects_no_items() -> None:
    assert wilson(0, 3).ci_low == 0.0 and wilson(3, 3).ci_high == 1.0
    assert wilson(1, 1) == Estimate(1.0, hand_wilson(1, 1)[0], 1.0, 1)
    with pytest.raises(ValueError, match="at least one item"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson(4, 3)


@pytest.mark.parametrize(
    ("df", "quantile"),
    [
        (1, 12.706205),
        (2, 4.302653),
        (3, 3.182446),
        (5, 2.570582),
        (10, 2.228139),
        (30, 2.042272),
        (120, 1.979930),
    ],
)
def test_t_quantile_matches_the_table(df: int, quantile: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)


def test_mean_interval() -> None:
    assert mean_interval([1, 0, True, False, 1]) == wilson(3, 5)  # binary scores: Wilson
    assert mean_interval([0.25]) == Estimate(0.25, 0.0, 1.0, 1)
    assert mean_interval([0.4, 0.4]) == Estimate(0.4, 0.4, 0.4, 2)  # no spread
    wide = mean_interval([0.1, 0.3])  # 0.2 ± 12.706205 · 0.141421 / √2: clipped at both ends
    assert (wide.ci_low, wide.ci_high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
    with pytest.raises(ValueError, match="between 0 and 1"):
        mean_interval([0.5, 1.5])
    with pytest.raises(ValueError, match="between 0 and 1"):
        mean_interval([0.5, math.nan])


# ---- normalization -------------------------------------------------------------------------------


def test_text_normalization() -> None:
    assert normalize_text("  Hello,\n\t WORLD  ") == "hello, world"
    # NFKC: full-width letters, the "fi" ligature
    assert normalize_text("\uff21\uff22\uff23 \ufb01") == "abc fi"
    assert normalize_text("Straße") == normalize_text("STRASSE")  # casefold, not lower
    assert normalize_text("a\u00a0b") == "a b"  # a no-break space is whitespace


@pytest.mark.parametrize(
    ("output", "reference", "equal"),
    [
        ('{"a": [1, 2], "b": null}', '{"b":null,"a":[1,2]}', True),
        ('{"a": [2, 1]}', '{"a": [1, 2]}', False),  # arrays keep their order
        ('{"a": 1.0}', '{"a": 1}', True),
        ('{"a": true}', '{"a": 1}', False),
        ('{"a": "YES "}', '{"a": "yes"}', True),
        ('{"A": 1}', '{"a": 1}', False),  # keys are names: exact
        ("42", " 42 ", True),
        ('"positive"', "positive", False),  # only one side is JSON: compared as text
    ],
)
def test_exact_match_compares_parsed_json(output: str, reference: str, equal: bool) -> None:
    assert score_example(text(output), text(reference)).metrics["exact_match"] == float(equal)


def test_json_metrics_follow_the_reference() -> None:
    assert "json_valid" not in score_example(text('{"a": 1}'), text("[1]")).metrics  # not an object
    assert "json_valid" not in score_example(text('{"a": 1}'), text("plain")).metrics
    empty = score_example(text("{}"), text("{}"))
    assert dict(empty.metrics) == {
        "exact_match": 1,
        "json_valid": 1,
        "json_required_keys": 1,
        "json_no_extra_keys": 1,
    }  # no fields, so no field_accuracy
    both = score_example(calls(WEATHER, content='{"a": 1}'), calls(WEATHER, content='{"a": 2}'))
    assert dict(both.metrics) == {
        "exact_match": 1,  # a tool reference: the calls are compared, not the content
        "json_valid": 1,
        "json_required_keys": 1,
        "json_no_extra_keys": 1,
        "field_accuracy": 0,
        "tool_name_match": 1,
        "tool_args_match": 1,
    }


def test_unparseable_reference_arguments_never_match() -> None:
    scores = score_example(calls(("f", "{x")), calls(("f", "{x")))
    assert dict(scores.metrics) == {"exact_match": 0, "tool_name_match": 1, "tool_args_match": 0}


def test_message_text() -> None:
    assert message_text(None) == ""
    assert message_text(text("hi")) == "hi"
    assert message_text(calls(WEATHER, TIME)) == 'get_weather({"city": "Paris"})\nget_time(' + TIME[1] + ")"
    assert message_text(calls(WEATHER, content="Checking.")) == 'Checking.\nget_weather({"city": "Paris"})'
    assert message_text({"role": "assistant", "content": [{"type": "text", "text": "a"}]}) == "a"


# ---- user scorers --------------------------------------------------------------------------------

SCORERS_SOURCE = """
def mentions_paris(output, reference, example):
    if output is None:
        return False
    return "paris" in (output.get("content") or "").lower()

def length_ratio(output, reference, example):
    if output is None or not reference.get("content"):
        return None
    return min(1.0, len(output.get("content") or "") / len(reference["content"]))

def renamed(output, reference, example):
    return 1
renamed.scorer_name = "always_one"

def sees_the_example(output, reference, example):
    return example["call_id"] == "c1" and example["messages"][0]["content"] == "where?"

def vandal(output, reference, example):
    reference["content"] = "changed"
    example["messages"].clear()
    return None

def exact_match(output, reference, example):
    return 1

def out_of_range(output, reference, example):
    return 1.5

def says_yes(output, reference, example):
    return "yes"

def not_a_number(output, reference, example):
    return float("nan")

def broken(output, reference, example):
    raise KeyError("label")

def unnamed_a(output, reference, example):
    return 1
unnamed_a.scorer_name = "same"

def unnamed_b(output, reference, example):
    return 0
unnamed_b.scorer_name = "same"

def bad_name(output, reference, example):
    return 0
bad_name.scorer_name = 7

class Grader:
    @staticmethod
    def grade(output, reference, example):
        return 0.25

THRESHOLD = 0.5
"""

WHERE = "flywheel.toml [pipelines.classify.eval] scorers"
EXAMPLE = {"call_id": "c1", "messages": [{"role": "user", "content": "where?"}], "request": {"model": "m"}}


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"my_scorers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SCORERS_SOURCE))
    (tmp_path / f"{name}_syntax.py").write_text("def oops(:\n")
    (tmp_path / f"{name}_raises.py").write_text("raise RuntimeError('needs SECRET_KEY')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [key for key in sys.modules if key.startswith(name)]:
        del sys.modules[module]


def test_user_scorers_score_and_name_themselves(scorer_module: str) -> None:
    scorers = load_scorers(
        [
            f"{scorer_module}:mentions_paris",
            f"{scorer_module}:length_ratio",
            f"{scorer_module}:renamed",
            f"{scorer_module}:sees_the_example",
            f"{scorer_module}:Grader.grade",
        ],
        where=WHERE,
    )
    assert [scorer.name for scorer in scorers] == [
        "mentions_paris",
        "length_ratio",
        "always_one",
        "sees_the_example",
        "grade",
    ]
    reference = text("Paris, France")
    assert score_with(scorers, text("Paris"), reference, EXAMPLE) == {
        "mentions_paris": 1.0,
        "length_ratio": 5 / 13,
        "always_one": 1.0,
        "sees_the_example": 1.0,
        "grade": 0.25,
    }
    # no answer: length_ratio does not apply
    assert score_with(scorers, None, reference, EXAMPLE) == {
        "mentions_paris": 0.0,
        "always_one": 1.0,
        "sees_the_example": 1.0,
        "grade": 0.25,
    }


def test_a_scorer_cannot_change_what_it_is_given(scorer_module: str) -> None:
    vandal = load_scorer(f"{scorer_module}:vandal", where=WHERE)
    reference = text("kept")
    example = json.loads(json.dumps(EXAMPLE))
    assert vandal(text("x"), reference, example) is None
    assert reference == text("kept") and example == EXAMPLE


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("out_of_range", "scorer {m}:out_of_range returned 1.5 on call c1; expected a bool, a number"),
        ("says_yes", "scorer {m}:says_yes returned 'yes' on call c1;"),
        ("not_a_number", "scorer {m}:not_a_number returned nan on call c1;"),
        ("broken", "scorer {m}:broken raised KeyError: 'label' on call c1"),
    ],
)
def test_a_misbehaving_scorer_is_a_scorer_error(scorer_module: str, attribute: str, message: str) -> None:
    scorer = load_scorer(f"{scorer_module}:{attribute}", where=WHERE)
    with pytest.raises(ScorerError) as caught:
        scorer(text("x"), text("y"), EXAMPLE)
    assert caught.value.message.startswith(message.format(m=scorer_module))
    assert caught.value.where == WHERE
    assert caught.value.exit_code == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "scorer 'no_colon_here' is not 'module:function'"),
        ("{m}:", "scorer '{m}:' is not 'module:function'"),
        (
            "flywheel_no_such_module_x:f",
            "scorer flywheel_no_such_module_x:f: cannot import module 'flywheel_no_such_module_x': "
            "ModuleNotFoundError: No module named 'flywheel_no_such_module_x'",
        ),
        ("{m}_syntax:oops", "scorer {m}_syntax:oops: cannot import module '{m}_syntax': SyntaxError:"),
        (
            "{m}_raises:f",
            "scorer {m}_raises:f: cannot import module '{m}_raises': RuntimeError: needs SECRET_KEY",
        ),
        ("{m}:missing", "scorer {m}:missing: '{m}' has no attribute 'missing'"),
        ("{m}:Grader.missing", "scorer {m}:Grader.missing: '{m}' has no attribute 'Grader.missing'"),
        ("{m}:THRESHOLD", "scorer {m}:THRESHOLD: 'THRESHOLD' is a float, not callable"),
        ("{m}:exact_match", "scorer {m}:exact_match is named 'exact_match', a built-in metric's name"),
        ("{m}:bad_name", "scorer {m}:bad_name: its scorer_name must be a non-empty string, got 7"),
    ],
)
def test_a_scorer_that_cannot_be_loaded_is_a_usage_error(scorer_module: str, spec: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_scorer(spec.format(m=scorer_module), where=WHERE)
    assert caught.value.message.startswith(message.format(m=scorer_module))
    assert caught.value.where == WHERE
    assert str(caught.value).endswith(f"({WHERE})")


def test_two_scorers_with_one_name_are_a_usage_error(scorer_module: str) -> None:
    with pytest.raises(UsageError, match="both named 'same'") as caught:
        load_scorers([f"{scorer_module}:unnamed_a", f"{scorer_module}:unnamed_b"], where=WHERE)
    assert caught.value.where == WHERE


def test_example_scores_are_plain_data() -> None:
    scores = ExampleScores(metrics={"exact_match": 1.0})
    assert scores.with_metrics({"x": 0.5}).metrics == {"exact_match": 1.0, "x": 0.5}
    assert scores.metrics == {"exact_match": 1.0}
