"""Recorded chat calls for the flywheel's tests, made the way the SDK makes them.

Each call goes through ``sdk._records.build_record`` (the SDK writer's own conversion of an HTTP
exchange into a ``calls`` row) and ``sdk._store.insert_batch``, so the rows are exactly what a real
app leaves in the store, without a server round trip per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from sdk._exchange import Exchange
from sdk._migrate import upgrade
from sdk._pricing import PriceTable
from sdk._records import build_record
from sdk._store import create_store_engine, insert_batch

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
_PRICES = PriceTable.load()


def chat_exchange(
    prompt: str,
    reply: str | None = "Done.",
    *,
    system: str | None = "You are a helpful support assistant.",
    model: str = "gpt-4o-mini",
    at: datetime = T0,
    tags: Mapping[str, str] | None = None,
    status: int = 200,
    tools: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> Exchange:
    """The exchange of one ``/chat/completions`` call (non-streamed) as the transport captures it."""
    if messages is None:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
    request: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0}
    if tools:
        request["tools"] = tools
    if status >= 400:
        response: dict[str, Any] = {"error": {"message": "The server had an error", "type": "server_error"}}
    else:
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        if tool_calls:
            message["tool_calls"] = tool_calls
        response = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(at.timestamp()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
    body = orjson.dumps(response)
    return Exchange(
        started_at=at.timestamp(),
        method="POST",
        url="https://api.openai.com/v1/chat/completions",
        request_content_type="application/json",
        request_body=orjson.dumps(request),
        tags=dict(tags or {}),
        status_code=status,
        response_content_type="application/json",
        response_chunks=[body],
        response_size=len(body),
        latency_ms=300.0,
    )


def record(db_url: str, exchanges: Iterable[Exchange]) -> list[str]:
    """Store ``exchanges`` as the SDK's writer would (migrating the store first); their call ids."""
    upgrade(db_url)
    rows = [build_record(exchange, _PRICES) for exchange in exchanges]
    engine = create_store_engine(db_url)
    try:
        insert_batch(engine, [row for row in rows if row is not None])
    finally:
        engine.dispose()
    return [row["id"] for row in rows if row is not None]


def record_chats(
    db_url: str,
    prompts: Iterable[str],
    *,
    start: datetime = T0,
    step: timedelta = timedelta(minutes=1),
    **kw: Any,
) -> list[str]:
    """One chat call per prompt, a ``step`` apart from ``start``; their call ids, oldest first."""
    return record(db_url, (chat_exchange(p, at=start + n * step, **kw) for n, p in enumerate(prompts)))


def scalar(db_url: str, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()
