"""``POST /v1/responses``: the Responses API, as one ``response`` object or its event stream.

Output items follow upstream: a ``reasoning`` item first for reasoning models, then either a
``function_call`` (same tool rule as Chat, see ``_tools``) or an assistant ``message`` whose
``output_text`` is the mock reply, or JSON for ``text.format`` ``json_schema``/``json_object``.
A reply cut by ``max_output_tokens`` makes the response ``incomplete``. The stream emits the
full upstream event sequence with ``sequence_number``s, ending in ``response.completed``
(or ``response.incomplete``) that carries the same object the non-streamed call returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ._http import (
    MockAPIError,
    event_stream,
    json_response,
    optional_int,
    read_json_object,
    request_knobs,
    require,
    sse_event,
)
from ._schema import minimal_instance
from ._text import (
    REASONING_TOKENS,
    budget_words,
    cached_tokens,
    content_text,
    estimate_tokens,
    fixed_pieces,
    is_reasoning_model,
    prompt_tokens_of,
    reply_words,
    word_pieces,
)
from ._tools import plan_tool_call

# Request fields echoed into the response object, with upstream's defaults.
_ECHOED_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "temperature": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
    "store": True,
    "background": False,
    "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}},
}


@dataclass(slots=True)
class ResponsePlan:
    model: str
    echoed: dict[str, Any]
    output: list[dict[str, Any]]
    """Final output items; a message item's text is also split into ``pieces`` for streaming."""
    pieces: list[str] = field(default_factory=list)
    incomplete: bool = False
    usage: dict[str, Any] = field(default_factory=dict)


def _input_texts(items: Any) -> tuple[list[str], str, bool]:
    """All input texts, the last user text, and whether the input ends with a tool result."""
    if isinstance(items, str):
        return [items], items, False
    if not isinstance(items, list):
        raise MockAPIError(400, "Invalid 'input': expected a string or an array.", param="input")
    texts: list[str] = []
    last_user = ""
    ends_with_tool_result = False
    for item in items:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type", "message")
        if kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else content_text(output)
        elif kind == "function_call":
            text = f"{item.get('name', '')}{item.get('arguments', '')}"
        else:
            text = content_text(item.get("content"))
            if item.get("role") == "user":
                last_user = text
        texts.append(text)
        ends_with_tool_result = kind == "function_call_output"
    return texts, last_user, ends_with_tool_result


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def plan_response(body: Mapping[str, Any], words: int | None = None) -> ResponsePlan:
    """Everything a response returns except ids and timestamps; validates the request."""
    model = require(body, "model", str)
    texts, prompt, after_tool_result = _input_texts(body.get("input", ""))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    limit = optional_int(body, "max_output_tokens")
    echoed = {key: body.get(key, default) for key, default in _ECHOED_DEFAULTS.items()}
    if echoed["metadata"] is None:
        echoed["metadata"] = {}
    input_tokens = prompt_tokens_of(texts)
    if body.get("tools"):
        input_tokens += estimate_tokens(orjson.dumps(body["tools"]).decode())

    plan = ResponsePlan(model=model, echoed=echoed, output=[])
    reasoning = REASONING_TOKENS if is_reasoning_model(model) else 0
    if reasoning:
        plan.output.append({"id": _new_id("rs_"), "type": "reasoning", "summary": []})
    call = plan_tool_call(body.get("tools"), body.get("tool_choice"), after_tool_result=after_tool_result)
    structured = _structured_text(body.get("text"), prompt)
    if call is not None:
        plan.output.append(
            {
                "id": _new_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        output_tokens = estimate_tokens(call.name + call.arguments) + reasoning
    else:
        if structured is not None:
            text, plan.pieces = structured, fixed_pieces(structured)
            output_tokens = estimate_tokens(structured) + reasoning
        else:
            kept, reasoning, plan.incomplete = budget_words(reply_words(prompt, words), limit, reasoning)
            text, plan.pieces = " ".join(kept), word_pieces(kept)
            output_tokens = len(kept) + reasoning
        plan.output.append(
            {
                "id": _new_id("msg_"),
                "type": "message",
                "status": "incomplete" if plan.incomplete else "completed",
                "role": "assistant",
                "content": [_output_text(text)],
            }
        )
    plan.usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens(input_tokens), "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
    return plan


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _structured_text(text_config: Any, prompt: str) -> str | None:
    fmt = text_config.get("format") if isinstance(text_config, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return orjson.dumps(minimal_instance(schema if isinstance(schema, Mapping) else {})).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"reply": " ".join(reply_words(prompt))}).decode()
    return None


def response_object(
    plan: ResponsePlan, response_id: str, created_at: int, *, final: bool = True
) -> dict[str, Any]:
    """The ``response`` object; ``final=False`` gives the in-progress shape the stream opens with."""
    status = ("incomplete" if plan.incomplete else "completed") if final else "in_progress"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if final else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if final and plan.incomplete else None,
        "model": plan.model,
        "output": plan.output if final else [],
        "usage": plan.usage if final else None,
        "service_tier": "default",
        **plan.echoed,
    }


def response_events(plan: ResponsePlan, response_id: str, created_at: int) -> Iterator[bytes]:
    """The SSE events of a streamed response, numbered from 0."""
    for number, event in enumerate(_events(plan, response_id, created_at)):
        event["sequence_number"] = number
        yield sse_event(event)


def _events(plan: ResponsePlan, response_id: str, created_at: int) -> Iterator[dict[str, Any]]:
    opening = response_object(plan, response_id, created_at, final=False)
    yield {"type": "response.created", "response": opening}
    yield {"type": "response.in_progress", "response": opening}
    for index, item in enumerate(plan.output):
        item_id = item["id"]
        at = {"item_id": item_id, "output_index": index}
        if item["type"] == "function_call":
            yield {"type": "response.output_item.added", "output_index": index,
                   "item": {**item, "status": "in_progress", "arguments": ""}}  # fmt: skip
            for piece in fixed_pieces(item["arguments"], 8):
                yield {"type": "response.function_call_arguments.delta", **at, "delta": piece}
            yield {"type": "response.function_call_arguments.done", **at, "arguments": item["arguments"]}
        elif item["type"] == "message":
            part = item["content"][0]
            at_part = {**at, "content_index": 0}
            yield {"type": "response.output_item.added", "output_index": index,
                   "item": {**item, "status": "in_progress", "content": []}}  # fmt: skip
            yield {"type": "response.content_part.added", **at_part, "part": _output_text("")}
            for piece in plan.pieces:
                yield {"type": "response.output_text.delta", **at_part, "delta": piece, "logprobs": []}
            yield {"type": "response.output_text.done", **at_part, "text": part["text"], "logprobs": []}
            yield {"type": "response.content_part.done", **at_part, "part": part}
        else:
            yield {"type": "response.output_item.added", "output_index": index, "item": item}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    final = response_object(plan, response_id, created_at)
    yield {"type": f"response.{final['status']}", "response": final}


async def create_response(request: Request) -> Response:
    body = await read_json_object(request)
    knobs = request_knobs(request)
    plan = plan_response(body, knobs.words)
    response_id = _new_id("resp_")
    created_at = int(time.time())
    if body.get("stream"):
        return event_stream(response_events(plan, response_id, created_at), knobs.chunk_delay_s)
    return json_response(response_object(plan, response_id, created_at))
