"""Evaluation: eval_runs, their outputs and judgments, and promotions (a pipeline's current model).

``eval_outputs`` holds one row per run, candidate and test example (a unique index): a restarted
run skips what is there, so no finished item is asked twice. ``promotions`` is the history of a
pipeline's current model; the newest row is the current one. See docs/evaluation.md.

Revision ID: 0006_evaluation
Revises: 0005_fine_tune_jobs
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_evaluation"
down_revision: str | Sequence[str] | None = "0005_fine_tune_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# sdk.schema.RawJSON as DDL: TEXT on SQLite, JSONB on PostgreSQL.
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column(
            "model",
            sa.String(length=512),
            nullable=False,
            comment="The pipeline's current model from now on.",
        ),
        sa.Column("previous_model", sa.String(length=512), nullable=True, comment="The one it replaced."),
        sa.Column("action", sa.String(length=16), nullable=False, comment="promote or rollback."),
        sa.Column("reason", sa.Text(), nullable=True, comment="Who or what decided, and on which numbers."),
        sa.Column(
            "eval_run_id",
            sa.String(length=32),
            nullable=True,
            comment="The eval run behind an automatic promotion.",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotions_pipeline_id"), ["pipeline", "id"], unique=False)

    op.create_table(
        "eval_runs",
        sa.Column(
            "id",
            sa.String(length=32),
            nullable=False,
            comment="Run id; its calls carry the tag flywheel_eval=<id>.",
        ),
        sa.Column(
            "pipeline", sa.String(length=200), nullable=False, comment="The flywheel.toml pipeline evaluated."
        ),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column(
            "dataset_version",
            sa.Integer(),
            nullable=False,
            comment="The exported version whose test split ran.",
        ),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False, comment="running, finished or failed."),
        sa.Column(
            "candidates", JSON_TEXT, nullable=False, comment="Each candidate: name, model, few_shot (JSON)."
        ),
        sa.Column("judge", sa.String(length=256), nullable=True, comment="The judge model, when judged."),
        sa.Column(
            "seed", sa.Integer(), nullable=False, comment="Seeds the judge's order and few-shot picks."
        ),
        sa.Column(
            "settings", JSON_TEXT, nullable=False, comment="Scorers, concurrency, judge options (JSON)."
        ),
        sa.Column("examples", sa.Integer(), nullable=False, comment="Size of the test split."),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_eval_runs_dataset_id_datasets"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["export_id"], ["exports.id"], name=op.f("fk_eval_runs_export_id_exports"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_eval_runs_pipeline_created_at"), ["pipeline", "created_at"], unique=False
        )

    op.create_table(
        "eval_judgments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("candidate", sa.String(length=300), nullable=False),
        sa.Column(
            "opponent", sa.String(length=300), nullable=False, comment="reference, or another candidate."
        ),
        sa.Column("call_id", sa.String(length=32), nullable=False, comment="The test example."),
        sa.Column(
            "shown_first",
            sa.String(length=16),
            nullable=False,
            comment="candidate or opponent: the order shown.",
        ),
        sa.Column(
            "verdict", sa.String(length=8), nullable=False, comment="win, tie or loss, for the candidate."
        ),
        sa.Column(
            "identical", sa.Boolean(), nullable=False, comment="Same output: a tie, no judge call made."
        ),
        sa.Column("reasoning", sa.Text(), nullable=True, comment="The judge's words."),
        sa.Column("judge_call_id", sa.String(length=32), nullable=True, comment="The judge's recorded call."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_judgments_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_judgments")),
    )
    with op.batch_alter_table("eval_judgments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_eval_judgments_run_id_candidate_opponent_call_id_shown_first"),
            ["run_id", "candidate", "opponent", "call_id", "shown_first"],
            unique=True,
        )

    op.create_table(
        "eval_outputs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column(
            "candidate",
            sa.String(length=300),
            nullable=False,
            comment="Model, or model+Kshot for a few-shot run.",
        ),
        sa.Column(
            "call_id",
            sa.String(length=32),
            nullable=False,
            comment="The test example (the app's recorded call).",
        ),
        sa.Column(
            "eval_call_id", sa.String(length=32), nullable=True, comment="The candidate's recorded call."
        ),
        sa.Column("output", JSON_TEXT, nullable=True, comment="The candidate's assistant message (JSON)."),
        sa.Column("error", sa.Text(), nullable=True, comment="Why there is no output."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_outputs_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_outputs")),
    )
    with op.batch_alter_table("eval_outputs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_eval_outputs_run_id_candidate_call_id"),
            ["run_id", "candidate", "call_id"],
            unique=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("eval_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_outputs_run_id_candidate_call_id"))

    op.drop_table("eval_outputs")
    with op.batch_alter_table("eval_judgments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_judgments_run_id_candidate_opponent_call_id_shown_first"))

    op.drop_table("eval_judgments")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_runs_pipeline_created_at"))

    op.drop_table("eval_runs")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotions_pipeline_id"))

    op.drop_table("promotions")
