"""Recorded chat calls as OpenAI fine-tuning examples: supervised (chat) and preference (DPO).

A recorded ``/chat/completions`` call is a request body (``model``, ``messages``, ``tools``, ...) and
a ``chat.completion`` response. ``chat_example`` turns one into a supervised line::

    {"messages": [...request messages..., the output], "tools": [...], "parallel_tool_calls": ...}

and ``preference_example`` into a DPO line::

    {"input": {"messages": [...], "tools": [...], "parallel_tool_calls": ...},
     "preferred_output": [assistant message], "non_preferred_output": [assistant message]}

Every function here is pure: same input, same example; nothing is read from or written to the
store. The input is never mutated. A call that cannot be expressed in the format raises
``UnconvertibleCallError`` naming the field, so the caller can skip and report that entry.

Message rules (what the fine-tuning format accepts, which is narrower than what the API does):

- ``system`` stays; ``developer`` becomes ``system`` (the format has no developer role, and
  models read it as the system message). ``user``, ``assistant``, ``tool`` stay, as does the
  legacy ``function`` role.
- Content parts: text-only content (``[{"type": "text", ...}]``, also ``refusal`` parts) becomes
  one string, parts joined by a newline, since several format checks require strings. A ``user``
  message with images keeps its parts list (text and ``image_url``), which vision fine-tuning
  accepts. Audio and file parts are not supported by fine-tuning: ``UnconvertibleCallError``.
- ``assistant`` keeps ``content`` (``None`` when it only calls tools), ``tool_calls`` (reduced to
  ``id``, ``type``, ``function.name``, ``function.arguments``), the legacy ``function_call`` and
  ``name``; a refusal with no content becomes the content. ``tool`` keeps ``tool_call_id``.
  Other keys the API returns (``annotations``, ``audio``, ``refusal: null``) are dropped.
- Top level: ``tools``, ``parallel_tool_calls`` and the legacy ``functions`` are copied from the
  request; sampling settings and ``tool_choice`` are not part of the format.
- ``train_on="last"`` sets ``weight`` 0 on earlier assistant turns and 1 on the output, to train
  on the output only; the default trains on every assistant message (no ``weight`` keys).

Prune rules (``PruneRule``) remove a repeated instruction from inputs, e.g. a long system prompt
the fine-tuned model no longer needs. They are data (``as_dict``/``prune_rule_from_dict``), stored
with the export, so inference can apply exactly the same rule with ``apply_prune_rules``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import FlywheelError, UsageError

__all__ = [
    "DropSystemPrompt",
    "PruneRule",
    "StripPrefix",
    "TrainOn",
    "UnconvertibleCallError",
    "apply_prune_rules",
    "chat_example",
    "convert_message",
    "output_message",
    "preference_example",
    "prune_rule_from_dict",
    "text_sha256",
]

TrainOn = Literal["all", "last"]

_SYSTEM_ROLES = ("system", "developer")  # a tuple: `in` must not hash a malformed role
_PART_JOINER = "\n"


class UnconvertibleCallError(FlywheelError):
    """A recorded call that the fine-tuning format cannot express; ``where`` names the field."""


# ---- prune rules -------------------------------------------------------------------------------


def text_sha256(text: str) -> str:
    """sha256 (hex) of ``text`` as UTF-8: how ``DropSystemPrompt`` names the prompt it drops."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DropSystemPrompt:
    """Drop every system (or developer) message whose whole text hashes to ``text_sha256``."""

    text_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "drop_system_prompt", "text_sha256": self.text_sha256}


@dataclass(frozen=True, slots=True)
class StripPrefix:
    """Remove the literal ``prefix`` from the text of messages with one of ``roles``; a message
    left with no text at all is dropped."""

    prefix: str
    roles: tuple[str, ...] = ("system",)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "strip_prefix", "prefix": self.prefix, "roles": list(self.roles)}


PruneRule = DropSystemPrompt | StripPrefix


def prune_rule_from_dict(data: Mapping[str, Any]) -> PruneRule:
    """Read a rule written by ``as_dict`` (e.g. from the export manifest or ``flywheel.toml``).

    Raises ``UsageError`` for anything that is not a well-formed rule."""
    kind = data.get("kind")
    if kind == "drop_system_prompt" and isinstance(data.get("text_sha256"), str):
        return DropSystemPrompt(data["text_sha256"])
    if kind == "strip_prefix" and isinstance(data.get("prefix"), str) and data["prefix"]:
        roles = data.get("roles", ["system"])
        if isinstance(roles, list) and all(isinstance(role, str) for role in roles):
            return StripPrefix(data["prefix"], tuple(roles))
    raise UsageError(f"not a prune rule: {dict(data)!r}", "prune rules")


def apply_prune_rules(
    messages: Sequence[Mapping[str, Any]], rules: Sequence[PruneRule]
) -> list[dict[str, Any]]:
    """``messages`` with every rule applied in order (new dicts; the input is left as it was).

    Works on request messages as sent (``developer`` counts as ``system``) and on converted ones,
    so training data and inference requests are pruned the same way.
    """
    pruned = [dict(message) for message in messages]
    for rule in rules:
        if isinstance(rule, DropSystemPrompt):
            pruned = [message for message in pruned if not _is_dropped_prompt(message, rule)]
        else:
            pruned = [kept for message in pruned if (kept := _strip(message, rule)) is not None]
    return pruned


def _is_dropped_prompt(message: Mapping[str, Any], rule: DropSystemPrompt) -> bool:
    text = _plain_text(message.get("content"))
    return message.get("role") in _SYSTEM_ROLES and text is not None and text_sha256(text) == rule.text_sha256


def _strip(message: dict[str, Any], rule: StripPrefix) -> dict[str, Any] | None:
    role = message.get("role")
    as_system = "system" if role in _SYSTEM_ROLES else role
    if role not in rule.roles and as_system not in rule.roles:
        return message
    text = _plain_text(message.get("content"))
    if text is None or not text.startswith(rule.prefix):
        return message
    rest = text[len(rule.prefix) :]
    if not rest.strip():
        return None
    return {**message, "content": rest}


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") in ("text", "refusal")


def _plain_text(content: Any) -> str | None:
    """The content as one string when it is text only (a string or text parts), else ``None``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(_is_text_part(part) for part in content):
        return _PART_JOINER.join(str(part.get("text", part.get("refusal", ""))) for part in content)
    return None


# ---- messages ----------------------------------------------------------------------------------


def convert_message(message: Mapping[str, Any], *, where: str = "message") -> dict[str, Any]:
    """One request or response message in the fine-tuning format (see the module docstring).

    ``where`` names the message in errors, e.g. ``request.messages[3]``.
    """
    if not isinstance(message, Mapping):
        raise UnconvertibleCallError("a message must be a JSON object", where)
    role = message.get("role")
    if role in _SYSTEM_ROLES:
        return _with_name(
            {"role": "system", "content": _text_content(message.get("content"), where)}, message
        )
    if role == "user":
        return _with_name({"role": "user", "content": _user_content(message.get("content"), where)}, message)
    if role == "assistant":
        return _assistant(message, where)
    if role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.get("tool_call_id"),
            "content": _text_content(message.get("content"), where),
        }
    if role == "function":
        return {
            "role": "function",
            "name": message.get("name"),
            "content": _text_content(message.get("content"), where),
        }
    raise UnconvertibleCallError(f"role {role!r} has no place in the fine-tuning format", f"{where}.role")


def _with_name(converted: dict[str, Any], message: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message.get("name"), str):
        converted["name"] = message["name"]
    return converted


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    text = _plain_text(content)
    if text is None:
        raise UnconvertibleCallError("only text content is supported here", f"{where}.content")
    return text


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    text = _plain_text(content)
    if text is not None:
        return text
    if not isinstance(content, list):
        raise UnconvertibleCallError("content must be a string or a list of parts", f"{where}.content")
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "refusal"):
            parts.append({"type": "text", "text": str(part.get("text", part.get("refusal", "")))})
        elif kind == "image_url":
            parts.append(
                {"type": "image_url", "image_url": _image(part.get("image_url"), f"{where}.content[{index}]")}
            )
        else:
            raise UnconvertibleCallError(
                f"content part of type {kind!r} is not supported by fine-tuning (text and images only)",
                f"{where}.content[{index}]",
            )
    return parts


def _image(image: Any, where: str) -> dict[str, Any]:
    if isinstance(image, str):
        return {"url": image}
    if isinstance(image, Mapping) and isinstance(image.get("url"), str):
        return dict(image)
    raise UnconvertibleCallError("an image part needs image_url.url", f"{where}.image_url")


def _assistant(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    converted: dict[str, Any] = {
        "role": "assistant",
        "content": None if content is None else _text_content(content, where),
    }
    if converted["content"] is None and isinstance(message.get("refusal"), str):
        converted["content"] = message["refusal"]
    _with_name(converted, message)
    calls = message.get("tool_calls")
    if calls:
        converted["tool_calls"] = [
            _tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)
        ]
    if isinstance(message.get("function_call"), Mapping):
        function = message["function_call"]
        converted["function_call"] = {"name": function.get("name"), "arguments": function.get("arguments")}
    if "weight" in message:
        converted["weight"] = message["weight"]
    return converted


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise UnconvertibleCallError("a tool call must be an object with a function", where)
    function = call["function"]
    return {
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name"), "arguments": function.get("arguments")},
    }


def output_message(response: Mapping[str, Any], *, choice: int = 0) -> dict[str, Any]:
    """The assistant message of a recorded ``chat.completion`` (choice ``choice``), converted."""
    choices = response.get("choices") if isinstance(response, Mapping) else None
    if not isinstance(choices, list) or not choices:
        raise UnconvertibleCallError(
            "the response has no choices (not a chat completion)", "response.choices"
        )
    selected = next(
        (item for item in choices if isinstance(item, Mapping) and item.get("index", 0) == choice), None
    )
    if selected is None or not isinstance(selected.get("message"), Mapping):
        raise UnconvertibleCallError(f"the response has no message for choice {choice}", "response.choices")
    return convert_message(
        {**selected["message"], "role": "assistant"}, where=f"response.choices[{choice}].message"
    )


# ---- examples ----------------------------------------------------------------------------------


def chat_example(
    request: Mapping[str, Any],
    response: Mapping[str, Any] | None = None,
    *,
    output: Mapping[str, Any] | None = None,
    choice: int = 0,
    train_on: TrainOn = "all",
    prune_rules: Sequence[PruneRule] = (),
) -> dict[str, Any]:
    """A supervised fine-tuning example: the request's messages followed by the output.

    The output is ``output`` when given (e.g. a relabeled assistant message), else the recorded
    ``response``'s message for ``choice``. Raises ``UnconvertibleCallError`` naming the field when
    the call cannot be expressed (no messages, no output, unsupported content).
    """
    messages = _input_messages(request, prune_rules)
    messages.append(_output(response, output, choice))
    if train_on == "last":
        for message in messages:
            if message["role"] == "assistant":
                message["weight"] = 0
        messages[-1]["weight"] = 1
    return {"messages": messages, **_tool_fields(request)}


def preference_example(
    request: Mapping[str, Any],
    preferred: Mapping[str, Any],
    non_preferred: Mapping[str, Any],
    *,
    prune_rules: Sequence[PruneRule] = (),
) -> dict[str, Any]:
    """A preference (DPO) example: the request's messages as input, and two assistant messages.

    ``preferred`` and ``non_preferred`` are assistant messages (e.g. the relabeled output and the
    original one); use ``output_message`` to take one from a recorded response. Weights are not
    part of the preference format and are removed.
    """
    outputs = []
    for name, message in (("preferred_output", preferred), ("non_preferred_output", non_preferred)):
        converted = convert_message({**message, "role": "assistant"}, where=name)
        converted.pop("weight", None)
        outputs.append([converted])
    return {
        "input": {"messages": _input_messages(request, prune_rules), **_tool_fields(request)},
        "preferred_output": outputs[0],
        "non_preferred_output": outputs[1],
    }


def _input_messages(request: Mapping[str, Any], prune_rules: Sequence[PruneRule]) -> list[dict[str, Any]]:
    raw = request.get("messages")
    if not isinstance(raw, list) or not raw:
        raise UnconvertibleCallError(
            "the request has no messages (not a chat completion call)", "request.messages"
        )
    converted = [convert_message(message, where=f"request.messages[{i}]") for i, message in enumerate(raw)]
    return apply_prune_rules(converted, prune_rules)


def _output(
    response: Mapping[str, Any] | None, output: Mapping[str, Any] | None, choice: int
) -> dict[str, Any]:
    if output is not None:
        return convert_message({**output, "role": "assistant"}, where="output")
    if response is None:
        raise UnconvertibleCallError("no output: the call has no response and none was given", "response")
    return output_message(response, choice=choice)


def _tool_fields(request: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if request.get("tools"):
        fields["tools"] = [dict(tool) for tool in request["tools"]]
    if isinstance(request.get("parallel_tool_calls"), bool):
        fields["parallel_tool_calls"] = request["parallel_tool_calls"]
    if request.get("functions"):
        fields["functions"] = [dict(function) for function in request["functions"]]
    return fields
