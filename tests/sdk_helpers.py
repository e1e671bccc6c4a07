"""Helpers for the SDK's end-to-end tests: read back what landed in a store."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

import sdk
from sdk.schema import call_tags, calls

API_KEY = "sk-test-SECRET-abc123-do-not-store"


def prepare_store(db_url: str) -> None:
    """PostgreSQL needs `flywheel migrate` before use; SQLite is created by the SDK itself."""
    if db_url.startswith("postgresql"):
        from sdk._migrate import upgrade

        upgrade(db_url)


def fetch_calls(db_url: str) -> list[dict[str, Any]]:
    """All calls in the store, oldest first, with ``tags`` and parsed ``request``/``response``."""
    assert sdk.flush(timeout=30), "flush timed out"
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(calls).order_by(calls.c.id))]
            tag_rows = conn.execute(sa.select(call_tags)).all()
    finally:
        engine.dispose()
    tags: dict[str, dict[str, str]] = {}
    for call_id, key, value in tag_rows:
        tags.setdefault(call_id, {})[key] = value
    for row in rows:
        row["tags"] = tags.get(row["id"], {})
        for column in ("request", "response"):
            if row[column] is not None:
                row[column] = orjson.loads(row[column])
    return rows


def only_call(db_url: str) -> dict[str, Any]:
    rows = fetch_calls(db_url)
    assert len(rows) == 1, [(r["endpoint"], r["status_code"], r["error"]) for r in rows]
    return rows[0]
