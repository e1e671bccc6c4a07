"""One ``Exchange`` -> one row of ``calls`` (plus its tags): the writer's pure conversion step.

``build_record`` runs on the background writer thread, inside the app's process, so it is written
for the GIL: bodies are parsed once with ``orjson``, JSON bodies are stored as the text that crossed
the wire (no re-serialization unless a redactor changed them), URL splitting is cached.

What goes in the JSON columns (both are JSONB on PostgreSQL, so they always hold valid JSON):
- a JSON body: its text as sent/received;
- a stream: the assembled final object (``_assembly``);
- a body that is not stored (binary, multipart, audio): ``{"_flywheel": {"content_type", "bytes"}}``;
- a body that should be JSON but is not (truncated, an HTML error page): ``{"_flywheel": {"raw"}}``
  holding its first 64 KB;
- no body: NULL.
Response bodies are teed before decompression: ``content-encoding`` (gzip, deflate; br and zstd when
their modules are installed) is undone here. ``complete`` is the transport's verdict, except that a
stream whose own end arrived (``[DONE]``, a final ``response.*`` event) is complete: ``openai``
closes the response at ``[DONE]`` without reading to EOF.

Invariants: no header ever reaches a record (so no ``Authorization``/``api-key``); ``base_url`` is
scheme, host and port only; a failing redactor drops the record instead of letting it through;
malformed bodies never raise.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import re
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson

from . import _health
from ._assembly import assemble_stream
from ._exchange import Exchange
from ._hashing import input_hash
from ._pricing import PriceTable
from ._sse import iter_sse_events

__all__ = ["RAW_LIMIT", "Redactor", "build_record", "new_call_id"]

Redactor = Callable[[dict[str, Any]], dict[str, Any] | None]

RAW_LIMIT = 64 * 1024
"""Bytes of a non-JSON body kept in ``{"_flywheel": {"raw": ...}}``."""
_ERROR_BODY_LIMIT = 500
_TEXT_LIMIT = 64 * 1024
_UTC = dt.UTC
# Column widths of ``calls`` (PostgreSQL rejects longer values).
_WIDTHS = {"endpoint": 256, "model": 256, "request_id": 256, "idempotency_key": 128, "base_url": 512}
# API roots in front of the endpoint: /v1 (OpenAI, Ollama, vLLM, /api/v1 of OpenRouter),
# /openai/v1 (Groq, Azure v1), /v1beta/openai (Gemini), /openai/deployments/<name> (Azure).
_ROOT_SEGMENTS = frozenset({"v1", "v1beta", "v1alpha", "openai"})
_SECRET_PARAM = re.compile(r"(?i)\b(api[-_]?key|key|token|access_token|sig|signature)=[^&\s'\"]+")


def new_call_id(ts: float) -> str:
    """A 32-hex-character id: 48-bit milliseconds since the epoch, then 80 random bits.

    Ids sort by creation time (to the millisecond) as plain strings.
    """
    ms = int(ts * 1000) & 0xFFFF_FFFF_FFFF
    return f"{ms:012x}{os.urandom(10).hex()}"


class _Url(NamedTuple):
    base_url: str | None
    endpoint: str
    deployment: str | None


@lru_cache(maxsize=512)
def _split_url(url: str) -> _Url:
    try:
        parts = urlsplit(url)
    except ValueError:
        return _Url(None, "/", None)
    host = parts.netloc.rpartition("@")[2]  # never keep userinfo
    base_url = f"{parts.scheme}://{host}" if parts.scheme and host else None
    segments = [s for s in parts.path.split("/") if s]
    deployment = None
    start = 0
    i = 0
    while i < len(segments):
        segment = segments[i]
        if segment in _ROOT_SEGMENTS:
            start = i + 1
            i += 1
            # Consume the whole root: /openai/v1, /v1beta/openai, /openai/deployments/<name>.
            while i < len(segments):
                segment = segments[i]
                if segment in _ROOT_SEGMENTS:
                    i += 1
                elif segment == "deployments" and i + 1 < len(segments):
                    deployment = segments[i + 1]
                    i += 2
                else:
                    break
                start = i
            break
        i += 1
    endpoint = "/" + "/".join(segments[start:])
    return _Url(base_url, endpoint[: _WIDTHS["endpoint"]], deployment)


def _meta(**fields: Any) -> tuple[str, dict[str, Any]]:
    """(text, object) of a ``{"_flywheel": {...}}`` placeholder for a body that is not stored."""
    obj = {"_flywheel": fields}
    return orjson.dumps(obj).decode(), obj


def _raw(body: bytes) -> tuple[str, dict[str, Any]]:
    text = body[:RAW_LIMIT].decode("utf-8", "replace").replace("\x00", "\ufffd")
    obj = {"_flywheel": {"raw": text}}
    return orjson.dumps(obj).decode(), obj


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _dump(obj: Any) -> tuple[str, Any]:
    """(JSON text, object) for a value built or changed in Python, NUL characters replaced."""
    text = orjson.dumps(obj).decode()
    if "\\u0000" in text:  # PostgreSQL's jsonb rejects NUL characters
        obj = _without_nul(obj)
        text = orjson.dumps(obj).decode()
    return text, obj


def _json_body(body: bytes) -> tuple[str, Any] | None:
    """(text to store, parsed value) for a JSON body; ``None`` if it is not JSON."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if b"\\u0000" in body:
        # PostgreSQL's jsonb rejects the NUL character: store the text with it replaced.
        obj = _without_nul(obj)
        return orjson.dumps(obj).decode(), obj
    return body.decode("utf-8"), obj


def _decompress(body: bytes, encoding: str | None) -> bytes | None:
    """The body with its ``content-encoding`` undone (the transport tees the bytes as they came);
    ``None`` if an encoding is unknown, its module is missing, or the data is corrupt.

    A truncated body (stream cut short) decodes as far as it goes.
    """
    if not encoding or not body:
        return body
    for coding in reversed(encoding.lower().split(",")):
        coding = coding.strip()
        try:
            if coding in ("gzip", "x-gzip"):
                body = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(body)
            elif coding == "deflate":
                try:
                    body = zlib.decompressobj().decompress(body)
                except zlib.error:  # raw deflate without the zlib header, as some servers send it
                    body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body)
            elif coding == "br":
                body = _module("brotli", "brotlicffi").decompress(body)
            elif coding == "zstd":
                body = _module("zstandard").ZstdDecompressor().decompressobj().decompress(body)
            elif coding not in ("identity", ""):
                return None
        except Exception:  # corrupt data, or no module for it (the app's httpx had one, we may not)
            return None
    return body


def _module(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(names[0])


def _is_json_type(content_type: str | None) -> bool:
    return content_type is not None and "json" in content_type


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _usage_counts(usage: Any) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """(prompt, completion, total, cached, reasoning) from a chat, embeddings or Responses usage."""
    if not isinstance(usage, dict):
        return None, None, None, None, None
    if "input_tokens" in usage or "output_tokens" in usage:
        prompt = _int(usage.get("input_tokens"))
        completion = _int(usage.get("output_tokens"))
        prompt_details = usage.get("input_tokens_details")
        completion_details = usage.get("output_tokens_details")
    else:
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
    total = _int(usage.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    cached = _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else None
    reasoning = (
        _int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else None
    )
    return prompt, completion, total, cached, reasoning


def _api_error(obj: Any, body: bytes) -> str:
    """The message of an API error body (OpenAI's ``error.message`` and common variants)."""
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(error, str) and error:
            return error
        for key in ("message", "detail"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                return value
    return body[: _ERROR_BODY_LIMIT * 4].decode("utf-8", "replace")[:_ERROR_BODY_LIMIT]


def _scrub(text: str) -> str:
    """Error text is free-form (it may quote a URL): hide anything that looks like a credential."""
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\1=[redacted]", text)
    return text[:_TEXT_LIMIT]


def _clip(value: Any, column: str) -> str | None:
    if not isinstance(value, str):
        return None
    width = _WIDTHS[column]
    return value if len(value) <= width else value[:width]


def build_record(ex: Exchange, prices: PriceTable, redact: Redactor | None = None) -> dict[str, Any] | None:
    """The ``calls`` row for ``ex`` (column name -> value) plus ``"tags"``; ``None`` if redacted away.

    ``redact`` receives ``{"endpoint", "model", "request", "response", "error", "tags"}`` with the
    bodies parsed (exactly what would be stored, ``_flywheel`` wrappers included) and returns that
    dict, changed as it likes, or ``None`` to drop the record (counted as ``redacted_dropped``). If
    it raises or returns anything else, the record is dropped and reported as ``errors.redact``.
    Token counts and cost come from the original response: they are not content.
    """
    url = _split_url(str(ex.url))  # the transport keeps the URL object; text is made here
    endpoint = url.endpoint

    # Request ---------------------------------------------------------------------------------
    request_text: str | None = None
    request_obj: Any = None
    request_is_json = False
    body = ex.request_body
    if body:
        parsed = _json_body(body)
        if parsed is not None:
            request_text, request_obj = parsed
            request_is_json = True
        elif _is_json_type(ex.request_content_type):
            request_text, request_obj = _raw(body)
        else:
            request_text, request_obj = _meta(content_type=ex.request_content_type, bytes=len(body))
    elif body is None and ex.request_size:
        request_text, request_obj = _meta(content_type=ex.request_content_type, bytes=ex.request_size)
    request_dict: dict[str, Any] = request_obj if request_is_json and isinstance(request_obj, dict) else {}

    # Response --------------------------------------------------------------------------------
    response_text: str | None = None
    response_obj: Any = None
    stream_error: str | None = None
    content_type = ex.response_content_type or ""
    is_sse = content_type.startswith("text/event-stream")
    chunks = ex.response_chunks
    complete = ex.complete
    if chunks is None:
        if ex.response_size:
            response_text, response_obj = _meta(content_type=ex.response_content_type, bytes=ex.response_size)
        response_body = b""
    else:
        raw_body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        decoded = _decompress(raw_body, ex.response_content_encoding)
        response_body = decoded or b""
        if decoded is None:
            _health.count("undecodable_bodies")
            response_text, response_obj = _meta(
                content_type=ex.response_content_type,
                content_encoding=ex.response_content_encoding,
                bytes=len(raw_body),
            )
        elif is_sse:
            response_text, response_obj, stream_error, finished = _assembled(endpoint, response_body)
            complete = complete or finished
        elif response_body:
            parsed = _json_body(response_body)
            if parsed is not None:
                response_text, response_obj = parsed
            else:
                response_text, response_obj = _raw(response_body)

    # Model, usage, cost ------------------------------------------------------------------------
    response_dict: dict[str, Any] = response_obj if isinstance(response_obj, dict) else {}
    answered = response_dict.get("model")
    if not isinstance(answered, str):
        answered = None
    asked = request_dict.get("model")
    model = asked if isinstance(asked, str) and asked else (url.deployment or answered)

    prompt, completion, total, cached, reasoning = _usage_counts(response_dict.get("usage"))
    cost = None
    if prompt is not None or completion is not None:
        cost = prices.cost(model, prompt, completion, cached or 0)
        if cost is None and answered and answered != model:
            cost = prices.cost(answered, prompt, completion, cached or 0)

    # Error -------------------------------------------------------------------------------------
    error: str | None
    status = ex.status_code
    if ex.error:
        error = ex.error
    elif status is not None and status >= 400:
        error = _api_error(response_obj, response_body) or f"HTTP {status}"
    else:
        error = stream_error
    if error is not None:
        error = _scrub(error)

    tags = dict(ex.tags)
    hashed = input_hash(request_dict) if request_dict else None

    if redact is not None:
        try:
            redacted = redact(
                {
                    "endpoint": endpoint,
                    "model": model,
                    "request": request_obj,
                    "response": response_obj,
                    "error": error,
                    "tags": tags,
                }
            )
            if redacted is None:
                _health.count("redacted_dropped")
                return None
            if not isinstance(redacted, dict):
                raise TypeError(f"redact hook must return a dict or None, not {type(redacted).__name__}")
            request_obj = redacted.get("request")
            response_obj = redacted.get("response")
            request_text = None if request_obj is None else _dump(request_obj)[0]
            response_text = None if response_obj is None else _dump(response_obj)[0]
            hashed = input_hash(request_obj) if request_is_json and isinstance(request_obj, dict) else None
            endpoint = str(redacted.get("endpoint") or endpoint)[: _WIDTHS["endpoint"]]
            model = redacted.get("model")
            error = redacted.get("error")
            error = None if error is None else str(error)[:_TEXT_LIMIT]
            new_tags = redacted.get("tags")
            tags = (
                {str(k): str(v) for k, v in new_tags.items() if v is not None}
                if isinstance(new_tags, dict)
                else {}
            )
        except Exception as exc:
            _health.report_error("redact", exc)
            return None

    return {
        "id": new_call_id(ex.started_at),
        "created_at": dt.datetime.fromtimestamp(ex.started_at, _UTC),
        "method": ex.method.upper()[:10],
        "base_url": _clip(url.base_url, "base_url"),
        "endpoint": endpoint,
        "model": _clip(model, "model"),
        "request": request_text,
        "response": response_text,
        "status_code": status,
        "error": error,
        "stream": is_sse or request_dict.get("stream") is True,
        "complete": complete,
        "attempt": ex.attempt,
        "idempotency_key": _clip(ex.idempotency_key, "idempotency_key"),
        "latency_ms": ex.latency_ms,
        "ttft_ms": ex.ttft_ms,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "cost_usd": cost,
        "request_id": _clip(ex.request_id, "request_id"),
        "input_hash": hashed,
        "tags": tags,
    }


def _assembled(endpoint: str, body: bytes) -> tuple[str | None, Any, str | None, bool]:
    """(text, object, stream error, reached its end) for an SSE body."""
    try:
        # The body as one chunk: decoding does not depend on chunk boundaries, and this skips the
        # per-chunk bookkeeping (about 2.5x faster on a 200-chunk stream).
        obj, error, finished = assemble_stream(endpoint, iter_sse_events((body,)))
        # ``openai`` stops reading at [DONE] and closes the response before EOF; the transport then
        # sees an unfinished body, but nothing was missed.
        finished = finished or body[-64:].rstrip().endswith(b"[DONE]")
        if obj is None:
            if not body:
                return None, None, error, finished
            return (*_meta(content_type="text/event-stream", events=0, bytes=len(body)), error, finished)
        text, obj = _dump(obj)
        return text, obj, error, finished
    except Exception as exc:  # an assembler bug must not lose the record: keep the raw stream
        _health.report_error("assemble", exc)
        text, raw = _raw(body)
        return text, raw, None, False
