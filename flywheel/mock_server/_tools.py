"""Deciding whether a mock reply is a function call, and with which arguments.

Rule (both APIs): when function tools are offered, ``tool_choice`` is not ``"none"`` and the
conversation does not end with a tool result, the model calls one tool: the one ``tool_choice``
names, else the first. Its arguments are the minimal instance of the tool's parameters schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._schema import minimal_instance
from ._text import stable_seed


@dataclass(frozen=True, slots=True)
class PlannedToolCall:
    name: str
    arguments: str
    call_id: str


def plan_tool_call(tools: Any, tool_choice: Any, *, after_tool_result: bool) -> PlannedToolCall | None:
    """The tool call the mock model makes, or ``None`` for a text reply.

    Accepts Chat Completions tools (``{"type": "function", "function": {...}}``) and Responses
    tools (``{"type": "function", "name": ...}``); other tool types are ignored.
    """
    if not isinstance(tools, list) or after_tool_result or tool_choice == "none":
        return None
    functions = [spec for tool in tools if (spec := _function_spec(tool)) is not None]
    if not functions:
        return None
    wanted = _named_choice(tool_choice)
    chosen = next((f for f in functions if f["name"] == wanted), functions[0])
    parameters = chosen.get("parameters")
    arguments = minimal_instance(parameters) if isinstance(parameters, Mapping) else {}
    text = orjson.dumps(arguments).decode()
    call_id = f"call_{stable_seed(chosen['name'], text):08x}{stable_seed(text, chosen['name']):08x}"
    return PlannedToolCall(name=chosen["name"], arguments=text, call_id=call_id)


def _function_spec(tool: Any) -> Mapping[str, Any] | None:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        return None
    spec = tool.get("function", tool)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        return None
    return spec


def _named_choice(tool_choice: Any) -> str | None:
    if not isinstance(tool_choice, Mapping):
        return None
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
    return name if isinstance(name, str) else None
