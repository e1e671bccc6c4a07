"""``flywheel eval --judge MODEL``: ask the judge model, and store each verdict as an ``eval_judgments`` row.

The protocol (prompt, order, bias sample, verdicts) is ``judge.py``'s; this module makes the calls
and writes the rows. Each item of a (candidate, opponent) pair gets one row in its seeded order
(``shown_first``), and items of the bias sample a second row in the other order. Items decided
without a judge (same answers, a missing answer) get their row with no call.

Every judge call goes through the client the caller passes (the run's ``sdk.AsyncOpenAI``, so it is
recorded), tagged ``flywheel_eval=<run id>`` (never training data), ``flywheel_judge=<candidate>``
and ``flywheel_judge_item=<call id>:<order>:<opponent>``; the last finds the recorded call after
``sdk.flush()`` for ``judge_call_id`` (NULL when it was not recorded in this store). The request
asks for a JSON object at temperature 0.

Invariants:
- Resume: rows already stored are not asked again, so a restarted run pays only for what is
  missing; the insert skips rows that appeared meanwhile (unique index on run, candidate,
  opponent, call and order), so even two processes cannot store a row twice.
- Nothing stored is lost: rows are committed in small batches as verdicts arrive; when the judge
  refuses the run as a whole (401/403/404: ``JudgeError``) or the run is interrupted, the verdicts
  that arrived are committed before the error propagates.
- A transient error (after ``openai``'s own retries) or an unparseable verdict leaves that row
  unjudged (counted in ``JudgeTally.failed``) and the others go on; the next run asks for it again.
- At most ``concurrency`` judge calls are in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

import openai
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import sdk
from sdk.schema import call_tags, calls, eval_judgments

from ...datasets import EVAL_TAG, Progress, insert_skipping_existing, step_time, write_transaction
from ...errors import FlywheelError, UsageError
from ..asking import stored_outputs
from ..candidates import REFERENCE, Candidate
from ..examples import Example
from .protocol import (
    BIAS_SAMPLE_FRACTION,
    Judgment,
    Order,
    Verdict,
    VerdictError,
    bias_sample,
    candidate_verdict,
    default_bias_size,
    judge_messages,
    parse_verdict,
    shown_first,
    verdict_without_judge,
)

__all__ = [
    "TAG_JUDGE",
    "TAG_JUDGE_ITEM",
    "JudgeError",
    "JudgeFailure",
    "JudgePair",
    "JudgeTally",
    "judge_pairs",
    "judge_run_async",
    "judgments_of",
]

TAG_JUDGE = "flywheel_judge"
TAG_JUDGE_ITEM = "flywheel_judge_item"
JUDGMENT_KEY = ("run_id", "candidate", "opponent", "call_id", "shown_first")
"""The unique index of ``eval_judgments``: one verdict per item and order shown."""
BATCH_SIZE = 16
COMMIT_INTERVAL_S = 1.0
FLUSH_TIMEOUT_S = 10.0
MAX_FAILURES_LISTED = 20
_REFUSED = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


class JudgeError(FlywheelError):
    """The judge refused the run as a whole (bad key, no such model); the verdicts so far are kept."""


@dataclass(frozen=True, slots=True)
class JudgePair:
    """One item to judge: the conversation, and the candidate's and the opponent's answers.

    ``opponent`` is another candidate's name or ``"reference"``; an output is ``None`` when that
    side gave no answer.
    """

    call_id: str
    candidate: str
    opponent: str
    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None
    candidate_output: Mapping[str, Any] | None
    opponent_output: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class JudgeFailure:
    """A row left unjudged, and why."""

    call_id: str
    candidate: str
    opponent: str
    shown_first: Order
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(slots=True)
class JudgeTally:
    """What a judging pass did, counted in rows (an item of the bias sample has two)."""

    judged: int = 0
    """Rows stored from a judge call."""
    decided: int = 0
    """Rows stored without a call: same answers, or a missing one."""
    stored_before: int = 0
    """Rows an earlier run had stored (not asked again)."""
    failed: int = 0
    failures: list[JudgeFailure] = field(default_factory=list)
    """The first ``MAX_FAILURES_LISTED`` failures."""
    bias_items: int = 0
    """Items judged in both orders, over all pairs."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Task:
    """One row to make: an item shown in one order."""

    pair: JudgePair
    order: Order

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.pair.candidate, self.pair.opponent, self.pair.call_id, self.order)

    @property
    def item_tag(self) -> str:
        return f"{self.pair.call_id}:{self.order}:{self.pair.opponent}"


@dataclass(frozen=True, slots=True)
class _Row:
    """A verdict to store; ``asked``: it came from a judge call."""

    task: _Task
    verdict: Verdict
    identical: bool
    reasoning: str
    asked: bool

    def values(self, run_id: str, judge_call_id: str | None, moment: datetime) -> dict[str, Any]:
        pair = self.task.pair
        return {
            "run_id": run_id,
            "candidate": pair.candidate,
            "opponent": pair.opponent,
            "call_id": pair.call_id,
            "shown_first": self.task.order,
            "verdict": self.verdict,
            "identical": self.identical,
            "reasoning": self.reasoning,
            "judge_call_id": judge_call_id,
            "created_at": moment,
        }


async def judge_pairs(
    conn: Connection,
    client: openai.AsyncOpenAI,
    *,
    run_id: str,
    judge_model: str,
    pairs: Sequence[JudgePair],
    seed: int,
    bias_size: int,
    concurrency: int = 8,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> JudgeTally:
    """Judge ``pairs`` with ``judge_model`` and store a row per item and order; see the module doc.

    ``seed`` fixes each item's order and the bias sample: per (candidate, opponent), the
    ``bias_size`` items (of those that need a judge) judged in both orders. ``progress(done,
    total)`` is called after each commit, counting the rows this call set out to store. Raises
    ``JudgeError`` (``where`` ``--judge``) when the judge refuses the run as a whole.
    """
    if concurrency < 1:
        raise UsageError(f"must be at least 1, got {concurrency}", "--concurrency")
    tasks, bias_items = _plan(pairs, seed, bias_size)
    stored = _stored_keys(conn, run_id)
    todo = [task for task in tasks if task.key not in stored]
    judging = _Judging(conn, run_id, judge_model, len(todo), now, progress)
    judging.tally.stored_before, judging.tally.bias_items = len(tasks) - len(todo), bias_items
    to_ask = []
    for task in todo:
        decided = verdict_without_judge(task.pair.candidate_output, task.pair.opponent_output)
        if decided is None:
            to_ask.append(task)
        else:
            judging.buffer.append(_Row(task, *decided, asked=False))
    judging.commit()
    await judging.drive(client, to_ask, concurrency)
    return judging.tally


async def judge_run_async(
    conn: Connection,
    client: openai.AsyncOpenAI,
    *,
    run_id: str,
    judge_model: str,
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    seed: int,
    bias_fraction: float = BIAS_SAMPLE_FRACTION,
    opponent: str = REFERENCE,
    concurrency: int = 8,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> JudgeTally:
    """Judge each candidate of run ``run_id`` against ``opponent``, from their stored outputs: the
    reference answers (``REFERENCE``, the default) or another candidate of the run (which is then
    not judged against itself).

    An example a candidate (or the opponent) has no ``eval_outputs`` row for yet is left out (a
    later run judges it); a row with no output (the candidate errored) loses. The bias sample is
    ``bias_fraction`` of the examples, at least 10 (``default_bias_size``); none when it is 0.
    """
    stored = stored_outputs(conn, run_id)
    against_reference = opponent == REFERENCE
    pairs = [
        JudgePair(
            example.call_id,
            candidate.name,
            opponent,
            example.messages,
            example.request.get("tools") or None,
            stored[(candidate.name, example.call_id)],
            example.reference if against_reference else stored[(opponent, example.call_id)],
        )
        for candidate in candidates
        if candidate.name != opponent
        for example in examples
        if (candidate.name, example.call_id) in stored
        and (against_reference or (opponent, example.call_id) in stored)
    ]
    size = default_bias_size(len(examples), bias_fraction) if bias_fraction > 0 else 0
    return await judge_pairs(
        conn, client, run_id=run_id, judge_model=judge_model, pairs=pairs, seed=seed,
        bias_size=size, concurrency=concurrency, now=now, progress=progress,
    )  # fmt: skip


def judgments_of(conn: Connection, run_id: str) -> list[Judgment]:
    """The stored judgments of run ``run_id`` (what ``judge.judge_summaries`` summarizes)."""
    j = eval_judgments.c
    columns = [j.candidate, j.opponent, j.call_id, j.shown_first, j.verdict, j.identical, j.reasoning]
    rows = conn.execute(sa.select(*columns).where(j.run_id == run_id).order_by(j.id)).all()
    return [Judgment(**row._asdict()) for row in rows]


# --- internals -------------------------------------------------------------------------------------


def _plan(pairs: Iterable[JudgePair], seed: int, bias_size: int) -> tuple[list[_Task], int]:
    """Every row to make (the seeded order, and the other one for the bias sample), and how many
    items are in the bias samples."""
    groups: dict[tuple[str, str], dict[str, JudgePair]] = {}
    for pair in pairs:
        groups.setdefault((pair.candidate, pair.opponent), {})[pair.call_id] = pair
    tasks: list[_Task] = []
    bias_items = 0
    for group in groups.values():
        needs_judge = [
            call_id
            for call_id, pair in group.items()
            if verdict_without_judge(pair.candidate_output, pair.opponent_output) is None
        ]
        sample = bias_sample(seed, needs_judge, bias_size)
        bias_items += len(sample)
        for call_id, pair in group.items():
            order = shown_first(seed, call_id, pair.candidate, pair.opponent)
            tasks.append(_Task(pair, order))
            if call_id in sample:
                tasks.append(_Task(pair, "opponent" if order == "candidate" else "candidate"))
    return tasks, bias_items


def _stored_keys(conn: Connection, run_id: str) -> set[tuple[str, str, str, str]]:
    j = eval_judgments.c
    rows = conn.execute(
        sa.select(j.candidate, j.opponent, j.call_id, j.shown_first).where(j.run_id == run_id)
    ).all()
    conn.commit()
    return {(row.candidate, row.opponent, row.call_id, row.shown_first) for row in rows}


class _Judging:
    """One pass's state: the verdicts waiting to be committed, and the tally."""

    def __init__(
        self,
        conn: Connection,
        run_id: str,
        judge_model: str,
        total: int,
        now: datetime | None,
        progress: Progress | None,
    ) -> None:
        self.conn, self.run_id, self.judge_model, self.total = conn, run_id, judge_model, total
        self.now, self.progress = now, progress
        self.tally = JudgeTally()
        self.buffer: list[_Row] = []
        self.last_commit = time.monotonic()

    async def drive(self, client: openai.AsyncOpenAI, tasks: Sequence[_Task], concurrency: int) -> None:
        """Ask for every task, at most ``concurrency`` at a time, committing as verdicts arrive."""
        in_flight: set[asyncio.Task[_Row | None]] = set()
        try:
            for task in tasks:
                while len(in_flight) >= concurrency:
                    in_flight = await self._collect(in_flight)
                in_flight.add(asyncio.create_task(self._ask(client, task)))
            while in_flight:
                in_flight = await self._collect(in_flight)
        finally:
            # Stopped early (JudgeError, Ctrl-C): keep the verdicts that arrived, cancel the rest.
            for running in in_flight:
                if running.done() and not running.cancelled() and running.exception() is None:
                    row = running.result()
                    if row is not None:
                        self.buffer.append(row)
                else:
                    running.cancel()
            self.commit()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _collect(self, in_flight: set[asyncio.Task[_Row | None]]) -> set[asyncio.Task[_Row | None]]:
        done, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        error: BaseException | None = None
        for finished in done:
            if finished.exception() is not None:
                error = error or finished.exception()
            elif (row := finished.result()) is not None:
                self.buffer.append(row)
        if error is not None:
            in_flight.clear()
            in_flight.update(pending)  # what drive's finally cleans up
            raise error
        if len(self.buffer) >= BATCH_SIZE or time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit()
        return pending

    async def _ask(self, client: openai.AsyncOpenAI, task: _Task) -> _Row | None:
        """The judge's verdict on ``task``; ``None`` (failure counted) when there is none to keep."""
        pair = task.pair
        first, second = (pair.candidate_output, pair.opponent_output)
        if task.order == "opponent":
            first, second = second, first
        tags = {EVAL_TAG: self.run_id, TAG_JUDGE: pair.candidate, TAG_JUDGE_ITEM: task.item_tag}
        try:
            completion = await client.chat.completions.create(
                model=self.judge_model,
                messages=cast(Any, judge_messages(pair.messages, pair.tools, first, second)),
                temperature=0,
                response_format={"type": "json_object"},
                extra_headers=sdk.tag_headers(tags),
            )
        except _REFUSED as exc:
            fix = "check the judge model's name" if exc.status_code == 404 else "check the API key"
            raise JudgeError(
                f"the judge {self.judge_model!r} refused: HTTP {exc.status_code}: {exc.message} ({fix})",
                "--judge",
            ) from None
        except openai.APIStatusError as exc:
            return self._failed(task, f"HTTP {exc.status_code}: {exc.message}")
        except openai.APIConnectionError as exc:
            return self._failed(task, f"{type(exc).__name__}: {exc}")
        content = completion.choices[0].message.content if completion.choices else None
        try:
            winner, reasoning = parse_verdict(content)
        except VerdictError as exc:
            return self._failed(task, str(exc))
        return _Row(task, candidate_verdict(task.order, winner), False, reasoning, asked=True)

    def _failed(self, task: _Task, reason: str) -> _Row | None:
        """Count the failure; ``None``, as ``_ask`` returns for a row with no verdict."""
        self.tally.failed += 1
        if len(self.tally.failures) < MAX_FAILURES_LISTED:
            pair = task.pair
            failure = JudgeFailure(pair.call_id, pair.candidate, pair.opponent, task.order, reason)
            self.tally.failures.append(failure)
        return None

    def commit(self) -> None:
        """Store the buffered verdicts (skipping rows stored meanwhile), then report progress."""
        rows, self.buffer = self.buffer, []
        self.last_commit = time.monotonic()
        if rows:
            judge_calls = self._judge_calls([row.task for row in rows if row.asked])
            moment = step_time(self.now)
            values = [row.values(self.run_id, judge_calls.get(row.task.key), moment) for row in rows]
            j = eval_judgments.c
            with write_transaction(self.conn):
                inserted = self.conn.execute(
                    insert_skipping_existing(self.conn, eval_judgments, JUDGMENT_KEY).returning(
                        j.candidate, j.opponent, j.call_id, j.shown_first
                    ),
                    values,
                ).all()
            fresh = {tuple(key) for key in inserted}
            asked = sum(1 for row in rows if row.asked and row.task.key in fresh)
            self.tally.judged += asked
            self.tally.decided += len(fresh) - asked
            self.tally.stored_before += len(rows) - len(fresh)
        if self.progress is not None:
            tally = self.tally
            self.progress(tally.judged + tally.decided + tally.failed, self.total)

    def _judge_calls(self, tasks: list[_Task]) -> dict[tuple[str, str, str, str], str]:
        """Row key -> the answered judge call recorded for it in this run (the newest), after a flush."""
        if not tasks or not sdk.flush(timeout=FLUSH_TIMEOUT_S):
            return {}
        item, judged, run = (call_tags.alias(name) for name in ("item", "judged", "run"))
        wanted = {(task.pair.candidate, task.item_tag): task.key for task in tasks}
        rows = self.conn.execute(
            sa.select(judged.c.value, item.c.value, item.c.call_id)
            .select_from(
                item.join(judged, judged.c.call_id == item.c.call_id)
                .join(run, run.c.call_id == item.c.call_id)
                .join(calls, calls.c.id == item.c.call_id)
            )
            .where(
                item.c.key == TAG_JUDGE_ITEM,
                item.c.value.in_(sorted({task.item_tag for task in tasks})),
                judged.c.key == TAG_JUDGE,
                run.c.key == EVAL_TAG,
                run.c.value == self.run_id,
                calls.c.status_code.between(200, 299),
            )
            .order_by(calls.c.created_at)
        ).all()
        self.conn.commit()
        found: dict[tuple[str, str, str, str], str] = {}
        for candidate, item_tag, call_id in rows:  # newest last: a re-asked row keeps its newest call
            key = wanted.get((candidate, item_tag))
            if key is not None:
                found[key] = call_id
        return found
