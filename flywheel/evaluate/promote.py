"""``flywheel promote NAME MODEL`` / ``--rollback``: a pipeline's current model, with history.

A pipeline's current model is what ``model="flywheel:NAME"`` resolves to in the SDK
(``sdk._routing``). It is its configured base model (``[pipelines.NAME.train] base_model``) until
a promotion; ``promotions`` keeps every change, newest last, and the newest row names the current
model, which is all the SDK reads.

History works like a stack: a promotion pushes a model, a rollback pops back to the one before it
(so two rollbacks after two promotions return to the base model). Each change is one row inserted
in one transaction that also read the history it is based on, under a lock (PostgreSQL: an
advisory lock per pipeline; SQLite: the write lock), so two promotions at once cannot both claim
the same previous model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import promotions

from ..datasets import step_time, write_transaction
from ..errors import UsageError
from ..query import connect
from ..train.config import Pipeline

__all__ = ["Promotion", "current_model", "model_stack", "promote", "promotion_history", "rollback"]


@dataclass(frozen=True, slots=True)
class Promotion:
    """One change of a pipeline's current model (a row of ``promotions``)."""

    id: int
    pipeline: str
    model: str
    previous_model: str | None
    action: str
    reason: str | None
    eval_run_id: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "model": self.model,
            "previous_model": self.previous_model,
            "action": self.action,
            "reason": self.reason,
            "eval_run_id": self.eval_run_id,
            "created_at": self.created_at.isoformat(),
        }


def promote(
    database_url: str,
    pipeline: Pipeline,
    model: str,
    *,
    reason: str | None = None,
    eval_run_id: str | None = None,
    now: datetime | None = None,
) -> Promotion:
    """Make ``model`` the current model of ``pipeline``; ``UsageError`` when it already is."""
    model = model.strip()
    if not model or model.startswith("flywheel:"):
        raise UsageError(f"not a model name: {model!r}", "MODEL")
    with connect(database_url) as conn, write_transaction(conn):
        _lock(conn, pipeline.name)
        stack = model_stack(conn, pipeline)
        current = stack[-1] if stack else None
        if current == model:
            raise UsageError(f"{model} is already the current model of pipeline {pipeline.name!r}", "MODEL")
        return _insert(conn, pipeline.name, model, current, "promote", reason, eval_run_id, now)


def rollback(
    database_url: str, pipeline: Pipeline, *, reason: str | None = None, now: datetime | None = None
) -> Promotion:
    """Return ``pipeline`` to the model it had before its current one."""
    with connect(database_url) as conn, write_transaction(conn):
        _lock(conn, pipeline.name)
        stack = model_stack(conn, pipeline)
        if len(stack) < 2:
            current = stack[-1] if stack else "none"
            raise UsageError(
                f"pipeline {pipeline.name!r} has nothing to roll back to (current model: {current})",
                "--rollback",
            )
        return _insert(conn, pipeline.name, stack[-2], stack[-1], "rollback", reason, None, now)


def current_model(conn: Connection, pipeline: Pipeline) -> str | None:
    """The model ``flywheel:NAME`` resolves to now (``None``: no promotion and no base model)."""
    stack = model_stack(conn, pipeline)
    return stack[-1] if stack else None


def model_stack(conn: Connection, pipeline: Pipeline) -> list[str]:
    """The models a rollback would return to, oldest first; the last is the current one."""
    stack = [pipeline.train.base_model] if pipeline.train is not None else []
    p = promotions.c
    for action, model in conn.execute(
        sa.select(p.action, p.model).where(p.pipeline == pipeline.name).order_by(p.id)
    ):
        if action == "rollback":
            while stack and stack[-1] != model:
                stack.pop()
            if not stack:
                stack.append(model)
        else:
            stack.append(model)
    return stack


def promotion_history(database_url: str, pipeline: str) -> list[Promotion]:
    """Every change of ``pipeline``'s model, oldest first."""
    p = promotions.c
    with connect(database_url) as conn:
        rows = conn.execute(sa.select(promotions).where(p.pipeline == pipeline).order_by(p.id)).all()
    return [_promotion(row) for row in rows]


def _insert(
    conn: Connection,
    pipeline: str,
    model: str,
    previous: str | None,
    action: str,
    reason: str | None,
    eval_run_id: str | None,
    now: datetime | None,
) -> Promotion:
    values = {
        "pipeline": pipeline,
        "model": model,
        "previous_model": previous,
        "action": action,
        "reason": reason,
        "eval_run_id": eval_run_id,
        "created_at": step_time(now),
    }
    new_id = conn.execute(sa.insert(promotions).values(**values).returning(promotions.c.id)).scalar_one()
    return Promotion(id=new_id, **values)  # type: ignore[arg-type]


def _promotion(row: sa.Row[Any]) -> Promotion:
    return Promotion(
        row.id,
        row.pipeline,
        row.model,
        row.previous_model,
        row.action,
        row.reason,
        row.eval_run_id,
        row.created_at,
    )


def _lock(conn: Connection, pipeline: str) -> None:
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"flywheel:promote:{pipeline}".encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
