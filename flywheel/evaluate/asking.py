"""Asking the candidates: every example a candidate has no answer for, at most ``width`` at a time.

Answers are buffered and committed in small batches (``BATCH_SIZE``, or at least every
``COMMIT_INTERVAL_S``) with an insert that skips rows already there, so a run killed at any moment
repeats at most the requests in flight and the last uncommitted batch, and two processes
continuing one run never store an answer twice (the unique index on ``(run_id, candidate,
call_id)``). Which failures stop the run, which are stored and which are retried later is in
``flywheel.evaluate.run``'s docstring; this module carries it out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import openai
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import sdk
from sdk.schema import call_tags, calls, eval_outputs

from ..datasets import EVAL_TAG, insert_skipping_existing, step_time, write_transaction
from ..errors import FlywheelError
from ..finetune_format import UnconvertibleCallError, output_message
from .candidates import Candidate, candidate_request
from .examples import Example
from .fewshot import ShotPicker

__all__ = [
    "TAG_CANDIDATE",
    "TAG_EXAMPLE",
    "Asker",
    "EvalError",
    "EvalProgress",
    "EvalResult",
    "link_calls",
    "stored_outputs",
]

TAG_CANDIDATE = "flywheel_candidate"
TAG_EXAMPLE = "flywheel_example"
OUTPUT_KEY = ("run_id", "candidate", "call_id")
"""The unique index of ``eval_outputs``: one answer per run, candidate and example."""
BATCH_SIZE = 16
COMMIT_INTERVAL_S = 1.0
FLUSH_TIMEOUT_S = 10.0
MAX_FAILURES_LISTED = 20
_STOPS_THE_RUN = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
_RETRIED_LATER = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)


class EvalError(FlywheelError):
    """The API refused a candidate as a whole (bad key, no such model); the run stopped, resumable."""


@dataclass(frozen=True, slots=True)
class EvalProgress:
    """Passed to ``progress`` after each commit."""

    done: int
    failed: int
    total: int


@dataclass(slots=True)
class EvalResult:
    """What a run did: its id, what it asked, what was already there."""

    run_id: str
    pipeline: str
    dataset_version: int
    examples: int
    candidates: list[str]
    resumed: bool = False
    asked: int = 0
    answered: int = 0
    rejected: int = 0
    """Examples whose request the API rejected (stored as errors, scored as wrong)."""
    skipped: int = 0
    """Already answered before this run started (a resumed run)."""
    failed: int = 0
    """Left for the next run (timeouts, 5xx): not stored."""
    failures: list[str] = field(default_factory=list)
    judged: dict[str, Any] | None = None
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "dataset_version": self.dataset_version,
            "examples": self.examples,
            "candidates": self.candidates,
            "resumed": self.resumed,
            "asked": self.asked,
            "answered": self.answered,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "judged": self.judged,
            "finished": self.finished,
        }


class Asker:
    """Asks each candidate every example it has no row for, committing answers in batches."""

    def __init__(
        self,
        conn: Connection,
        run_id: str,
        candidates: Sequence[Candidate],
        result: EvalResult,
        picker: ShotPicker,
        progress: Callable[[EvalProgress], None] | None,
        now: datetime | None,
    ) -> None:
        self.conn, self.run_id, self.candidates = conn, run_id, list(candidates)
        self.result, self.picker = result, picker
        self.progress, self.now = progress, now
        self.buffer: list[dict[str, Any]] = []
        self.last_commit = time.monotonic()
        self.total = 0

    async def drive(self, client: openai.AsyncOpenAI, examples: list[Example], width: int) -> None:
        o = eval_outputs.c
        done = {
            (candidate, call_id)
            for candidate, call_id in self.conn.execute(
                sa.select(o.candidate, o.call_id).where(o.run_id == self.run_id)
            )
        }
        self.conn.commit()
        todo = [
            (candidate, example)
            for candidate in self.candidates
            for example in examples
            if (candidate.name, example.call_id) not in done
        ]
        self.result.skipped = len(self.candidates) * len(examples) - len(todo)
        self.total = len(todo)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            for candidate, example in todo:
                while len(in_flight) >= width:
                    in_flight = await self._collect(in_flight)
                in_flight.add(asyncio.create_task(self._ask(client, candidate, example)))
            while in_flight:
                in_flight = await self._collect(in_flight)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._commit()

    async def _collect(self, in_flight: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        done, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        errors = [task.exception() for task in done]  # each retrieved, so none is logged as lost
        error = next((error for error in errors if error is not None), None)
        if error is not None:
            in_flight.clear()
            in_flight.update(pending)
            raise error
        if len(self.buffer) >= BATCH_SIZE or time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self._commit()
        return pending

    async def _ask(self, client: openai.AsyncOpenAI, candidate: Candidate, example: Example) -> None:
        self.result.asked += 1
        try:
            body = candidate_request(
                example, candidate, self.picker.shots(example) if candidate.few_shot else ()
            )
        except UnconvertibleCallError as exc:
            self._store(candidate, example, None, str(exc))
            return
        messages = body.pop("messages")
        del body["model"]
        tags = {EVAL_TAG: self.run_id, TAG_CANDIDATE: candidate.name, TAG_EXAMPLE: example.call_id}
        try:
            completion = await client.chat.completions.create(
                model=candidate.model,
                messages=cast(Any, messages),
                extra_body=body or None,
                extra_headers=sdk.tag_headers(tags),
            )
        except _STOPS_THE_RUN as exc:
            raise EvalError(
                f"{candidate.model}: {exc.message}",
                "--models" if exc.status_code == 404 else "--api-key / OPENAI_API_KEY",
            ) from None
        except _RETRIED_LATER as exc:
            self._failed(f"{candidate.name} / {example.call_id}: {type(exc).__name__}: {exc}")
            return
        except openai.APIStatusError as exc:
            self._store(candidate, example, None, f"HTTP {exc.status_code}: {exc.message}")
            return
        except openai.APIError as exc:  # e.g. a body that is not a completion
            self._failed(f"{candidate.name} / {example.call_id}: {exc}")
            return
        try:
            output: dict[str, Any] | None = output_message(completion.to_dict())
            error = None
        except UnconvertibleCallError as exc:
            output, error = None, str(exc)
        self._store(candidate, example, output, error)

    def _store(
        self, candidate: Candidate, example: Example, output: dict[str, Any] | None, error: str | None
    ) -> None:
        self.buffer.append(
            {
                "run_id": self.run_id,
                "candidate": candidate.name,
                "call_id": example.call_id,
                "output": None if output is None else orjson.dumps(output).decode(),
                "error": error,
                "created_at": step_time(self.now),
            }
        )
        if output is None:
            self.result.rejected += 1
        else:
            self.result.answered += 1

    def _failed(self, reason: str) -> None:
        self.result.failed += 1
        if len(self.result.failures) < MAX_FAILURES_LISTED:
            self.result.failures.append(reason)

    def _commit(self) -> None:
        rows, self.buffer = self.buffer, []
        self.last_commit = time.monotonic()
        if rows:
            with write_transaction(self.conn):
                self.conn.execute(insert_skipping_existing(self.conn, eval_outputs, OUTPUT_KEY).values(rows))
        if self.progress is not None:
            done = self.result.answered + self.result.rejected
            self.progress(EvalProgress(done, self.result.failed, self.total))


def stored_outputs(conn: Connection, run_id: str) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(candidate, example call id) -> the stored answer of run ``run_id`` (``None``: rejected)."""
    o = eval_outputs.c
    rows = conn.execute(sa.select(o.candidate, o.call_id, o.output).where(o.run_id == run_id)).all()
    conn.commit()
    return {
        (row.candidate, row.call_id): None if row.output is None else orjson.loads(row.output) for row in rows
    }


def link_calls(conn: Connection, run_id: str) -> None:
    """Fill ``eval_call_id`` where it is empty: each output's recorded call, its last attempt (a
    rejected example's is the rejected call), found by its tags after a flush."""
    if not sdk.flush(timeout=FLUSH_TIMEOUT_S):
        return
    run_tag, candidate_tag, example_tag = (call_tags.alias(name) for name in ("r", "c", "e"))
    found = conn.execute(
        sa.select(candidate_tag.c.value, example_tag.c.value, calls.c.id)
        .select_from(
            run_tag.join(candidate_tag, candidate_tag.c.call_id == run_tag.c.call_id)
            .join(example_tag, example_tag.c.call_id == run_tag.c.call_id)
            .join(calls, calls.c.id == run_tag.c.call_id)
        )
        .where(
            run_tag.c.key == EVAL_TAG, run_tag.c.value == run_id,
            candidate_tag.c.key == TAG_CANDIDATE, example_tag.c.key == TAG_EXAMPLE,
        )
        .order_by(calls.c.id.desc())  # the last attempt first: it is the one kept
    ).all()  # fmt: skip
    conn.commit()
    o = eval_outputs.c
    with write_transaction(conn):
        for candidate, call_id, eval_call in found:
            conn.execute(
                sa.update(eval_outputs)
                .where(
                    o.run_id == run_id,
                    o.candidate == candidate,
                    o.call_id == call_id,
                    o.eval_call_id.is_(None),
                )
                .values(eval_call_id=eval_call)
            )
