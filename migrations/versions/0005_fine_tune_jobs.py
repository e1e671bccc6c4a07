"""Training jobs: fine_tune_jobs (one row per job, the claim that keeps it unique) and their events.

A row is inserted before anything is uploaded, under the unique index on (pipeline, dataset_id,
dataset_version, attempt): two watchers racing for one dataset version cannot both get it. ``key``
is the idempotency key sent to the provider as job metadata. See docs/training.md.

Revision ID: 0005_fine_tune_jobs
Revises: 0004_dataset_entries_fillfactor
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_fine_tune_jobs"
down_revision: str | Sequence[str] | None = "0004_dataset_entries_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# sdk.schema.RawJSON as DDL: TEXT on SQLite, JSONB on PostgreSQL.
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "fine_tune_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "key",
            sa.String(length=64),
            nullable=False,
            comment="Idempotency key, sent to the provider as job metadata flywheel_job.",
        ),
        sa.Column(
            "pipeline",
            sa.String(length=200),
            nullable=False,
            comment="The flywheel.toml pipeline that made it.",
        ),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column(
            "dataset_version", sa.Integer(), nullable=False, comment="The dataset version exported for it."
        ),
        sa.Column("attempt", sa.Integer(), nullable=False, comment="1; n for the n-th retry of a version."),
        sa.Column(
            "provider", sa.String(length=64), nullable=False, comment="openai, command, or a plug-in's name."
        ),
        sa.Column(
            "provider_job_id", sa.String(length=256), nullable=True, comment="The provider's id (ftjob-...)."
        ),
        sa.Column(
            "status",
            sa.String(length=32),
            nullable=False,
            comment="preparing, refused, or the provider's word: queued, running, succeeded, ...",
        ),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False, comment="supervised or dpo."),
        sa.Column("hyperparameters", JSON_TEXT, nullable=False, comment="As configured (JSON)."),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column(
            "settings", JSON_TEXT, nullable=False, comment="The provider's settings (JSON; never a key)."
        ),
        sa.Column("export_dir", sa.Text(), nullable=True, comment="The exported files it was trained on."),
        sa.Column(
            "files", JSON_TEXT, nullable=True, comment="What prepare made: uploaded file ids or paths."
        ),
        sa.Column("train_examples", sa.Integer(), nullable=True),
        sa.Column("test_examples", sa.Integer(), nullable=True),
        sa.Column(
            "training_tokens", sa.Integer(), nullable=True, comment="Tokens in the training file (one epoch)."
        ),
        sa.Column(
            "estimated_cost_usd", sa.Float(), nullable=True, comment="Before launch: tokens x epochs x price."
        ),
        sa.Column("trained_tokens", sa.Integer(), nullable=True, comment="As the provider billed them."),
        sa.Column(
            "fine_tuned_model",
            sa.String(length=512),
            nullable=True,
            comment="The resulting model id (or path).",
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "details", JSON_TEXT, nullable=True, comment="The provider's own state (pid, checkpoints...)."
        ),
        sa.Column(
            "last_event_id", sa.String(length=256), nullable=True, comment="Newest provider event stored."
        ),
        sa.Column(
            "claimed_by",
            sa.String(length=256),
            nullable=True,
            comment="host:pid:token of the watcher launching it.",
        ),
        sa.Column(
            "lease_expires_at", sa.DateTime(timezone=True), nullable=True, comment="Until then, hands off."
        ),
        sa.Column(
            "create_sent_at", sa.DateTime(timezone=True), nullable=True, comment="When the create was sent."
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_fine_tune_jobs_dataset_id_datasets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tune_jobs")),
        sa.UniqueConstraint("key", name=op.f("uq_fine_tune_jobs_key")),
    )
    op.create_index(
        op.f("ix_fine_tune_jobs_pipeline_dataset_id_dataset_version_attempt"),
        "fine_tune_jobs",
        ["pipeline", "dataset_id", "dataset_version", "attempt"],
        unique=True,
    )
    op.create_index(
        op.f("ix_fine_tune_jobs_provider_provider_job_id"),
        "fine_tune_jobs",
        ["provider", "provider_job_id"],
        unique=False,
    )
    op.create_index(op.f("ix_fine_tune_jobs_status"), "fine_tune_jobs", ["status"], unique=False)

    op.create_table(
        "fine_tune_job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, comment="When it happened (UTC)."
        ),
        sa.Column(
            "kind",
            sa.String(length=16),
            nullable=False,
            comment="status, message, metrics, checkpoint, or decision.",
        ),
        sa.Column("level", sa.String(length=16), nullable=False, comment="info, warning or error."),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "data", JSON_TEXT, nullable=True, comment="Metrics (step, train_loss, ...), status change."
        ),
        sa.Column(
            "provider_event_id",
            sa.String(length=256),
            nullable=True,
            comment="The provider's id; unique per job.",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["fine_tune_jobs.id"],
            name=op.f("fk_fine_tune_job_events_job_id_fine_tune_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tune_job_events")),
    )
    op.create_index(
        op.f("ix_fine_tune_job_events_job_id_created_at"),
        "fine_tune_job_events",
        ["job_id", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_fine_tune_job_events_job_id_provider_event_id"),
        "fine_tune_job_events",
        ["job_id", "provider_event_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_fine_tune_job_events_job_id_provider_event_id"), table_name="fine_tune_job_events")
    op.drop_index(op.f("ix_fine_tune_job_events_job_id_created_at"), table_name="fine_tune_job_events")

    op.drop_table("fine_tune_job_events")
    op.drop_index(op.f("ix_fine_tune_jobs_status"), table_name="fine_tune_jobs")
    op.drop_index(op.f("ix_fine_tune_jobs_provider_provider_job_id"), table_name="fine_tune_jobs")
    op.drop_index(
        op.f("ix_fine_tune_jobs_pipeline_dataset_id_dataset_version_attempt"), table_name="fine_tune_jobs"
    )

    op.drop_table("fine_tune_jobs")
