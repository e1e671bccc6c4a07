"""``POST /v1/completions``: the legacy text-completion API, streamed or not.

``prompt`` may be a string, a list of strings, a token array or a list of token arrays; each
prompt gets ``n`` choices (indices ``prompt_index * n + k``) like upstream. ``max_tokens``
defaults to 16, as upstream, unless ``x-mock-words`` asks for a length.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._chat import SYSTEM_FINGERPRINT
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
from ._text import budget_words, estimate_tokens, reply_words

_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class PlannedText:
    pieces: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class CompletionPlan:
    model: str
    choices: list[PlannedText]
    usage: dict[str, int]


def prompt_texts(prompt: Any) -> list[str]:
    """Normalise every accepted ``prompt`` form to a list of prompt strings."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) for t in prompt):
            return [" ".join(map(str, prompt))]
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return [" ".join(map(str, p)) for p in prompt]
    raise MockAPIError(400, "Invalid 'prompt': expected a string, strings or token arrays.", param="prompt")


def plan_completion(body: Mapping[str, Any], words: int | None = None) -> CompletionPlan:
    model = require(body, "model", str)
    prompts = prompt_texts(require(body, "prompt", (str, list)))
    n = optional_int(body, "n") or 1
    limit = optional_int(body, "max_tokens")
    if limit is None and words is None:  # an explicit x-mock-words outranks the implicit default
        limit = _DEFAULT_MAX_TOKENS
    echo = bool(body.get("echo"))
    choices: list[PlannedText] = []
    completion_tokens = 0
    for prompt in prompts:
        for k in range(n):
            kept, _, cut = budget_words(reply_words(prompt, words, k), limit, 0)
            pieces = [" " + word for word in kept]
            if echo:
                pieces.insert(0, prompt)
            choices.append(PlannedText(pieces, "length" if cut else "stop"))
            completion_tokens += len(kept)
    prompt_tokens = sum(estimate_tokens(p) for p in prompts)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return CompletionPlan(model, choices, usage)


def completion_object(plan: CompletionPlan, completion_id: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": plan.model,
        "choices": [
            {"text": choice.text, "index": i, "logprobs": None, "finish_reason": choice.finish_reason}
            for i, choice in enumerate(plan.choices)
        ],
        "usage": plan.usage,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_chunk_events(
    plan: CompletionPlan, completion_id: str, created: int, *, include_usage: bool
) -> Iterator[bytes]:
    base = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    for index, choice in enumerate(plan.choices):
        for piece in choice.pieces:
            choices = [{"text": piece, "index": index, "logprobs": None, "finish_reason": None}]
            yield sse_data({**base, "choices": choices})
        final = [{"text": "", "index": index, "logprobs": None, "finish_reason": choice.finish_reason}]
        yield sse_data({**base, "choices": final})
    if include_usage:
        yield sse_data({**base, "choices": [], "usage": plan.usage})
    yield SSE_DONE


async def create_completion(request: Request) -> Response:
    body = await read_json_object(request)
    knobs = request_knobs(request)
    plan = plan_completion(body, knobs.words)
    completion_id = "cmpl-" + os.urandom(12).hex()
    created = int(time.time())
    if body.get("stream"):
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        events = completion_chunk_events(plan, completion_id, created, include_usage=include_usage)
        return event_stream(events, knobs.chunk_delay_s)
    return json_response(completion_object(plan, completion_id, created))
