"""HTTP plumbing shared by the endpoints: OpenAI-style errors, orjson bodies, SSE streams, knobs.

Every error the mock returns has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, whether raised by an endpoint
(``MockAPIError``), injected by a fault header, or produced by routing (404/405).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

_ERROR_TYPES = {429: "requests"}
_ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}

SSE_DONE = b"data: [DONE]\n\n"
MAX_WORDS = 1_000_000


class MockAPIError(Exception):
    """An error answered to the client as an OpenAI error body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def to_response(self) -> Response:
        return Response(
            error_body(self.status, self.message, param=self.param, code=self.code),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error JSON; ``type`` and a default ``code`` follow from the status like upstream."""
    kind = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code or _ERROR_CODES.get(status)}
    return orjson.dumps({"error": error})


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 like OpenAI's for anything else."""
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MockAPIError(
            400,
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
        ) from None
    if not isinstance(body, dict):
        raise MockAPIError(400, "The request body must be a JSON object.")
    return body


_TYPE_NAMES: dict[type, str] = {str: "a string", list: "an array", dict: "an object", int: "an integer"}


def require(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``body[name]``, or the 400 OpenAI answers when it is missing or of the wrong type."""
    if body.get(name) is None:
        raise MockAPIError(
            400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    value = body[name]
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise MockAPIError(
            400,
            f"Invalid type for '{name}': expected {expected}, but got {type(value).__name__}.",
            param=name,
            code="invalid_type",
        )
    return value


def optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MockAPIError(
            400, f"Invalid '{name}': expected a non-negative integer.", param=name, code="invalid_value"
        )
    return value


def header_number(name: str, raw: str) -> float:
    """A non-negative number from an ``x-mock-*`` header, or a 400 naming the header."""
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise MockAPIError(400, f"Header {name} must be a non-negative number, got {raw!r}.")
    return value


@dataclass(frozen=True, slots=True)
class Knobs:
    """Per-request output controls from headers."""

    words: int | None
    """``x-mock-words``: exact number of words in a text reply."""
    chunk_delay_s: float
    """``x-mock-chunk-delay-ms``: pause between streamed events, in seconds."""


def request_knobs(request: Request) -> Knobs:
    headers = request.headers
    words_raw = headers.get("x-mock-words")
    delay_raw = headers.get("x-mock-chunk-delay-ms")
    words = None if words_raw is None else int(header_number("x-mock-words", words_raw))
    if words is not None and words > MAX_WORDS:
        raise MockAPIError(400, f"Header x-mock-words must be at most {MAX_WORDS}, got {words}.")
    delay = 0.0 if delay_raw is None else header_number("x-mock-chunk-delay-ms", delay_raw) / 1000
    return Knobs(words=words, chunk_delay_s=delay)


def sse_data(payload: Any) -> bytes:
    """One Chat/Completions-style SSE event (``data:`` line only)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """One Responses-style SSE event: ``event: <type>`` and ``data: <json>``."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def event_stream(events: Iterable[bytes], delay_s: float) -> StreamingResponse:
    """A ``text/event-stream`` response of ``events``, pausing ``delay_s`` between them."""
    return StreamingResponse(
        _paced(events, delay_s),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _paced(events: Iterable[bytes], delay_s: float) -> AsyncIterator[bytes]:
    first = True
    for event in events:
        # Always yield to the loop: writes to a gone client never block, so without this a long
        # stream would never see the disconnect and would spin through every event.
        await asyncio.sleep(0 if first else delay_s)
        first = False
        yield event
