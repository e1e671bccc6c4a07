"""Streamed responses folded back into the object the API returns when not streaming.

Each assembler takes the ``(event, data)`` pairs of ``iter_sse_events`` and returns a plain dict
shaped like the non-streamed body: ``chat.completion`` for ``/chat/completions``,
``text_completion`` for ``/completions``, ``response`` for ``/responses``. A stream cut short
assembles whatever arrived (no ``finish_reason``; a Responses stream gets ``status: "incomplete"``).

Invariant: never raises on malformed streams. Events whose data is not a JSON object are skipped;
unknown fields are carried over (last value wins for scalars, strings concatenate for deltas), so
provider extensions (Azure content filters, ``reasoning_content`` of vLLM/DeepSeek) survive.

``assemble_stream`` is what the record builder uses: it picks the assembler by endpoint and also
returns the error message carried inside the stream (``{"error": ...}`` chunks, Responses
``error`` events and ``response.failed``), since such streams still answer HTTP 200.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

__all__ = [
    "StreamResult",
    "assemble_chat_stream",
    "assemble_completion_stream",
    "assemble_responses_stream",
    "assemble_stream",
]

Events = Iterable[tuple[str | None, str]]

_RESPONSES_ENDPOINT = re.compile(r"/responses(/[^/]+)?$")
_HEAD_KEYS = ("id", "created", "model")
# Top-level chunk keys that the assembler handles itself, or that only make sense per chunk.
_CHUNK_KNOWN_KEYS = frozenset(
    {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "obfuscation",
        "system_fingerprint",
        "service_tier",
    }
)
_CHOICE_OWN_KEYS = frozenset({"index", "delta", "text", "logprobs", "finish_reason"})


class StreamResult(NamedTuple):
    """An assembled stream."""

    response: dict[str, Any] | None
    """The final object; ``None`` if no usable event arrived."""
    error: str | None
    """The error message carried inside the stream, if any."""
    finished: bool
    """The stream's own end arrived: a final ``response.*`` event of the Responses API. (Chat and
    completions streams end with ``[DONE]``, which ``iter_sse_events`` consumes; the caller can
    check the body for it.)"""


def assemble_chat_stream(events: Events) -> dict[str, Any]:
    """Build the ``chat.completion`` object that the chunks of a chat completion stream add up to."""
    return _assemble_chat(events, chat=True)[0]


def assemble_completion_stream(events: Events) -> dict[str, Any]:
    """Build the ``text_completion`` object of a legacy ``/completions`` stream."""
    return _assemble_chat(events, chat=False)[0]


def assemble_responses_stream(events: Events) -> dict[str, Any]:
    """Build the ``response`` object of a Responses API stream.

    The final ``response.completed`` / ``response.incomplete`` / ``response.failed`` event carries
    the whole object; without one (stream cut short) it is rebuilt from ``response.created`` and the
    output events that arrived, with ``status`` set to ``"incomplete"``.
    """
    return _assemble_responses(events)[0]


def assemble_stream(endpoint: str, events: Events) -> StreamResult:
    """Assemble a stream by endpoint; other SSE endpoints keep their last ``*.done``/``*.completed`` event."""
    obj: dict[str, Any] | None
    # Suffixes, not equality: servers mounted under their own prefix (/custom/chat/completions).
    if endpoint.endswith("/chat/completions"):
        obj, seen, error = _assemble_chat(events, chat=True)
        finished = False  # chat and completions end with [DONE], which the SSE decoder consumes
    elif endpoint.endswith("/completions"):
        obj, seen, error = _assemble_chat(events, chat=False)
        finished = False
    elif _RESPONSES_ENDPOINT.search(endpoint):  # POST /responses, GET /responses/{id}?stream=true
        obj, seen, error, finished = _assemble_responses(events)
    else:
        obj, seen, error = _assemble_other(events)
        finished = False
    if not seen:
        obj = {"error": error} if isinstance(error, dict) else None
    return StreamResult(obj, _error_message(error), finished)


def _parse(data: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_message(error: object) -> str | None:
    if error is None:
        return None
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        return orjson.dumps(error).decode()
    return str(error)


def _merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Fold a delta into an accumulated dict: strings concatenate, lists extend, dicts recurse."""
    for key, value in delta.items():
        if value is None:
            acc.setdefault(key, None)
            continue
        old = acc.get(key)
        if isinstance(value, str) and isinstance(old, str) and key not in ("type", "id"):
            acc[key] = old + value
        elif isinstance(value, list) and isinstance(old, list):
            old.extend(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        else:
            acc[key] = value


class _Choice:
    """One choice being assembled; text parts are collected in lists and joined once at the end."""

    __slots__ = (
        "extra",
        "finish_reason",
        "index",
        "logprobs",
        "message",
        "parts",
        "refusal",
        "role",
        "tools",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.parts: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tools: dict[int, dict[str, Any]] = {}
        self.message: dict[str, Any] = {}  # other delta fields (audio, reasoning_content, ...)
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.extra: dict[str, Any] = {}  # other choice fields (content_filter_results, ...)


def _add_tool_call(choice: _Choice, fragment: dict[str, Any]) -> None:
    index = fragment.get("index")
    if not isinstance(index, int):
        index = len(choice.tools)
    call = choice.tools.get(index)
    if call is None:
        call = choice.tools[index] = {
            "id": None,
            "type": "function",
            "function": {"name": "", "arguments": ""},
        }
    for key, value in fragment.items():
        if key == "index" or value is None:
            continue
        if key == "function" and isinstance(value, dict):
            function = call["function"]
            for fkey, fvalue in value.items():
                if fvalue is None:
                    continue
                if fkey == "arguments" and isinstance(fvalue, str):
                    function["arguments"] += fvalue
                elif fvalue != "":  # some servers repeat the name, or send "", on every fragment
                    function[fkey] = fvalue
        elif isinstance(value, dict) and isinstance(call.get(key), dict):
            _merge(call[key], value)
        else:
            call[key] = value


def _add_logprobs(choice: _Choice, logprobs: dict[str, Any]) -> None:
    if choice.logprobs is None:
        choice.logprobs = {}
    _merge(choice.logprobs, logprobs)


def _assemble_chat(events: Events, *, chat: bool) -> tuple[dict[str, Any], bool, Any]:
    # The hot loop of the writer for streamed calls: one pass, few lookups per chunk, and a fast
    # path for the common chunk that only carries a piece of content.
    head: dict[str, Any] = {}
    need_head = True
    extra: dict[str, Any] = {}
    usage: Any = None
    fingerprint: Any = None
    tier: Any = None
    choices: dict[int, _Choice] = {}
    seen = False
    error: Any = None
    loads = orjson.loads
    for _, data in events:
        try:
            chunk = loads(data)
        except orjson.JSONDecodeError:
            continue
        if type(chunk) is not dict:
            continue
        items = chunk.get("choices")
        if items is None and chunk.get("error"):
            error = chunk["error"]
            continue
        seen = True
        if need_head:
            for key in _HEAD_KEYS:
                # Azure's first chunk (prompt_filter_results) has empty id/model and created=0.
                value = chunk.get(key)
                if value and key not in head:
                    head[key] = value
            need_head = len(head) < len(_HEAD_KEYS)
        value = chunk.get("usage")
        if value is not None:
            usage = value
        value = chunk.get("system_fingerprint")
        if value is not None:
            fingerprint = value
        value = chunk.get("service_tier")
        if value is not None:
            tier = value
        if not _CHUNK_KNOWN_KEYS.issuperset(chunk):
            for key, value in chunk.items():
                if value is not None and key not in _CHUNK_KNOWN_KEYS:
                    extra[key] = value
        if type(items) is not list:
            continue
        for item in items:
            if type(item) is not dict:
                continue
            index = item.get("index", 0)
            choice = choices.get(index)
            if choice is None:
                if type(index) is not int:
                    continue
                choice = choices[index] = _Choice(index)
            if chat:
                delta = item.get("delta")
                if type(delta) is dict and delta:
                    content = delta.get("content")
                    if len(delta) == 1 and type(content) is str and choice.parts is not None:
                        choice.parts.append(content)
                    else:
                        _add_chat_delta(choice, delta)
            else:
                text = item.get("text")
                if type(text) is str:
                    if choice.parts is None:
                        choice.parts = []
                    choice.parts.append(text)
            value = item.get("logprobs")
            if value is not None and type(value) is dict:
                _add_logprobs(choice, value)
            value = item.get("finish_reason")
            if value is not None:
                choice.finish_reason = value
            if not _CHOICE_OWN_KEYS.issuperset(item):
                for key, value in item.items():
                    if value is not None and key not in _CHOICE_OWN_KEYS:
                        choice.extra[key] = value
    result: dict[str, Any] = {
        "id": head.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [
            _finish_chat_choice(choices[i]) if chat else _finish_text_choice(choices[i])
            for i in sorted(choices)
        ],
        "usage": usage,
    }
    if chat:
        result["service_tier"] = tier
        result["system_fingerprint"] = fingerprint
    elif fingerprint is not None:
        result["system_fingerprint"] = fingerprint
    result.update(extra)
    return result, seen, error


def _add_chat_delta(choice: _Choice, delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if value is None:
            continue
        if key == "content":
            if isinstance(value, str):
                if choice.parts is None:
                    choice.parts = []
                choice.parts.append(value)
        elif key == "role":
            choice.role = value
        elif key == "tool_calls":
            if isinstance(value, list):
                for fragment in value:
                    if isinstance(fragment, dict):
                        _add_tool_call(choice, fragment)
        elif key == "refusal":
            if isinstance(value, str):
                if choice.refusal is None:
                    choice.refusal = []
                choice.refusal.append(value)
        else:
            _merge(choice.message, {key: value})


def _finish_chat_choice(choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": choice.role or "assistant",
        "content": "".join(choice.parts) if choice.parts is not None else None,
        "refusal": "".join(choice.refusal) if choice.refusal is not None else None,
    }
    if choice.tools:
        message["tool_calls"] = [choice.tools[i] for i in sorted(choice.tools)]
    message.update(choice.message)
    result: dict[str, Any] = {
        "index": choice.index,
        "message": message,
        "logprobs": choice.logprobs,
        "finish_reason": choice.finish_reason,
    }
    result.update(choice.extra)
    return result


def _finish_text_choice(choice: _Choice) -> dict[str, Any]:
    result: dict[str, Any] = {
        "text": "".join(choice.parts) if choice.parts is not None else "",
        "index": choice.index,
        "logprobs": choice.logprobs,
        "finish_reason": choice.finish_reason,
    }
    result.update(choice.extra)
    return result


# Responses API ---------------------------------------------------------------------------------

_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_START_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})
# Deltas appended to a string field of the output item itself.
_ITEM_DELTAS = {
    "response.function_call_arguments.delta": "arguments",
    "response.mcp_call_arguments.delta": "arguments",
    "response.custom_tool_call_input.delta": "input",
    "response.code_interpreter_call_code.delta": "code",
}
# Deltas appended to ``item[list][index][field]``: (list, index key, field, part type if created).
_PART_DELTAS = {
    "response.output_text.delta": ("content", "content_index", "text", "output_text"),
    "response.refusal.delta": ("content", "content_index", "refusal", "refusal"),
    "response.reasoning_text.delta": ("content", "content_index", "text", "reasoning_text"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index", "text", "summary_text"),
}


def _assemble_responses(events: Events) -> tuple[dict[str, Any], bool, Any, bool]:
    snapshot: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    error: Any = None
    seen = False
    loads = orjson.loads
    for _, data in events:
        try:
            event = loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "error" or (kind is None and event.get("error")):
            error = event.get("error") if kind is None else event
            continue
        seen = True
        if kind in _FINAL_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                final = response
            continue
        if kind in _START_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                snapshot = response
            continue
        index = event.get("output_index")
        if not isinstance(index, int):
            continue
        if kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict):
                items[index] = item
        elif kind == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, dict):
                done[index] = item
        elif kind in _PART_DELTAS:
            item = items.get(index)
            delta = event.get("delta")
            if item is not None and isinstance(delta, str):
                _append_part(item, event, delta, *_PART_DELTAS[kind])
        elif kind in _ITEM_DELTAS:
            item = items.get(index)
            delta = event.get("delta")
            if item is not None and isinstance(delta, str):
                field = _ITEM_DELTAS[kind]
                item[field] = (item.get(field) or "") + delta
        elif kind == "response.content_part.added" or kind == "response.reasoning_summary_part.added":
            item = items.get(index)
            part = event.get("part")
            if item is not None and isinstance(part, dict):
                key, index_key = (
                    ("content", "content_index")
                    if kind == "response.content_part.added"
                    else ("summary", "summary_index")
                )
                parts = item.get(key)
                if not isinstance(parts, list):
                    parts = item[key] = []
                position = event.get(index_key)
                if isinstance(position, int) and position < len(parts):
                    parts[position] = part
                else:
                    parts.append(part)
        elif kind == "response.output_text.annotation.added":
            item = items.get(index)
            annotation = event.get("annotation")
            if item is not None and annotation is not None:
                part = _part(item, "content", event.get("content_index"), "output_text")
                annotations = part.get("annotations")
                if not isinstance(annotations, list):
                    annotations = part["annotations"] = []
                annotations.append(annotation)

    if final is not None:
        if final.get("output") is None and done:
            # Providers may leave the final output out; the finished items carry it.
            final["output"] = [done[i] for i in sorted(done)]
        if final.get("status") == "failed" and error is None:
            error = final.get("error")
        return final, seen, error, True

    rebuilt: dict[str, Any] = dict(snapshot) if snapshot is not None else {"object": "response"}
    merged = {**items, **done}
    rebuilt["output"] = [merged[i] for i in sorted(merged)]
    rebuilt["status"] = "incomplete"
    return rebuilt, seen, error, False


def _part(item: dict[str, Any], key: str, position: Any, part_type: str) -> dict[str, Any]:
    parts = item.get(key)
    if not isinstance(parts, list):
        parts = item[key] = []
    if not isinstance(position, int) or position < 0:
        position = max(len(parts) - 1, 0)
    while len(parts) <= position:
        parts.append({"type": part_type})
    part = parts[position]
    if not isinstance(part, dict):
        part = parts[position] = {"type": part_type}
    return part


def _append_part(
    item: dict[str, Any],
    event: dict[str, Any],
    delta: str,
    key: str,
    index_key: str,
    field: str,
    part_type: str,
) -> None:
    part = _part(item, key, event.get(index_key), part_type)
    old = part.get(field)
    part[field] = old + delta if isinstance(old, str) else delta


# Other SSE endpoints (audio transcriptions, image generation, ...) ------------------------------


def _assemble_other(events: Events) -> tuple[dict[str, Any] | None, bool, Any]:
    last: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    error: Any = None
    for name, data in events:
        event = _parse(data)
        if event is None:
            continue
        kind = event.get("type") or name or ""
        if kind == "error" or event.get("error"):
            error = event.get("error") or event
            continue
        last = event
        if isinstance(kind, str) and kind.endswith((".done", ".completed")):
            final = event
    return final if final is not None else last, last is not None, error
