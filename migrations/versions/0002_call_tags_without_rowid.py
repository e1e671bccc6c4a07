"""SQLite: ``call_tags`` becomes a WITHOUT ROWID table (PostgreSQL: nothing changes).

A tag row is three short strings looked up by its primary key ``(call_id, key)``. As a rowid
table, SQLite keeps every tag twice over: the table b-tree plus a separate b-tree for the primary
key. WITHOUT ROWID stores the rows in the primary-key b-tree itself, which takes one b-tree insert
per tag off every recorded call (the writer benchmark's SQLite inserts went ~30 % faster; figures
in docs/performance.md). SQLite cannot change this in place, so the table is rebuilt, its rows
copied; the ``calls_tagged`` view, which reads it, is dropped and created again around that.

Revision ID: 0002_call_tags_without_rowid
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_call_tags_without_rowid"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As created by 0001_initial (copied, not imported: see the note there).
CALLS_TAGGED_SQLITE = """
CREATE VIEW calls_tagged AS
SELECT c.*,
       (SELECT json_group_object(t.key, t.value) FROM call_tags t WHERE t.call_id = c.id) AS tags
FROM calls c
"""


def _rebuild_call_tags(*, with_rowid: bool) -> None:
    op.execute("DROP VIEW IF EXISTS calls_tagged")
    op.create_table(
        "call_tags_rebuilt",
        sa.Column("call_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_call_tags_call_id_calls", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "key", name="pk_call_tags"),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(
        "INSERT INTO call_tags_rebuilt (call_id, key, value) SELECT call_id, key, value FROM call_tags"
    )
    op.execute("DROP TABLE call_tags")
    op.execute("ALTER TABLE call_tags_rebuilt RENAME TO call_tags")
    op.create_index("ix_call_tags_key_value", "call_tags", ["key", "value"])
    op.execute(CALLS_TAGGED_SQLITE)


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _rebuild_call_tags(with_rowid=False)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _rebuild_call_tags(with_rowid=True)
