"""The flywheel's tables: datasets, dataset_versions, dataset_entries, entry_outputs, exports.

A dataset refers to its calls (``dataset_entries.call_id``, which keeps a call that is in a dataset
from being deleted) and records every change as rows tagged with the dataset version that made it.

Revision ID: 0003_datasets
Revises: 0002_call_tags_without_rowid
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_datasets"
down_revision: str | Sequence[str] | None = "0002_call_tags_without_rowid"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# sdk.schema.RawJSON as DDL: TEXT on SQLite, JSONB on PostgreSQL.
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False, comment="What commands call it by."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "filter", JSON_TEXT, nullable=False, comment="The CallFilter that selects its calls (JSON)."
        ),
        sa.Column(
            "settings",
            JSON_TEXT,
            nullable=False,
            comment="Dedup, split and pruning rules (JSON), as changed by the dataset's steps.",
        ),
        sa.Column("version", sa.Integer(), nullable=False, comment="Its newest version."),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "dataset_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column(
            "call_id",
            sa.String(length=32),
            nullable=False,
            comment="The call whose input (and original output) this entry is.",
        ),
        sa.Column("added_in", sa.Integer(), nullable=False, comment="Dataset version that added it."),
        sa.Column(
            "removed_in", sa.Integer(), nullable=True, comment="Dataset version that took it out (dedup)."
        ),
        sa.Column(
            "removed_reason", sa.String(length=32), nullable=True, comment="duplicate, near_duplicate, ..."
        ),
        sa.Column(
            "cluster_key",
            sa.String(length=64),
            nullable=True,
            comment="Dedup cluster; decides the split side.",
        ),
        sa.Column(
            "first_exported_in", sa.Integer(), nullable=True, comment="Dataset version of its first export."
        ),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_dataset_entries_call_id_calls"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_entries_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_entries")),
    )
    op.create_index(op.f("ix_dataset_entries_call_id"), "dataset_entries", ["call_id"], unique=False)
    op.create_index(
        op.f("ix_dataset_entries_dataset_id_call_id"),
        "dataset_entries",
        ["dataset_id", "call_id"],
        unique=True,
    )

    op.create_table(
        "dataset_versions",
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, comment="1, 2, ... per dataset."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "action",
            sa.String(length=32),
            nullable=False,
            comment="create, update, dedup, relabel, review, ...",
        ),
        sa.Column(
            "details", JSON_TEXT, nullable=False, comment="What the step did: counts, parameters (JSON)."
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_versions_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_id", "version", name=op.f("pk_dataset_versions")),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, comment="Dataset version exported."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("manifest", JSON_TEXT, nullable=False, comment="manifest.json as written."),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_exports_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    op.create_index(op.f("ix_exports_dataset_id_version"), "exports", ["dataset_id", "version"], unique=False)

    op.create_table(
        "entry_outputs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, comment="Dataset version that made this output."),
        sa.Column(
            "source",
            sa.String(length=16),
            nullable=False,
            comment="relabel (a teacher model) or human (review).",
        ),
        sa.Column("model", sa.String(length=256), nullable=True, comment="Teacher model, for relabels."),
        sa.Column(
            "call_id",
            sa.String(length=32),
            nullable=True,
            comment="The teacher's recorded call, for relabels.",
        ),
        sa.Column("output", JSON_TEXT, nullable=False, comment="The assistant message (JSON)."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["dataset_entries.id"],
            name=op.f("fk_entry_outputs_entry_id_dataset_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entry_outputs")),
    )
    op.create_index(
        op.f("ix_entry_outputs_entry_id_version"), "entry_outputs", ["entry_id", "version"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_entry_outputs_entry_id_version"), table_name="entry_outputs")

    op.drop_table("entry_outputs")
    op.drop_index(op.f("ix_exports_dataset_id_version"), table_name="exports")

    op.drop_table("exports")
    op.drop_table("dataset_versions")
    op.drop_index(op.f("ix_dataset_entries_dataset_id_call_id"), table_name="dataset_entries")
    op.drop_index(op.f("ix_dataset_entries_call_id"), table_name="dataset_entries")

    op.drop_table("dataset_entries")
    op.drop_table("datasets")
