"""Validation of fine-tuning examples before they are written: every problem, where, and why.

``validate_chat_example`` checks one supervised line, ``validate_preference_example`` one DPO line,
and ``validate_dataset`` a whole file: every example, plus the minimum example count and each
example's token count against the base model's per-example limit (counted offline, see
``flywheel.tokens``). Nothing is fixed silently; each problem is an ``Issue`` that names the entry,
the field (``messages[2].tool_calls[0].function.arguments``) and the reason.

Invariants: validation never raises on malformed input (anything JSON can hold is reported, not
crashed on), and every check of OpenAI's cookbook ("Data preparation and analysis for chat model
fine-tuning") is covered under the cookbook's own code name:

    data_type, missing_messages_list, message_missing_key, message_unrecognized_key,
    unrecognized_role, missing_content, example_missing_assistant_message

The cookbook predates tools, so it would reject ``tool`` messages and ``tool_calls``; here they
are accepted and checked instead (``ISSUE_CODES`` lists every code). Errors make OpenAI reject
the file or train on something wrong; warnings are legal but probably not what was meant.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import tiktoken

from .tokens import count_chat_example, count_messages, count_tools, encoding_for_model

__all__ = [
    "ISSUE_CODES",
    "MIN_EXAMPLES",
    "TOKEN_LIMITS",
    "DatasetValidator",
    "Issue",
    "Method",
    "Severity",
    "ValidationReport",
    "training_token_limit",
    "validate_chat_example",
    "validate_dataset",
    "validate_preference_example",
]

Severity = Literal["error", "warning"]
Method = Literal["supervised", "dpo"]

MIN_EXAMPLES = 10
"""OpenAI refuses a training file with fewer examples."""

TOKEN_LIMITS: Mapping[str, int] = {
    "gpt-4.1-2025-04-14": 65_536,
    "gpt-4.1-mini-2025-04-14": 65_536,
    "gpt-4.1-nano-2025-04-14": 65_536,
    "gpt-4.1": 65_536,
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4o": 65_536,
    "gpt-4-0613": 8_192,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo": 16_385,
}
"""Tokens allowed in one training example, by base model (OpenAI's fine-tuning guide; longer
examples are truncated). A name matches exactly, else by its longest listed prefix
(``gpt-4o-mini`` falls under ``gpt-4o``); pass ``token_limit=`` for any other model."""

ISSUE_CODES: Mapping[str, str] = {
    # The cookbook's checks.
    "data_type": "the example is not a JSON object",
    "missing_messages_list": "no non-empty messages list",
    "message_missing_key": "a message lacks a required key (role, content, tool_call_id, name)",
    "message_unrecognized_key": "a message has a key its role does not allow",
    "unrecognized_role": "a role other than system, user, assistant, tool, function",
    "missing_content": "empty or missing content where text is required",
    "example_missing_assistant_message": "no assistant message to learn from",
    # Structure beyond the cookbook.
    "unrecognized_key": "an unknown key at the top of the example",
    "message_data_type": "a message is not a JSON object",
    "invalid_content": "content of the wrong type, or a malformed or unsupported content part",
    "invalid_name": "a name that is not a non-empty string",
    "invalid_weight": "weight other than 0 or 1, on a non-assistant message, or in a preference example",
    "no_trained_message": "every assistant message has weight 0: nothing is learned",
    "last_message_not_assistant": "messages after the last assistant message are not learned",
    # Tools.
    "invalid_tool_call": "a tool call without id, type 'function', name, or JSON-string arguments",
    "duplicate_tool_call_id": "two tool calls share an id",
    "unanswered_tool_call": "a tool call that no tool message answers before the conversation goes on",
    "orphan_tool_message": "a tool message that answers no pending tool call",
    "invalid_function_call": "a legacy function_call without name or JSON-string arguments",
    "invalid_tools": "a tools (or functions) entry that is not a well-formed function definition",
    "unknown_tool": "a call to a function the example's tools do not define",
    "invalid_parallel_tool_calls": "parallel_tool_calls that is not a boolean",
    "parallel_tool_calls_disabled": "several tool calls in one message while parallel_tool_calls is false",
    # Preference (DPO) examples.
    "missing_input": "no input object with messages",
    "input_ends_with_assistant": "the input's last message is an assistant message",
    "invalid_output": "an output that is not a list of exactly one assistant message",
    "identical_outputs": "the preferred and non-preferred outputs are the same",
    # The dataset.
    "too_many_tokens": "an example over the base model's per-example token limit",
    "too_few_examples": "fewer examples than fine-tuning accepts",
    "unknown_base_model": "no token limit is known for the base model; lengths were not checked",
}
"""Every issue code, with what it means."""

_CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_MESSAGE_KEYS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "function_call", "weight"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: ``code`` (a key of ``ISSUE_CODES``), the ``field`` it is in (a path inside the
    example, empty for the whole example or dataset), why, and which ``entry`` (an id or a
    ``file:line``)."""

    code: str
    field: str
    message: str
    entry: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        place = ": ".join(part for part in (self.entry, self.field) if part)
        return f"{place}: {self.message} [{self.code}]" if place else f"{self.message} [{self.code}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "entry": self.entry,
            "field": self.field,
            "message": self.message,
        }


@dataclass(slots=True)
class _Findings:
    entry: str | None
    issues: list[Issue] = field(default_factory=list)

    def add(self, code: str, where: str, message: str, severity: Severity = "error") -> None:
        self.issues.append(Issue(code, where, message, self.entry, severity))


# ---- one example -------------------------------------------------------------------------------


def validate_chat_example(example: Any, *, entry: str | None = None) -> list[Issue]:
    """Every issue of one supervised fine-tuning example (``{"messages": [...], "tools": ...}``)."""
    found = _Findings(entry)
    if not isinstance(example, Mapping):
        found.add("data_type", "", f"the example must be a JSON object, not {_kind(example)}")
        return found.issues
    _check_keys(found, example, _CHAT_KEYS, "")
    tool_names = _check_tool_fields(found, example, "")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        found.add("missing_messages_list", "messages", "the example needs a non-empty list of messages")
        return found.issues
    _check_conversation(found, messages, "messages", tool_names, example.get("parallel_tool_calls"))
    roles = [message.get("role") if isinstance(message, Mapping) else None for message in messages]
    if "assistant" not in roles:
        found.add(
            "example_missing_assistant_message", "messages", "there is no assistant message to learn from"
        )
        return found.issues
    trained = [
        m
        for m in messages
        if isinstance(m, Mapping) and m.get("role") == "assistant" and m.get("weight") != 0
    ]
    if not trained:
        found.add(
            "no_trained_message", "messages", "every assistant message has weight 0, so nothing is learned"
        )
    if roles[-1] != "assistant":
        found.add(
            "last_message_not_assistant",
            f"messages[{len(messages) - 1}]",
            "the example ends after its last assistant message; the messages after it are not learned",
            "warning",
        )
    return found.issues


def validate_preference_example(example: Any, *, entry: str | None = None) -> list[Issue]:
    """Every issue of one preference (DPO) example (``input``, ``preferred_output``,
    ``non_preferred_output``). Preference fine-tuning takes text only, and learns the single
    assistant message that follows the input."""
    found = _Findings(entry)
    if not isinstance(example, Mapping):
        found.add("data_type", "", f"the example must be a JSON object, not {_kind(example)}")
        return found.issues
    _check_keys(found, example, _PREFERENCE_KEYS, "")
    source = example.get("input")
    tool_names: set[str] | None = None
    if not isinstance(source, Mapping):
        found.add("missing_input", "input", "the example needs an input object with messages")
    else:
        _check_keys(found, source, _INPUT_KEYS, "input.")
        tool_names = _check_tool_fields(found, source, "input.")
        messages = source.get("messages")
        if not isinstance(messages, list) or not messages:
            found.add(
                "missing_messages_list", "input.messages", "the input needs a non-empty list of messages"
            )
        else:
            _check_conversation(
                found,
                messages,
                "input.messages",
                tool_names,
                source.get("parallel_tool_calls"),
                preference=True,
            )
            last = messages[-1]
            if isinstance(last, Mapping) and last.get("role") == "assistant":
                found.add(
                    "input_ends_with_assistant",
                    f"input.messages[{len(messages) - 1}]",
                    "the input must end before the assistant's turn: the outputs are that turn",
                )
    outputs = []
    for name in ("preferred_output", "non_preferred_output"):
        output = example.get(name)
        if not (isinstance(output, list) and len(output) == 1 and isinstance(output[0], Mapping)):
            found.add("invalid_output", name, "must be a list of exactly one assistant message")
            continue
        message = output[0]
        if message.get("role") != "assistant":
            found.add(
                "invalid_output", f"{name}[0].role", f"must be 'assistant', not {message.get('role')!r}"
            )
            continue
        _check_message(found, message, f"{name}[0]", preference=True)
        _check_tool_calls(found, message, f"{name}[0]", tool_names, set())
        outputs.append(message)
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        found.add(
            "identical_outputs",
            "non_preferred_output",
            "the same as preferred_output: nothing to learn",
            "warning",
        )
    return found.issues


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(found: _Findings, mapping: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            found.add(
                "unrecognized_key",
                f"{prefix}{key}",
                f"unknown key; expected one of {', '.join(sorted(allowed))}",
            )


def _check_conversation(
    found: _Findings,
    messages: list[Any],
    prefix: str,
    tool_names: set[str] | None,
    parallel_tool_calls: Any,
    *,
    preference: bool = False,
) -> None:
    seen_ids: set[str] = set()
    pending: dict[str, str] = {}  # tool call id -> where the call is, until a tool message answers it
    for index, message in enumerate(messages):
        where = f"{prefix}[{index}]"
        if not isinstance(message, Mapping):
            found.add("message_data_type", where, f"a message must be a JSON object, not {_kind(message)}")
            continue
        role = message.get("role")
        if role != "tool":
            for call_where in pending.values():
                found.add(
                    "unanswered_tool_call",
                    call_where,
                    "no tool message answers this call before the next turn",
                )
            pending.clear()
        _check_message(found, message, where, preference=preference)
        if role == "assistant":
            calls = _check_tool_calls(found, message, where, tool_names, seen_ids)
            if parallel_tool_calls is False and len(calls) > 1:
                found.add(
                    "parallel_tool_calls_disabled",
                    f"{where}.tool_calls",
                    f"{len(calls)} tool calls in one message, but parallel_tool_calls is false",
                )
            pending.update(calls)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and pending.pop(call_id, None) is None:
                found.add(
                    "orphan_tool_message",
                    f"{where}.tool_call_id",
                    f"answers no pending tool call with id {call_id!r}",
                )
    if preference:
        for call_where in pending.values():
            found.add("unanswered_tool_call", call_where, "the input ends before this call is answered")


def _check_message(
    found: _Findings, message: Mapping[str, Any], where: str, *, preference: bool = False
) -> None:
    role = message.get("role")
    if "role" not in message:
        found.add("message_missing_key", f"{where}.role", "the message has no role")
        return
    allowed = _MESSAGE_KEYS.get(role) if isinstance(role, str) else None
    if allowed is None:
        found.add(
            "unrecognized_role",
            f"{where}.role",
            f"unknown role {role!r}; expected one of {', '.join(_MESSAGE_KEYS)}",
        )
        return
    for key in message:
        if key == "weight" and (preference or role != "assistant"):
            why = (
                "preference examples take no weight"
                if preference
                else "only assistant messages take a weight"
            )
            found.add("invalid_weight", f"{where}.weight", why)
        elif key not in allowed:
            found.add("message_unrecognized_key", f"{where}.{key}", f"a {role} message takes no {key!r}")
    _check_content(found, message, where, preference=preference)
    if "name" in message and not (isinstance(message["name"], str) and message["name"]):
        found.add("invalid_name", f"{where}.name", "name must be a non-empty string")
    if role == "function" and "name" not in message:
        found.add("message_missing_key", f"{where}.name", "a function message needs the function's name")
    if role == "tool" and not (isinstance(message.get("tool_call_id"), str) and message["tool_call_id"]):
        found.add(
            "message_missing_key",
            f"{where}.tool_call_id",
            "a tool message needs the id of the call it answers",
        )
    if role == "assistant" and "weight" in message and not preference:
        weight = message["weight"]
        if type(weight) is not int or weight not in (0, 1):
            found.add("invalid_weight", f"{where}.weight", f"weight must be 0 or 1, not {weight!r}")
    if role == "assistant" and "function_call" in message:
        _check_function(found, message["function_call"], f"{where}.function_call", "invalid_function_call")


def _check_content(found: _Findings, message: Mapping[str, Any], where: str, *, preference: bool) -> None:
    role = message["role"]
    calls_tools = bool(message.get("tool_calls")) or bool(message.get("function_call"))
    if "content" not in message:
        if not (role == "assistant" and calls_tools):
            found.add("message_missing_key", f"{where}.content", "the message has no content")
        return
    content = message["content"]
    if content is None:
        if not (role == "assistant" and calls_tools):
            found.add("missing_content", f"{where}.content", "content is null and the message calls no tool")
        return
    if isinstance(content, str):
        if not content.strip() and not (role == "assistant" and calls_tools):
            found.add("missing_content", f"{where}.content", "content is empty")
        return
    if not isinstance(content, list):
        found.add(
            "invalid_content",
            f"{where}.content",
            f"content must be a string or a list of parts, not {_kind(content)}",
        )
        return
    if not content:
        found.add("missing_content", f"{where}.content", "content is an empty list of parts")
        return
    images_allowed = role == "user" and not preference
    for index, part in enumerate(content):
        _check_part(found, part, f"{where}.content[{index}]", images_allowed=images_allowed, role=role)


def _check_part(found: _Findings, part: Any, where: str, *, images_allowed: bool, role: str) -> None:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text":
        if not (isinstance(part.get("text"), str) and part["text"]):
            found.add("missing_content", f"{where}.text", "a text part needs non-empty text")
    elif kind == "refusal" and role == "assistant":
        if not isinstance(part.get("refusal"), str):
            found.add("invalid_content", f"{where}.refusal", "a refusal part needs its text")
    elif kind == "image_url" and images_allowed:
        image = part.get("image_url")
        if not (isinstance(image, Mapping) and isinstance(image.get("url"), str) and image["url"]):
            found.add("invalid_content", f"{where}.image_url.url", "an image part needs image_url.url")
    elif kind == "image_url":
        context = (
            "preference fine-tuning takes text only"
            if role == "user"
            else f"a {role} message takes text only"
        )
        found.add("invalid_content", f"{where}.type", f"image parts are not allowed here: {context}")
    else:
        found.add("invalid_content", f"{where}.type", f"unsupported content part type {kind!r}")


def _check_tool_calls(
    found: _Findings, message: Mapping[str, Any], where: str, tool_names: set[str] | None, seen_ids: set[str]
) -> dict[str, str]:
    """Check an assistant message's tool calls; return the well-formed ones as id -> field."""
    if "tool_calls" not in message:
        return {}
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        found.add("invalid_tool_call", f"{where}.tool_calls", "tool_calls must be a non-empty list")
        return {}
    valid: dict[str, str] = {}
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        if not isinstance(call, Mapping):
            found.add("invalid_tool_call", call_where, "a tool call must be a JSON object")
            continue
        unknown = sorted(set(call) - {"id", "type", "function"})
        if unknown:
            found.add(
                "invalid_tool_call", f"{call_where}.{unknown[0]}", "a tool call takes only id, type, function"
            )
        if call.get("type") != "function":
            found.add(
                "invalid_tool_call",
                f"{call_where}.type",
                f"type must be 'function', not {call.get('type')!r}",
            )
        call_id = call.get("id")
        if not (isinstance(call_id, str) and call_id):
            found.add("invalid_tool_call", f"{call_where}.id", "a tool call needs a non-empty string id")
        elif call_id in seen_ids:
            found.add(
                "duplicate_tool_call_id", f"{call_where}.id", f"id {call_id!r} is used by an earlier call"
            )
        else:
            seen_ids.add(call_id)
            valid[call_id] = call_where
        name = _check_function(found, call.get("function"), f"{call_where}.function", "invalid_tool_call")
        if name is not None and tool_names is not None and name not in tool_names:
            found.add(
                "unknown_tool",
                f"{call_where}.function.name",
                f"calls {name!r}, which the tools do not define",
            )
    return valid


def _check_function(found: _Findings, function: Any, where: str, code: str) -> str | None:
    """Check a ``{"name", "arguments"}`` object; return its name when it has a usable one."""
    if not isinstance(function, Mapping):
        found.add(code, where, "must be an object with name and arguments")
        return None
    name = function.get("name")
    if not (isinstance(name, str) and name):
        found.add(code, f"{where}.name", "the function needs a non-empty name")
        name = None
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        found.add(code, f"{where}.arguments", f"arguments must be a JSON string, not {_kind(arguments)}")
    else:
        try:
            json.loads(arguments)
        except ValueError:
            found.add(code, f"{where}.arguments", "arguments is not valid JSON")
    return name


def _check_tool_fields(found: _Findings, container: Mapping[str, Any], prefix: str) -> set[str] | None:
    """Check ``tools``/``functions``/``parallel_tool_calls``; return the defined function names,
    or ``None`` when the example defines none (calls are then not matched against definitions)."""
    if "parallel_tool_calls" in container and not isinstance(container["parallel_tool_calls"], bool):
        found.add("invalid_parallel_tool_calls", f"{prefix}parallel_tool_calls", "must be true or false")
    names: set[str] | None = None
    for key, wrapped in (("tools", True), ("functions", False)):
        if key not in container:
            continue
        entries = container[key]
        if not isinstance(entries, list):
            found.add("invalid_tools", f"{prefix}{key}", f"{key} must be a list")
            continue
        names = names if names is not None else set()
        for index, entry in enumerate(entries):
            name = _check_definition(found, entry, f"{prefix}{key}[{index}]", wrapped=wrapped)
            if name is not None and name in names:
                found.add(
                    "invalid_tools", f"{prefix}{key}[{index}].name", f"function {name!r} is defined twice"
                )
            if name is not None:
                names.add(name)
    return names


def _check_definition(found: _Findings, entry: Any, where: str, *, wrapped: bool) -> str | None:
    if wrapped:
        if not isinstance(entry, Mapping) or entry.get("type") != "function":
            found.add("invalid_tools", f"{where}.type", "a tool must be an object of type 'function'")
            return None
        entry, where = entry.get("function"), f"{where}.function"
    if not isinstance(entry, Mapping):
        found.add("invalid_tools", where, "a function definition must be an object")
        return None
    name = entry.get("name")
    if not (isinstance(name, str) and _FUNCTION_NAME.fullmatch(name)):
        found.add("invalid_tools", f"{where}.name", "the name must be 1-64 letters, digits, '_' or '-'")
        name = None
    if "description" in entry and not isinstance(entry["description"], str):
        found.add("invalid_tools", f"{where}.description", "description must be a string")
    if "parameters" in entry and not isinstance(entry["parameters"], Mapping):
        found.add("invalid_tools", f"{where}.parameters", "parameters must be a JSON schema object")
    return name


# ---- a dataset ---------------------------------------------------------------------------------


def training_token_limit(base_model: str) -> int | None:
    """The per-example token limit of ``base_model`` from ``TOKEN_LIMITS`` (``ft:`` names resolve
    to their base model), or ``None`` when it is not listed."""
    name = base_model.split(":")[1] if base_model.startswith("ft:") else base_model
    if name in TOKEN_LIMITS:
        return TOKEN_LIMITS[name]
    prefixes = [known for known in TOKEN_LIMITS if name.startswith(known)]
    return TOKEN_LIMITS[max(prefixes, key=len)] if prefixes else None


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The outcome of ``validate_dataset``: every issue, and each example's token count."""

    examples: int
    issues: tuple[Issue, ...]
    token_counts: Mapping[str, int]
    token_limit: int | None

    @property
    def errors(self) -> tuple[Issue, ...]:
        return tuple(issue for issue in self.issues if issue.severity == "error")

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return tuple(issue for issue in self.issues if issue.severity == "warning")

    @property
    def ok(self) -> bool:
        """True when nothing would make the file fail or train on something wrong."""
        return not self.errors

    def counts_by_code(self) -> dict[str, int]:
        """How many issues of each code, most frequent first."""
        return dict(Counter(issue.code for issue in self.issues).most_common())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary, for ``--json`` output and the export manifest."""
        return {
            "ok": self.ok,
            "examples": self.examples,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts_by_code": self.counts_by_code(),
            "token_limit": self.token_limit,
            "total_tokens": sum(self.token_counts.values()),
            "max_tokens": max(self.token_counts.values(), default=0),
            "issues": [issue.as_dict() for issue in self.issues],
        }


class DatasetValidator:
    """``validate_dataset`` one example at a time: ``add`` gives each example's own issues at once
    (so a writer can leave it out), ``report`` the whole file's, dataset-level checks included.

    Parameters as for ``validate_dataset``.
    """

    def __init__(
        self,
        *,
        method: Method = "supervised",
        base_model: str | None = None,
        token_limit: int | None = None,
        min_examples: int = MIN_EXAMPLES,
    ) -> None:
        self.method = method
        self.base_model = base_model
        self.min_examples = min_examples
        self.limit = (
            token_limit
            if token_limit is not None
            else (training_token_limit(base_model) if base_model else None)
        )
        self._validate = validate_chat_example if method == "supervised" else validate_preference_example
        self.issues: list[Issue] = []
        self.counts: dict[str, int] = {}
        self.total = 0
        self._forgotten: set[str] = set()

    @cached_property
    def encoding(self) -> tiktoken.Encoding:
        """The base model's encoding, loaded on first use (``record`` alone never needs it)."""
        return encoding_for_model(self.base_model or "gpt-4o")

    def add(self, entry: str, example: Any) -> list[Issue]:
        """Check one example (``entry`` names it in issues); its issues, also kept for ``report``."""
        return self.record(entry, *self.check(example))

    def check(self, example: Any) -> tuple[list[Issue], int | None]:
        """The example's own issues (not yet naming an entry) and token count (``None`` if it is not
        an object): the expensive half of ``add``, which needs none of the validator's state, so
        it can run in another process."""
        found = self._validate(example, entry=None)
        if not isinstance(example, Mapping):
            return found, None
        if self.method == "supervised":
            return found, count_chat_example(example, self.encoding)
        return found, _preference_tokens(example, self.encoding)

    def record(self, entry: str, issues: Sequence[Issue], tokens: int | None) -> list[Issue]:
        """Take in the result of ``check`` for ``entry``; its issues, named, with the token limit's."""
        self.total += 1
        found = [replace(issue, entry=entry) for issue in issues]
        if tokens is not None:
            self.counts[entry] = tokens
            if self.limit is not None and tokens > self.limit:
                found.append(
                    Issue(
                        "too_many_tokens",
                        "",
                        f"{tokens} tokens, over the limit of {self.limit} per example "
                        "(it would be truncated)",
                        entry,
                    )
                )
        self.issues.extend(found)
        return found

    def forget(self, entry: str) -> None:
        """Leave an added example out of the file: out of the counts and of ``report``'s issues."""
        self.total -= 1
        self.counts.pop(entry, None)
        self._forgotten.add(entry)

    def report(self) -> ValidationReport:
        forgotten = self._forgotten
        issues = (
            [issue for issue in self.issues if issue.entry not in forgotten]
            if forgotten
            else list(self.issues)
        )
        if self.total < self.min_examples:
            issues.append(
                Issue(
                    "too_few_examples",
                    "",
                    f"{self.total} examples; fine-tuning needs at least {self.min_examples}",
                    None,
                )
            )
        if self.limit is None and self.base_model:
            issues.append(
                Issue(
                    "unknown_base_model",
                    "",
                    f"no token limit known for {self.base_model!r}; pass a token limit to check lengths",
                    None,
                    "warning",
                )
            )
        return ValidationReport(self.total, tuple(issues), dict(self.counts), self.limit)


def validate_dataset(
    examples: Iterable[tuple[str, Any]],
    *,
    method: Method = "supervised",
    base_model: str | None = None,
    token_limit: int | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> ValidationReport:
    """Validate ``(entry, example)`` pairs, in file order, as one training or test file.

    ``entry`` names the example in issues (an entry id, or ``train.jsonl:12``). Token counts use
    ``base_model``'s encoding (``o200k_base`` when none is given) and are checked against
    ``token_limit``, or else the base model's limit in ``TOKEN_LIMITS``; with neither, lengths are
    not checked (and an unknown ``base_model`` is reported as a warning). ``min_examples`` is
    OpenAI's minimum for a training file; pass 0 for a test file.
    """
    validator = DatasetValidator(
        method=method, base_model=base_model, token_limit=token_limit, min_examples=min_examples
    )
    for entry, example in examples:
        validator.add(entry, example)
    return validator.report()


def _preference_tokens(example: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    # The longer of the two outputs is what has to fit after the input.
    source = example.get("input")
    messages = _list(source.get("messages")) if isinstance(source, Mapping) else []
    tools = _list(source.get("tools")) if isinstance(source, Mapping) else []
    outputs = [_list(example.get(name)) for name in ("preferred_output", "non_preferred_output")]
    longest = max(count_messages([*messages, *output], encoding) for output in outputs)
    return longest + count_tools(tools, encoding)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
