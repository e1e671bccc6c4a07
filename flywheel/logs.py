"""Recent calls, newest first, with a short text preview of what went in and what came out.

The previews are pure functions of the stored JSON (``input_preview``/``output_preview``) that know
the shapes of the chat completions, responses, completions and embeddings APIs; any other endpoint,
or a body that is not JSON, has no preview. Endpoints are matched on their last path segments, so
Azure-style paths (``/openai/deployments/NAME/chat/completions``) work too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from sdk.schema import call_tags, calls

from .errors import UsageError
from .query import CallFilter, connect, filter_calls

__all__ = ["PREVIEW_CHARS", "input_preview", "output_preview", "recent_calls"]

PREVIEW_CHARS = 120
"""Previews longer than this are cut, ending in an ellipsis."""

_COLUMNS = (
    calls.c.id,
    calls.c.created_at,
    calls.c.endpoint,
    calls.c.model,
    calls.c.status_code,
    calls.c.latency_ms,
    calls.c.ttft_ms,
    calls.c.prompt_tokens,
    calls.c.completion_tokens,
    calls.c.total_tokens,
    calls.c.cost_usd,
    calls.c.error,
    calls.c.stream,
)


def recent_calls(
    url: str, call_filter: CallFilter | None = None, limit: int = 20, *, full: bool = False
) -> list[dict[str, Any]]:
    """The ``limit`` most recent calls matching ``call_filter``, newest first.

    Each call is a dict with ``id``, ``created_at`` (aware UTC datetime), ``endpoint``, ``model``,
    ``status_code``, ``latency_ms``, ``ttft_ms``, ``prompt_tokens``, ``completion_tokens``,
    ``total_tokens``, ``cost_usd``, ``error``, ``stream``, ``tags`` (dict), ``input_preview`` (the last
    input message) and ``output_preview`` (the output text); with ``full=True`` also ``request`` and
    ``response``, the stored bodies parsed from JSON.
    Raises ``StoreError`` when the store cannot be read, ``UsageError`` for ``limit < 1``.
    """
    if limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}", "--limit")
    statement = sa.select(*_COLUMNS, calls.c.request, calls.c.response)
    statement = filter_calls(statement, call_filter or CallFilter())
    statement = statement.order_by(calls.c.created_at.desc(), calls.c.id.desc()).limit(limit)
    with connect(url) as connection:
        rows = connection.execute(statement).mappings().all()
        tags = _tags_of(connection, [row["id"] for row in rows])
    result = []
    for row in rows:
        item = {str(column.name): row[column.name] for column in _COLUMNS}
        item["created_at"] = _utc(row["created_at"])
        if item["total_tokens"] is None and row["prompt_tokens"] is not None:
            item["total_tokens"] = row["prompt_tokens"] + (row["completion_tokens"] or 0)
        item["tags"] = tags.get(row["id"], {})
        request, response = _parse(row["request"]), _parse(row["response"])
        item["input_preview"] = input_preview(row["endpoint"], request)
        item["output_preview"] = output_preview(row["endpoint"], response)
        if full:
            item["request"], item["response"] = request, response
        result.append(item)
    return result


def _tags_of(connection: sa.Connection, ids: list[str]) -> dict[str, dict[str, str]]:
    if not ids:
        return {}
    statement = sa.select(call_tags.c.call_id, call_tags.c.key, call_tags.c.value).where(
        call_tags.c.call_id.in_(ids)
    )
    tags: dict[str, dict[str, str]] = {}
    for call_id, key, value in connection.execute(statement.order_by(call_tags.c.key)):
        tags.setdefault(call_id, {})[key] = value
    return tags


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store always writes UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _kind(endpoint: str) -> str | None:
    for suffix in ("/chat/completions", "/responses", "/completions", "/embeddings"):
        if endpoint.rstrip("/").endswith(suffix):
            return suffix.lstrip("/")
    return None


def _shorten(text: str | None) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def _content_text(content: Any) -> str | None:
    """Text of a message's content: a string, or a list of parts (text kept, others as [kind])."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    pieces = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                pieces.append(text)
            elif isinstance(part.get("type"), str):
                kind = part["type"].removeprefix("input_").removesuffix("_url")
                pieces.append(f"[{kind}]")
    return " ".join(pieces)


def _tool_call_text(name: Any, arguments: Any) -> str:
    return f"{name}({arguments if isinstance(arguments, str) else ''})"


def input_preview(endpoint: str, request: Any) -> str | None:
    """The last input message of a request body (parsed JSON), shortened; ``None`` if unknown."""
    if not isinstance(request, dict):
        return None
    kind = _kind(endpoint)
    if kind == "chat/completions":
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        return _shorten(_content_text(messages[-1].get("content")))
    if kind == "responses":
        given = request.get("input")
        if isinstance(given, list) and given and isinstance(given[-1], dict):
            item = given[-1]
            if "content" in item:
                return _shorten(_content_text(item["content"]))
            if item.get("type") == "function_call_output":
                return _shorten(str(item.get("output")))
            return None
        return _shorten(given) if isinstance(given, str) else None
    if kind in ("completions", "embeddings"):
        given = request.get("prompt" if kind == "completions" else "input")
        if isinstance(given, str):
            return _shorten(given)
        if isinstance(given, list) and given:
            if all(isinstance(x, int) for x in given):
                return f"[{len(given)} tokens]"
            last = given[-1]
            prefix = f"[{len(given)} inputs] " if len(given) > 1 else ""
            return _shorten(prefix + last) if isinstance(last, str) else f"[{len(given)} inputs]"
    return None


def output_preview(endpoint: str, response: Any) -> str | None:
    """The output text of a response body (parsed JSON), shortened; ``None`` if unknown.

    API errors show their message (``error: ...``); tool calls show as ``name(arguments)``.
    """
    if not isinstance(response, dict):
        return None
    error = response.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _shorten("error: " + error["message"])
    kind = _kind(endpoint)
    if kind in ("chat/completions", "completions"):
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        if kind == "completions":
            text = choices[0].get("text")
            return _shorten(text) if isinstance(text, str) else None
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return None
        text = _content_text(message.get("content")) or message.get("refusal")
        if text:
            return _shorten(text)
        tool_calls = message.get("tool_calls") or []
        functions = [c.get("function") for c in tool_calls if isinstance(c, dict)]
        rendered = [_tool_call_text(f.get("name"), f.get("arguments")) for f in functions if f]
        return _shorten("; ".join(rendered)) if rendered else None
    if kind == "responses":
        texts, tools = [], []
        for item in response.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                texts.append(_content_text(item.get("content")) or "")
            elif item.get("type") == "function_call":
                tools.append(_tool_call_text(item.get("name"), item.get("arguments")))
        return _shorten(" ".join(t for t in texts if t) or "; ".join(tools)) or None
    if kind == "embeddings":
        data = response.get("data")
        if not isinstance(data, list):
            return None
        first = data[0].get("embedding") if data and isinstance(data[0], dict) else None
        size = f", {len(first)} dimensions" if isinstance(first, list) else ""
        return f"[{len(data)} embedding{'s' if len(data) != 1 else ''}{size}]"
    return None
