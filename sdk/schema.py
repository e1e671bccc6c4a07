"""The store's tables: the one definition that the SDK writes, the flywheel reads and Alembic migrates.

Design:
- ``calls`` has one row per HTTP exchange (each retry attempt is its own row). Bodies are kept as the
  JSON text that crossed the wire (``RawJSON``): TEXT on SQLite, JSONB on PostgreSQL. Storing the
  text as it came keeps the SDK's writer cheap, and both databases can still query into it
  (``json_extract`` / ``->>``).
- Ids are generated client-side (time-ordered, 32 hex chars) so a batch of calls and their tags
  can be inserted in one transaction without a round trip for ``RETURNING``.
- ``call_tags`` is a key/value table, indexed on (key, value) for filtering.
- Views (``SQL_VIEWS``) turn the common questions into one-liners; they are dialect-specific SQL
  created by the migrations.
- The flywheel's tables (``datasets`` and the rest) are written by the ``flywheel`` library only,
  never by the SDK. A dataset refers to its calls instead of copying them. Nothing is deleted and
  no output is overwritten: what a step changes (entries added or taken out, relabeled or edited
  outputs) is tagged with the dataset version that made it, so any past version can be rebuilt.

Changing anything here needs a new Alembic revision in ``migrations/versions``; a test checks that
``upgrade head`` on an empty database matches this metadata.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "SQL_VIEWS",
    "RawJSON",
    "call_tags",
    "calls",
    "dataset_entries",
    "dataset_versions",
    "datasets",
    "entry_outputs",
    "eval_judgments",
    "eval_outputs",
    "eval_runs",
    "exports",
    "fine_tune_job_events",
    "fine_tune_jobs",
    "metadata",
    "promotions",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RawJSON(TypeDecorator[str]):
    """JSON kept as the text that was sent or received: TEXT on SQLite, JSONB on PostgreSQL.

    Values bound to it are ``str`` (already-serialized JSON); nothing is parsed in Python.
    On PostgreSQL the text is cast to ``jsonb`` by the server, and read back as text.
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(Text())

    def bind_processor(self, dialect: Dialect) -> Any:
        return None

    def column_expression(self, colexpr: ColumnElement[Any]) -> ColumnElement[Any]:
        # Selected as text on PostgreSQL (``col::text``), so the driver never parses the JSON:
        # reading a body stays cheap, and a JSON string or ``null`` comes back as its JSON text.
        return _JSONAsText(colexpr)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name == "postgresql":
            # Only reached when the column was not selected through column_expression (e.g. a
            # textual query typed RawJSON): psycopg has decoded the jsonb, so encode it again.
            import orjson

            def process(value: Any) -> str | None:
                if value is None or isinstance(value, str):
                    return value
                return orjson.dumps(value).decode()

            return process
        return None


class _JSONAsText(FunctionElement[Any]):
    """``expr`` as it is, except ``CAST(expr AS TEXT)`` on PostgreSQL (see ``RawJSON.column_expression``)."""

    inherit_cache = True
    name = "json_as_text"

    def __init__(self, expr: ColumnElement[Any]) -> None:
        super().__init__(expr)
        self.type = expr.type


@compiles(_JSONAsText)
def _compile_json_as_text(element: _JSONAsText, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_JSONAsText, "postgresql")
def _compile_json_as_text_pg(element: _JSONAsText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


calls = Table(
    "calls",
    metadata,
    Column("id", String(32), primary_key=True, comment="Time-ordered id, 32 hex characters."),
    Column("created_at", DateTime(timezone=True), nullable=False, comment="When the request was sent (UTC)."),
    Column("method", String(10), nullable=False, comment="HTTP method."),
    Column("base_url", String(512), nullable=True, comment="Scheme and host of the upstream API."),
    Column(
        "endpoint", String(256), nullable=False, comment="Path below the API root, e.g. /chat/completions."
    ),
    Column("model", String(256), nullable=True, comment="Model asked for in the request (or answered)."),
    Column(
        "request", RawJSON(), nullable=True, comment="JSON body as sent; metadata only for binary bodies."
    ),
    Column("response", RawJSON(), nullable=True, comment="JSON body, or the assembled stream."),
    Column("status_code", Integer, nullable=True, comment="HTTP status; NULL when no response arrived."),
    Column("error", Text, nullable=True, comment="Error message (API error or client-side failure)."),
    Column("stream", Boolean, nullable=False, default=False, comment="The response was streamed."),
    Column(
        "complete", Boolean, nullable=False, default=True, comment="False if the body was not fully read."
    ),
    Column(
        "attempt", Integer, nullable=False, default=0, comment="0 for the first try, n for the n-th retry."
    ),
    Column("idempotency_key", String(128), nullable=True, comment="Shared by all attempts of one call."),
    Column("latency_ms", Float, nullable=True, comment="Request sent to last byte received."),
    Column("ttft_ms", Float, nullable=True, comment="Request sent to first streamed token."),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("cached_tokens", Integer, nullable=True, comment="Prompt tokens served from the prompt cache."),
    Column("reasoning_tokens", Integer, nullable=True, comment="Completion tokens spent on reasoning."),
    Column("cost_usd", Float, nullable=True, comment="NULL when the model is not in the price table."),
    Column("request_id", String(256), nullable=True, comment="Upstream request id (x-request-id)."),
    Column("input_hash", String(64), nullable=True, comment="sha256 of the canonical request input."),
    Index(None, "created_at"),
    Index(None, "model", "created_at"),
    Index(None, "endpoint", "created_at"),
    Index(None, "status_code"),
    Index(None, "input_hash"),
)

call_tags = Table(
    "call_tags",
    metadata,
    Column("call_id", String(32), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", Text, nullable=False),
    Index(None, "key", "value"),
    # SQLite: rows live in the primary-key b-tree (no separate rowid table); see migration 0002.
    sqlite_with_rowid=False,
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True, comment="What commands call it by."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("filter", RawJSON(), nullable=False, comment="The CallFilter that selects its calls (JSON)."),
    Column(
        "settings",
        RawJSON(),
        nullable=False,
        comment="Dedup, split and pruning rules (JSON), as changed by the dataset's steps.",
    ),
    Column("version", Integer, nullable=False, default=0, comment="Its newest version."),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True, comment="1, 2, ... per dataset."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("action", String(32), nullable=False, comment="create, update, dedup, relabel, review, ..."),
    Column("details", RawJSON(), nullable=False, comment="What the step did: counts, parameters (JSON)."),
)

dataset_entries = Table(
    "dataset_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    Column(
        "call_id",
        String(32),
        ForeignKey("calls.id", ondelete="RESTRICT"),
        nullable=False,
        comment="The call whose input (and original output) this entry is.",
    ),
    Column("added_in", Integer, nullable=False, comment="Dataset version that added it."),
    Column("removed_in", Integer, nullable=True, comment="Dataset version that took it out (dedup)."),
    Column("removed_reason", String(32), nullable=True, comment="duplicate, near_duplicate, ..."),
    Column("cluster_key", String(64), nullable=True, comment="Dedup cluster; decides the split side."),
    Column("first_exported_in", Integer, nullable=True, comment="Dataset version of its first export."),
    Index(None, "dataset_id", "call_id", unique=True),
    Index(None, "call_id"),
    # Room on each page for updated rows (HOT updates: dedup and export mark entries); see 0004.
    postgresql_with={"fillfactor": 50},
)

entry_outputs = Table(
    "entry_outputs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entry_id", Integer, ForeignKey("dataset_entries.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False, comment="Dataset version that made this output."),
    Column("source", String(16), nullable=False, comment="relabel (a teacher model) or human (review)."),
    Column("model", String(256), nullable=True, comment="Teacher model, for relabels."),
    Column("call_id", String(32), nullable=True, comment="The teacher's recorded call, for relabels."),
    Column("output", RawJSON(), nullable=False, comment="The assistant message (JSON)."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=True),
    Index(None, "entry_id", "version"),
)

exports = Table(
    "exports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False, comment="Dataset version exported."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("out_dir", Text, nullable=False),
    Column("manifest", RawJSON(), nullable=False, comment="manifest.json as written."),
    Index(None, "dataset_id", "version"),
)

fine_tune_jobs = Table(
    "fine_tune_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "key",
        String(64),
        nullable=False,
        unique=True,
        comment="Idempotency key, sent to the provider as job metadata flywheel_job.",
    ),
    Column("pipeline", String(200), nullable=False, comment="The flywheel.toml pipeline that made it."),
    Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False),
    Column("dataset_version", Integer, nullable=False, comment="The dataset version exported for it."),
    Column("attempt", Integer, nullable=False, default=1, comment="1; n for the n-th retry of a version."),
    Column("provider", String(64), nullable=False, comment="openai, command, or a plug-in's name."),
    Column("provider_job_id", String(256), nullable=True, comment="The provider's id (ftjob-...)."),
    Column(
        "status",
        String(32),
        nullable=False,
        comment="preparing, refused, or the provider's word: queued, running, succeeded, ...",
    ),
    Column("base_model", String(256), nullable=False),
    Column("method", String(16), nullable=False, comment="supervised or dpo."),
    Column("hyperparameters", RawJSON(), nullable=False, comment="As configured (JSON)."),
    Column("suffix", String(64), nullable=True),
    Column("seed", Integer, nullable=True),
    Column("settings", RawJSON(), nullable=False, comment="The provider's settings (JSON; never a key)."),
    Column("export_dir", Text, nullable=True, comment="The exported files it was trained on."),
    Column("files", RawJSON(), nullable=True, comment="What prepare made: uploaded file ids or paths."),
    Column("train_examples", Integer, nullable=True),
    Column("test_examples", Integer, nullable=True),
    Column("training_tokens", Integer, nullable=True, comment="Tokens in the training file (one epoch)."),
    Column("estimated_cost_usd", Float, nullable=True, comment="Before launch: tokens x epochs x price."),
    Column("trained_tokens", Integer, nullable=True, comment="As the provider billed them."),
    Column("fine_tuned_model", String(512), nullable=True, comment="The resulting model id (or path)."),
    Column("error", Text, nullable=True),
    Column("details", RawJSON(), nullable=True, comment="The provider's own state (pid, checkpoints...)."),
    Column("last_event_id", String(256), nullable=True, comment="Newest provider event stored."),
    Column("claimed_by", String(256), nullable=True, comment="host:pid:token of the watcher launching it."),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True, comment="Until then, hands off."),
    Column("create_sent_at", DateTime(timezone=True), nullable=True, comment="When the create was sent."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # The claim: one job per pipeline, dataset version and attempt, whoever races for it.
    Index(None, "pipeline", "dataset_id", "dataset_version", "attempt", unique=True),
    Index(None, "status"),
    Index(None, "provider", "provider_job_id"),
)

fine_tune_job_events = Table(
    "fine_tune_job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("fine_tune_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, comment="When it happened (UTC)."),
    Column("kind", String(16), nullable=False, comment="status, message, metrics, checkpoint, or decision."),
    Column("level", String(16), nullable=False, comment="info, warning or error."),
    Column("message", Text, nullable=False),
    Column("data", RawJSON(), nullable=True, comment="Metrics (step, train_loss, ...), status change."),
    Column("provider_event_id", String(256), nullable=True, comment="The provider's id; unique per job."),
    Index(None, "job_id", "created_at"),
    Index(None, "job_id", "provider_event_id", unique=True),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(32), primary_key=True, comment="Run id; its calls carry the tag flywheel_eval=<id>."),
    Column("pipeline", String(200), nullable=False, comment="The flywheel.toml pipeline evaluated."),
    Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False),
    Column("dataset_version", Integer, nullable=False, comment="The exported version whose test split ran."),
    Column("export_id", Integer, ForeignKey("exports.id", ondelete="RESTRICT"), nullable=False),
    Column("status", String(16), nullable=False, comment="running, finished or failed."),
    Column("candidates", RawJSON(), nullable=False, comment="Each candidate: name, model, few_shot (JSON)."),
    Column("judge", String(256), nullable=True, comment="The judge model, when judged."),
    Column("seed", Integer, nullable=False, comment="Seeds the judge's order and few-shot picks."),
    Column("settings", RawJSON(), nullable=False, comment="Scorers, concurrency, judge options (JSON)."),
    Column("examples", Integer, nullable=False, comment="Size of the test split."),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index(None, "pipeline", "created_at"),
)

eval_outputs = Table(
    "eval_outputs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
    Column("candidate", String(300), nullable=False, comment="Model, or model+Kshot for a few-shot run."),
    Column("call_id", String(32), nullable=False, comment="The test example (the app's recorded call)."),
    Column("eval_call_id", String(32), nullable=True, comment="The candidate's recorded call."),
    Column("output", RawJSON(), nullable=True, comment="The candidate's assistant message (JSON)."),
    Column("error", Text, nullable=True, comment="Why there is no output."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Resume: one output per run, candidate and example, however often the run restarts.
    Index(None, "run_id", "candidate", "call_id", unique=True),
)

eval_judgments = Table(
    "eval_judgments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
    Column("candidate", String(300), nullable=False),
    Column("opponent", String(300), nullable=False, comment="reference, or another candidate."),
    Column("call_id", String(32), nullable=False, comment="The test example."),
    Column("shown_first", String(16), nullable=False, comment="candidate or opponent: the order shown."),
    Column("verdict", String(8), nullable=False, comment="win, tie or loss, for the candidate."),
    Column("identical", Boolean, nullable=False, comment="Same output: a tie, no judge call made."),
    Column("reasoning", Text, nullable=True, comment="The judge's words."),
    Column("judge_call_id", String(32), nullable=True, comment="The judge's recorded call."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "run_id", "candidate", "opponent", "call_id", "shown_first", unique=True),
)

promotions = Table(
    "promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(200), nullable=False),
    Column("model", String(512), nullable=False, comment="The pipeline's current model from now on."),
    Column("previous_model", String(512), nullable=True, comment="The one it replaced."),
    Column("action", String(16), nullable=False, comment="promote or rollback."),
    Column("reason", Text, nullable=True, comment="Who or what decided, and on which numbers."),
    Column("eval_run_id", String(32), nullable=True, comment="The eval run behind an automatic promotion."),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The current model of a pipeline is its newest row: found by this index.
    Index(None, "pipeline", "id"),
)

# Views, per dialect. Kept as SQL text: they are created by the migrations and documented in
# docs/schema.md. ``calls_tagged``: every call with its tags as one JSON object. ``chat_calls``:
# chat completions with the last message sent and the assistant's reply as plain text.
SQL_VIEWS: dict[str, dict[str, str]] = {
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
