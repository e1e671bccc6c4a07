"""``POST /v1/chat/completions``: deterministic replies, tool calls and structured outputs.

The reply is planned once by a pure function (``plan_chat``) and then rendered either as one
``chat.completion`` object or as a stream of ``chat.completion.chunk`` events, so the streamed
pieces always reassemble to exactly the non-streamed body. A fine-tuned model this server produced
answers with the reply of its most similar training example (``_tuned_models``); a question that
asks for one category from a list gets the category rule's answer (``_categories``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ._categories import category_reply
from ._http import (
    SSE_DONE,
    MockAPIError,
    event_stream,
    json_response,
    optional_int,
    read_json_object,
    request_knobs,
    require,
    sse_data,
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
from ._tools import PlannedToolCall, plan_tool_call
from ._tuned_models import ExampleIndex

TunedModelLookup = Callable[[str], ExampleIndex | None]
"""The training examples behind a model name, or ``None`` for a model this server did not make."""

SYSTEM_FINGERPRINT = "fp_mock"


@dataclass(frozen=True, slots=True)
class PlannedChoice:
    content: str | None
    pieces: list[str]
    tool_call: PlannedToolCall | None
    finish_reason: str


@dataclass(frozen=True, slots=True)
class ChatPlan:
    model: str
    choices: list[PlannedChoice]
    usage: dict[str, Any]


def plan_chat(
    body: Mapping[str, Any], words: int | None = None, tuned: TunedModelLookup | None = None
) -> ChatPlan:
    """Everything a chat completion returns except ids and timestamps; validates the request.

    ``tuned`` finds the training examples of the server's own fine-tuned models: their text
    replies (and JSON for ``response_format``, when the learned reply is JSON) come from the data.
    """
    model = require(body, "model", str)
    messages = require(body, "messages", list)
    if not messages:
        raise MockAPIError(400, "Invalid 'messages': empty array.", param="messages", code="empty_array")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise MockAPIError(400, "Invalid 'messages': each message needs a 'role'.", param="messages")
    n = optional_int(body, "n") or 1
    limit = optional_int(body, "max_completion_tokens")
    if limit is None:
        limit = optional_int(body, "max_tokens")

    texts = [content_text(m.get("content")) for m in messages]
    prompt = next((t for m, t in zip(messages[::-1], texts[::-1], strict=True) if m["role"] == "user"), "")
    prompt_tokens = prompt_tokens_of(texts)
    if body.get("tools"):
        prompt_tokens += estimate_tokens(orjson.dumps(body["tools"]).decode())

    tool_call = plan_tool_call(
        body.get("tools"), body.get("tool_choice"), after_tool_result=messages[-1]["role"] == "tool"
    )
    structured = _structured_content(body.get("response_format"), prompt)
    examples = tuned(model) if tuned is not None else None
    learned = examples.reply_for(messages) if examples is not None else None
    if learned is not None and structured is not None and not _is_json(learned):
        learned = None  # asked for JSON, learned prose: the schema wins
    if learned is None:  # a category question gets the stand-in rule's answer (``_categories``)
        learned = category_reply(model, messages, body.get("response_format"))
    reasoning = REASONING_TOKENS if is_reasoning_model(model) else 0
    choices: list[PlannedChoice] = []
    completion_tokens = reasoning_tokens = 0
    for index in range(n):
        spent_reasoning = reasoning
        if tool_call is not None:
            choice = PlannedChoice(None, [], tool_call, "tool_calls")
            spent = estimate_tokens(tool_call.name + tool_call.arguments)
        elif learned is not None:
            kept_text, spent_reasoning, cut = _budget_text(learned, limit, reasoning)
            choice = PlannedChoice(kept_text, text_pieces(kept_text), None, "length" if cut else "stop")
            spent = estimate_tokens(kept_text)
        elif structured is not None:
            choice = PlannedChoice(structured, fixed_pieces(structured), None, "stop")
            spent = estimate_tokens(structured)
        else:
            kept, spent_reasoning, cut = budget_words(reply_words(prompt, words, index), limit, reasoning)
            choice = PlannedChoice(" ".join(kept), word_pieces(kept), None, "length" if cut else "stop")
            spent = len(kept)
        choices.append(choice)
        completion_tokens += spent + spent_reasoning
        reasoning_tokens += spent_reasoning
    return ChatPlan(model, choices, _usage(prompt_tokens, completion_tokens, reasoning_tokens))


def _structured_content(response_format: Any, prompt: str) -> str | None:
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return orjson.dumps(minimal_instance(schema if isinstance(schema, Mapping) else {})).decode()
    if kind == "json_object":
        return orjson.dumps({"reply": " ".join(reply_words(prompt))}).decode()
    return None


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _budget_text(text: str, limit: int | None, reasoning: int) -> tuple[str, int, bool]:
    """Like ``budget_words`` for a fixed reply: cut to the tokens left after reasoning."""
    if limit is None:
        return text, reasoning, False
    reasoning = min(reasoning, limit)
    room = limit - reasoning
    if estimate_tokens(text) > room:
        return text[: room * 4], reasoning, True
    return text, reasoning, False


def text_pieces(text: str) -> list[str]:
    """Stream pieces of a fixed reply that concatenate to exactly ``text``: a word per piece,
    each with the whitespace before it."""
    return [piece for piece in re.split(r"(?=\s)(?<!\s)", text) if piece] or [""]


def _usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens(prompt_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_call_json(call: PlannedToolCall) -> dict[str, Any]:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def chat_completion_object(plan: ChatPlan, completion_id: str, created: int) -> dict[str, Any]:
    choices = []
    for index, choice in enumerate(plan.choices):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.content,
            "refusal": None,
            "annotations": [],
        }
        if choice.tool_call is not None:
            message["tool_calls"] = [_tool_call_json(choice.tool_call)]
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": choice.finish_reason}
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_chunk_events(
    plan: ChatPlan, completion_id: str, created: int, *, include_usage: bool
) -> Iterator[bytes]:
    """The SSE events of a streamed completion, ending with the usage chunk and ``[DONE]``."""
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if include_usage:
        base["usage"] = None
    per_choice = [_choice_deltas(index, choice) for index, choice in enumerate(plan.choices)]
    # Like upstream, choices take turns: one choice per chunk.
    for row in zip_longest(*per_choice):
        for delta in row:
            if delta is not None:
                yield sse_data({**base, "choices": [delta]})
    if include_usage:
        yield sse_data({**base, "choices": [], "usage": plan.usage})
    yield SSE_DONE


def _choice_deltas(index: int, choice: PlannedChoice) -> Iterator[dict[str, Any]]:
    """The deltas of one choice, lazily: a long reply must not delay its first chunk."""

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}

    call = choice.tool_call
    if call is not None:
        opening = {
            "index": 0,
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield delta({"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None})
        for piece in fixed_pieces(call.arguments, 8):
            yield delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    else:
        yield delta({"role": "assistant", "content": "", "refusal": None})
        for piece in choice.pieces:
            yield delta({"content": piece})
    yield delta({}, choice.finish_reason)


def chat_completion_endpoint(
    tuned: TunedModelLookup | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /chat/completions`` handler of an app whose fine-tuned models ``tuned`` finds."""

    async def create_chat_completion(request: Request) -> Response:
        body = await read_json_object(request)
        knobs = request_knobs(request)
        plan = plan_chat(body, knobs.words, tuned)
        completion_id = "chatcmpl-" + os.urandom(12).hex()
        created = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
            events = chat_chunk_events(plan, completion_id, created, include_usage=include_usage)
            return event_stream(events, knobs.chunk_delay_s)
        return json_response(chat_completion_object(plan, completion_id, created))

    return create_chat_completion
