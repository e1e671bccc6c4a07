"""The built-in metrics: one candidate answer scored against its reference, and the aggregate.

Pure functions over assistant messages in the fine-tuning shape (``{"role": "assistant",
"content": str | None, "tool_calls": [{"function": {"name", "arguments"}}, ...]}``); an output of
``None`` means the candidate gave no answer. No I/O; the same inputs always give the same scores.

Applicability follows the *reference*, never the output, so every candidate is scored on the same
items: the JSON metrics apply when the reference's content parses as a JSON object, the tool
metrics when the reference has tool calls, ``exact_match`` always. A missing answer (``None``)
scores 0 on every metric that applies. A metric that applies to no example is absent from the
summary (it is not 0: it was not measured).

Normalization. Text is compared after Unicode NFKC, stripping, collapsing each whitespace run to
one space and casefolding (``"  The  ANSWER\\n"`` equals ``"the answer"``). JSON values are
compared after parsing: object key order and whitespace do not matter; objects are equal when
they have the same keys with equal values, arrays when equal item by item in order; strings by
the text normalization above (keys are compared exactly: they are names); numbers by value
(``1`` equals ``1.0``, no tolerance otherwise); ``true``/``false``/``null`` only to themselves
(``true`` is not ``1``, ``"3"`` is not ``3``). Content must be the JSON text itself: a JSON
answer wrapped in a Markdown code fence does not parse, as it would not in the app.

The metrics (each 1 or 0 per example, aggregated as a rate with a Wilson 95 % interval):

- ``exact_match``: for a reference with tool calls, the tool calls equal (as ``tool_args_match``;
  content beside the calls is not compared); otherwise the contents equal: as parsed JSON values
  when both parse as JSON, else as normalized text.
- ``json_valid`` (format): the output's content parses as JSON of the reference's top-level type,
  an object.
- ``json_required_keys`` (format): the output is a JSON object holding every top-level key of the
  reference.
- ``json_no_extra_keys`` (format): the output is a JSON object with no top-level key the reference
  lacks.
- ``field_accuracy`` (answer): per top-level field of the reference, the output object has the
  field with an equal value (an unparseable output gets every field wrong). Aggregated pooled over
  all (example, field) pairs, so ``n`` is the number of fields, not of examples. Caveat: the
  fields of one example are not independent (a model that misreads an input tends to miss several
  of its fields), so the interval is narrower than it should be when examples have many fields;
  read it with ``exact_match``'s, whose ``n`` is the number of examples. ``fields`` in the summary
  gives each field's accuracy over the examples whose reference has it.
- ``tool_name_match`` (answer): the output calls the same functions as the reference, compared as
  multisets (sorted names): order does not matter, since parallel calls have no meaningful order,
  but a repeated or missing call does.
- ``tool_args_match`` (answer): the same calls with equal parsed arguments, again as multisets of
  (name, arguments) pairs. Arguments that do not parse as JSON never match.

``per_example_score`` ranks examples for the report's "worst examples": the mean of the example's
answer metrics (``field_accuracy`` as the fraction of its fields right).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .intervals import Estimate, mean_interval, wilson

__all__ = [
    "METRIC_GROUPS",
    "METRIC_NAMES",
    "ExampleScores",
    "MetricSummary",
    "aggregate",
    "json_canonical",
    "message_text",
    "normalize_text",
    "per_example_score",
    "score_example",
]

METRIC_NAMES = (
    "exact_match",
    "json_valid",
    "json_required_keys",
    "json_no_extra_keys",
    "field_accuracy",
    "tool_name_match",
    "tool_args_match",
)
"""The built-in metrics, in report order; user scorers may not take these names."""

METRIC_GROUPS: dict[str, list[str]] = {
    "format": ["json_valid", "json_required_keys", "json_no_extra_keys"],
    "answer": ["exact_match", "field_accuracy", "tool_name_match", "tool_args_match"],
}
"""Format correctness and answer correctness, reported apart."""

_UNPARSED = object()  # not JSON (distinct from a JSON null, which parses to None)


@dataclass(frozen=True, slots=True)
class ExampleScores:
    """The scores of one example: ``metrics`` by name (only those that apply; ``field_accuracy`` is
    the fraction of the fields right, user scorers any number 0-1) and ``fields``, whether each
    top-level field of a JSON reference was right."""

    metrics: Mapping[str, float]
    fields: Mapping[str, bool] = field(default_factory=dict)

    def with_metrics(self, extra: Mapping[str, float]) -> ExampleScores:
        """These scores plus ``extra`` (e.g. user scorers' results)."""
        return ExampleScores(metrics={**self.metrics, **extra}, fields=self.fields)


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """Metrics over a set of examples: each metric's and each field's estimate, by name."""

    metrics: dict[str, Estimate]
    fields: dict[str, Estimate]

    def as_dict(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{"metrics": {name: estimate}, "fields": {key: estimate}}`` as in the report."""
        return {
            "metrics": {name: estimate.as_dict() for name, estimate in self.metrics.items()},
            "fields": {name: estimate.as_dict() for name, estimate in self.fields.items()},
        }


def normalize_text(text: str) -> str:
    """``text`` as compared: NFKC, stripped, whitespace runs as one space, casefolded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def json_canonical(value: Any) -> Hashable:
    """A parsed JSON value as a hashable form in which equal values (by the module's rules) are
    equal: objects ignore key order, strings are normalized, ``true`` is not ``1``."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 == 1.0 and hash alike in Python
    if isinstance(value, str):
        return ("string", normalize_text(value))
    if isinstance(value, list):
        return ("array", tuple(json_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, json_canonical(item)) for key, item in value.items()))
    return ("null",)


def score_example(output: Mapping[str, Any] | None, reference: Mapping[str, Any]) -> ExampleScores:
    """Score one candidate ``output`` (``None``: no answer) against its ``reference``."""
    metrics: dict[str, float] = {}
    fields: dict[str, bool] = {}
    tool_metrics: dict[str, float] = {}
    reference_calls = _tool_calls(reference)
    if reference_calls:
        output_calls = _tool_calls(output) if output is not None else []
        expected_calls = _call_multiset(reference_calls)
        tool_metrics["tool_name_match"] = float(
            output is not None and _name_multiset(output_calls) == _name_multiset(reference_calls)
        )
        tool_metrics["tool_args_match"] = float(
            output is not None
            and expected_calls is not None
            and _call_multiset(output_calls) == expected_calls
        )
        metrics["exact_match"] = tool_metrics["tool_args_match"]
    else:
        metrics["exact_match"] = float(output is not None and _contents_equal(output, reference))

    expected = _parse_json(_content(reference))
    if isinstance(expected, dict):
        answer = _parse_json(_content(output)) if output is not None else _UNPARSED
        parsed = answer if isinstance(answer, dict) else None
        metrics["json_valid"] = float(parsed is not None)
        metrics["json_required_keys"] = float(parsed is not None and expected.keys() <= parsed.keys())
        metrics["json_no_extra_keys"] = float(parsed is not None and parsed.keys() <= expected.keys())
        for key, value in expected.items():
            fields[key] = (
                parsed is not None and key in parsed and json_canonical(parsed[key]) == json_canonical(value)
            )
        if fields:
            metrics["field_accuracy"] = sum(fields.values()) / len(fields)
    metrics.update(tool_metrics)
    return ExampleScores(metrics=metrics, fields=fields)


def aggregate(scores: Sequence[ExampleScores]) -> MetricSummary:
    """Each metric over the examples it applies to, with a 95 % interval (see the module docstring;
    ``field_accuracy`` pooled over fields, user scorers by ``mean_interval``), and each field's
    accuracy. Built-in metrics come first in ``METRIC_NAMES`` order, then others as first seen."""
    names: dict[str, None] = dict.fromkeys(name for name in METRIC_NAMES if _applies(name, scores))
    names.update(dict.fromkeys(name for example in scores for name in example.metrics))
    metrics: dict[str, Estimate] = {}
    for name in names:
        if name == "field_accuracy":
            pairs = [right for example in scores for right in example.fields.values()]
            metrics[name] = wilson(sum(pairs), len(pairs))
        else:
            metrics[name] = mean_interval(
                [example.metrics[name] for example in scores if name in example.metrics]
            )
    field_names = dict.fromkeys(key for example in scores for key in example.fields)
    fields = {
        key: wilson(sum(rights), len(rights))
        for key in field_names
        if (rights := [example.fields[key] for example in scores if key in example.fields])
    }
    return MetricSummary(metrics=metrics, fields=fields)


def per_example_score(scores: ExampleScores) -> float:
    """One number 0-1 for ranking an example: the mean of its answer metrics that apply."""
    values = [scores.metrics[name] for name in METRIC_GROUPS["answer"] if name in scores.metrics]
    return sum(values) / len(values) if values else 0.0


def message_text(message: Mapping[str, Any] | None) -> str:
    """A display string for an assistant message: its content, then its tool calls as
    ``name(arguments)`` one per line; ``""`` for no message."""
    if message is None:
        return ""
    content = _content(message)
    lines = [content] if content else []
    for call in _tool_calls(message):
        name, arguments = _function(call)
        lines.append(f"{name or '?'}({arguments or ''})")
    return "\n".join(lines)


# ---- parts of a message ------------------------------------------------------------------------


def _applies(name: str, scores: Iterable[ExampleScores]) -> bool:
    return any(name in example.metrics for example in scores)


def _content(message: Mapping[str, Any] | None) -> str:
    content = message.get("content") if message is not None else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, as the fine-tuning format joins them
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _tool_calls(message: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    calls = message.get("tool_calls") if message is not None else None
    return [call for call in calls if isinstance(call, Mapping)] if isinstance(calls, list) else []


def _parse_json(text: str) -> Any:
    """The JSON value of ``text``, or ``_UNPARSED``."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _UNPARSED


def _contents_equal(output: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    answer, expected = _content(output), _content(reference)
    parsed_answer, parsed_expected = _parse_json(answer), _parse_json(expected)
    if parsed_answer is not _UNPARSED and parsed_expected is not _UNPARSED:
        return json_canonical(parsed_answer) == json_canonical(parsed_expected)
    return normalize_text(answer) == normalize_text(expected)


def _function(call: Mapping[str, Any]) -> tuple[str | None, str | None]:
    function = call.get("function")
    if not isinstance(function, Mapping):
        return None, None
    name, arguments = function.get("name"), function.get("arguments")
    return (name if isinstance(name, str) else None), (arguments if isinstance(arguments, str) else None)


def _name_multiset(calls: Sequence[Mapping[str, Any]]) -> Counter[str | None]:
    return Counter(_function(call)[0] for call in calls)


def _call_multiset(calls: Sequence[Mapping[str, Any]]) -> Counter[tuple[str | None, Hashable]] | None:
    """The (name, canonical arguments) multiset, or ``None`` if any arguments do not parse."""
    pairs: list[tuple[str | None, Hashable]] = []
    for call in calls:
        name, arguments = _function(call)
        parsed = _parse_json(arguments) if arguments is not None else _UNPARSED
        if parsed is _UNPARSED:
            return None
        pairs.append((name, json_canonical(parsed)))
    return Counter(pairs)
