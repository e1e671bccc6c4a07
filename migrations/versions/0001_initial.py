"""The calls store: tables calls and call_tags, views calls_tagged and chat_calls.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# sdk.schema.RawJSON as DDL: TEXT on SQLite, JSONB on PostgreSQL.
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# The view SQL as of this revision, copied from sdk.schema.SQL_VIEWS rather than imported: a
# revision must keep creating what it created when later code changes the views (a later view
# may use columns that only a later revision adds). tests/test_migrations.py checks that the
# views at head are exactly sdk.schema.SQL_VIEWS.
VIEWS: dict[str, dict[str, str]] = {
    "sqlite": {
        "calls_tagged": """
CREATE VIEW calls_tagged AS
SELECT c.*,
       (SELECT json_group_object(t.key, t.value) FROM call_tags t WHERE t.call_id = c.id) AS tags
FROM calls c
""",
        "chat_calls": """
CREATE VIEW chat_calls AS
SELECT c.id, c.created_at, c.model, c.status_code, c.latency_ms,
       c.prompt_tokens, c.completion_tokens, c.cost_usd,
       json_extract(c.request, '$.messages[#-1].content') AS last_message,
       json_extract(c.response, '$.choices[0].message.content') AS reply,
       json_extract(c.response, '$.choices[0].finish_reason') AS finish_reason
FROM calls c
WHERE c.endpoint = '/chat/completions'
""",
    },
    "postgresql": {
        "calls_tagged": """
CREATE VIEW calls_tagged AS
SELECT c.*,
       COALESCE((SELECT jsonb_object_agg(t.key, t.value) FROM call_tags t WHERE t.call_id = c.id),
                '{}'::jsonb) AS tags
FROM calls c
""",
        "chat_calls": """
CREATE VIEW chat_calls AS
SELECT c.id, c.created_at, c.model, c.status_code, c.latency_ms,
       c.prompt_tokens, c.completion_tokens, c.cost_usd,
       c.request -> 'messages' -> -1 ->> 'content' AS last_message,
       c.response -> 'choices' -> 0 -> 'message' ->> 'content' AS reply,
       c.response -> 'choices' -> 0 ->> 'finish_reason' AS finish_reason
FROM calls c
WHERE c.endpoint = '/chat/completions'
""",
    },
}


# PostgreSQL compresses large values with pglz by default, and for bodies of a few KB that
# compression is most of the cost of an insert; lz4 (PostgreSQL 14+, when built with it) is
# several times faster. Only new values are affected, so this is safe on any server.
PG_LZ4_BODIES = """
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 AND EXISTS (
        SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        ALTER TABLE calls ALTER COLUMN request SET COMPRESSION lz4, ALTER COLUMN response SET COMPRESSION lz4;
    END IF;
END
$$
"""


def _dialect() -> str:
    return op.get_context().dialect.name


def _views() -> dict[str, str]:
    return VIEWS.get(_dialect(), {})


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column(
            "id",
            sa.String(length=32),
            nullable=False,
            comment="Time-ordered id, 32 hex characters.",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the request was sent (UTC).",
        ),
        sa.Column(
            "method",
            sa.String(length=10),
            nullable=False,
            comment="HTTP method.",
        ),
        sa.Column(
            "base_url",
            sa.String(length=512),
            nullable=True,
            comment="Scheme and host of the upstream API.",
        ),
        sa.Column(
            "endpoint",
            sa.String(length=256),
            nullable=False,
            comment="Path below the API root, e.g. /chat/completions.",
        ),
        sa.Column(
            "model",
            sa.String(length=256),
            nullable=True,
            comment="Model asked for in the request (or answered).",
        ),
        sa.Column(
            "request",
            JSON_TEXT,
            nullable=True,
            comment="JSON body as sent; metadata only for binary bodies.",
        ),
        sa.Column(
            "response",
            JSON_TEXT,
            nullable=True,
            comment="JSON body, or the assembled stream.",
        ),
        sa.Column(
            "status_code",
            sa.Integer(),
            nullable=True,
            comment="HTTP status; NULL when no response arrived.",
        ),
        sa.Column(
            "error",
            sa.Text(),
            nullable=True,
            comment="Error message (API error or client-side failure).",
        ),
        sa.Column(
            "stream",
            sa.Boolean(),
            nullable=False,
            comment="The response was streamed.",
        ),
        sa.Column(
            "complete",
            sa.Boolean(),
            nullable=False,
            comment="False if the body was not fully read.",
        ),
        sa.Column(
            "attempt",
            sa.Integer(),
            nullable=False,
            comment="0 for the first try, n for the n-th retry.",
        ),
        sa.Column(
            "idempotency_key",
            sa.String(length=128),
            nullable=True,
            comment="Shared by all attempts of one call.",
        ),
        sa.Column(
            "latency_ms",
            sa.Float(),
            nullable=True,
            comment="Request sent to last byte received.",
        ),
        sa.Column(
            "ttft_ms",
            sa.Float(),
            nullable=True,
            comment="Request sent to first streamed token.",
        ),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.Column(
            "cached_tokens",
            sa.Integer(),
            nullable=True,
            comment="Prompt tokens served from the prompt cache.",
        ),
        sa.Column(
            "reasoning_tokens",
            sa.Integer(),
            nullable=True,
            comment="Completion tokens spent on reasoning.",
        ),
        sa.Column(
            "cost_usd",
            sa.Float(),
            nullable=True,
            comment="NULL when the model is not in the price table.",
        ),
        sa.Column(
            "request_id",
            sa.String(length=256),
            nullable=True,
            comment="Upstream request id (x-request-id).",
        ),
        sa.Column(
            "input_hash",
            sa.String(length=64),
            nullable=True,
            comment="sha256 of the canonical request input.",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
    )
    if _dialect() == "postgresql":
        op.execute(PG_LZ4_BODIES)
    op.create_index(op.f("ix_calls_created_at"), "calls", ["created_at"])
    op.create_index(op.f("ix_calls_model_created_at"), "calls", ["model", "created_at"])
    op.create_index(op.f("ix_calls_endpoint_created_at"), "calls", ["endpoint", "created_at"])
    op.create_index(op.f("ix_calls_status_code"), "calls", ["status_code"])
    op.create_index(op.f("ix_calls_input_hash"), "calls", ["input_hash"])

    op.create_table(
        "call_tags",
        sa.Column("call_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_call_tags_call_id_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "key", name=op.f("pk_call_tags")),
    )
    op.create_index(op.f("ix_call_tags_key_value"), "call_tags", ["key", "value"])

    for sql in _views().values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(_views()):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index(op.f("ix_call_tags_key_value"), table_name="call_tags")
    op.drop_table("call_tags")
    op.drop_index(op.f("ix_calls_input_hash"), table_name="calls")
    op.drop_index(op.f("ix_calls_status_code"), table_name="calls")
    op.drop_index(op.f("ix_calls_endpoint_created_at"), table_name="calls")
    op.drop_index(op.f("ix_calls_model_created_at"), table_name="calls")
    op.drop_index(op.f("ix_calls_created_at"), table_name="calls")
    op.drop_table("calls")
