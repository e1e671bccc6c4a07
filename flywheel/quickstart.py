"""``flywheel quickstart``: an offline tour from app traffic to rows you can query.

Starts the mock server on loopback, sends a realistic batch of tagged calls through ``sdk.OpenAI``
and ``sdk.AsyncOpenAI`` (plain, streamed, a tool call, structured output, retried and failing
calls), flushes, and reports what landed in the store with the SQL to look at it. Needs no network
and no API key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sdk import _config

TICKETS = [
    ("billing", "I was charged twice for my October invoice."),
    ("billing", "Can I get a refund for the annual plan I bought yesterday?"),
    ("login", "The password reset email never arrives."),
    ("login", "Two-factor codes are rejected on my new phone."),
    ("bug", "Export to CSV crashes when the report has more than 10k rows."),
    ("bug", "The dashboard shows yesterday's numbers even after refresh."),
    ("other", "Do you have an office in Berlin?"),
    ("other", "How do I add a teammate to my workspace?"),
]

SYSTEM = "You are a support triage assistant. Reply with one category: billing, login, bug or other."

LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_invoice",
        "description": "Find an invoice by month.",
        "parameters": {
            "type": "object",
            "properties": {"month": {"type": "string"}},
            "required": ["month"],
        },
    },
}


@dataclass(frozen=True)
class QuickstartResult:
    database_url: str
    base_url: str
    calls_sent: int
    rows_before: int
    rows_after: int
    errors_seen: int


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def _count_rows(url: str) -> int:
    from sdk._store import create_store_engine, ensure_schema
    from sdk.schema import calls

    engine = create_store_engine(url)
    try:
        if not ensure_schema(engine):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar_one())
    finally:
        engine.dispose()


def _send_batch(base_url: str, url: str) -> tuple[int, int]:
    """Send the tour's calls; return (requests sent, errors the app saw)."""
    import openai

    import sdk

    sent = errors = 0
    client = sdk.OpenAI(
        api_key="sk-quickstart", base_url=base_url, database_url=url, tags={"app": "support-bot"}
    )
    with sdk.tags(feature="triage"):
        for i, (category, text) in enumerate(TICKETS * 2):
            prompt_id = "classify-v2" if i % 3 else "classify-v1"
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=_messages(text),
                tags={"prompt_id": prompt_id, "expected": category},
            )
            sent += 1
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=_messages(TICKETS[4][1]),
            stream=True,
            stream_options={"include_usage": True},
            tags={"prompt_id": "classify-v2", "mode": "stream"},
        )
        for _ in stream:
            pass
        sent += 1
    with sdk.tags(feature="billing-agent"):
        client.chat.completions.create(
            model="gpt-4o",
            messages=_messages(TICKETS[0][1]),
            tools=[LOOKUP_TOOL],
            tags={"prompt_id": "agent-v1"},
        )
        sent += 1
        client.responses.create(
            model="gpt-4.1-mini", input="Summarize: " + TICKETS[1][1], tags={"prompt_id": "sum-v1"}
        )
        sent += 1
    # One call that succeeds on its third attempt (two rows for the failed attempts), and one that fails.
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=_messages(TICKETS[2][1]),
        extra_headers={"x-mock-fail-attempts": "2"},
        tags={"prompt_id": "classify-v2"},
    )
    sent += 3
    try:
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini",
            messages=_messages(TICKETS[3][1]),
            extra_headers={"x-mock-status": "400"},
            tags={"prompt_id": "classify-v2"},
        )
    except openai.BadRequestError:
        errors += 1
    sent += 1

    async def async_calls() -> int:
        aclient = sdk.AsyncOpenAI(
            api_key="sk-quickstart", base_url=base_url, database_url=url, tags={"app": "support-bot"}
        )
        async with aclient:
            with sdk.tags(feature="triage", runtime="async"):
                await asyncio.gather(
                    *(
                        aclient.chat.completions.create(
                            model="gpt-4o-mini", messages=_messages(text), tags={"prompt_id": "classify-v2"}
                        )
                        for _, text in TICKETS
                    )
                )
        return len(TICKETS)

    sent += asyncio.run(async_calls())
    client.close()
    return sent, errors


def run_quickstart(database_url: str | None = None, echo: Callable[[str], Any] = print) -> QuickstartResult:
    """Run the tour against ``database_url`` (default: ``FLYWHEEL_DATABASE_URL`` or ``flywheel.db``)."""
    import sdk
    from flywheel.mock_server import MockServer

    url = database_url or _config.database_url()
    shown = sa.make_url(url).render_as_string(hide_password=True)
    if url.startswith("postgresql"):
        from flywheel.migrate import migrate

        migrate(url)
    before = _count_rows(url)
    with MockServer() as server:
        echo(f"mock OpenAI-compatible server on {server.base_url}")
        echo(f"store: {shown}")
        sent, errors = _send_batch(server.base_url, url)
        sdk.flush(timeout=60)
    after = _count_rows(url)
    echo(f"sent {sent} HTTP requests through sdk.OpenAI / sdk.AsyncOpenAI; the app saw {errors} error(s)")
    echo(f"rows in `calls`: {before} -> {after}")
    return QuickstartResult(url, server.base_url, sent, before, after, errors)


NEXT_STEPS = """
Look at them:
  flywheel logs --limit 10
  flywheel logs --tag prompt_id=classify-v2 --status ok
  flywheel stats --by model --by tag:prompt_id

Or with SQL (sqlite3 flywheel.db):
  SELECT created_at, model, status_code, latency_ms, cost_usd FROM calls ORDER BY created_at DESC LIMIT 10;
  SELECT t.value AS prompt_id, count(*), sum(c.cost_usd) FROM calls c
    JOIN call_tags t ON t.call_id = c.id AND t.key = 'prompt_id' GROUP BY t.value;
  SELECT last_message, reply FROM chat_calls LIMIT 5;
"""
