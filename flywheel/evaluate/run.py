"""``flywheel eval NAME --models A,B``: every candidate answers every example of the test split.

A run is a row of ``eval_runs`` (its id is the tag ``flywheel_eval=<run id>`` on every call it
makes, through ``sdk.AsyncOpenAI``, so the calls are recorded like the app's and never become
training data: ``flywheel.datasets`` leaves tagged calls out). Each answer is an ``eval_outputs``
row, committed in small batches as answers arrive.

Resuming: a run is finished when every candidate has a row for every example (and the judge, if
any, has judged). Started again with the same pipeline, export, candidates and judge, the newest
unfinished run is continued (``run_id`` names one explicitly): the examples that have a row are not
asked again, so a run killed at any moment (SIGKILL included) repeats no finished item; it repeats
at most the answers in flight and the batch not yet committed. The unique index on
``(run_id, candidate, call_id)`` makes that hold even for two processes continuing one run.

Failures: 401/403/404 stop the run with an ``EvalError`` naming the model (every example would fail
alike). A request the API rejects for that example (another 4xx) is stored as the example's
``error`` and scores as a wrong answer: the model cannot answer it. Timeouts, connection errors
and 429/5xx after ``openai``'s own retries are not stored: the example is asked again next time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import openai
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import eval_runs, fine_tune_jobs

from ..datasets import step_time, write_transaction
from ..errors import UsageError
from ..query import connect
from ..relabel import recording_client
from ..train.config import Pipeline
from .asking import TAG_CANDIDATE, TAG_EXAMPLE, Asker, EvalError, EvalProgress, EvalResult, link_calls
from .candidates import REFERENCE, Candidate, candidates_for
from .examples import ExportedSplit, examples_of, export_by_id, newest_export
from .fewshot import Selection, ShotPicker
from .judge import judge_run_async

__all__ = [
    "TAG_CANDIDATE",
    "TAG_EXAMPLE",
    "EvalError",
    "EvalProgress",
    "EvalResult",
    "run_eval",
    "run_eval_async",
]

FEW_SHOT_POOL = 2000
"""Training examples considered for few-shot picks (a deterministic sample of a bigger train side)."""
ClientFactory = Callable[[], openai.AsyncOpenAI]


def run_eval(database_url: str, pipeline: Pipeline, models: Sequence[str], **options: Any) -> EvalResult:
    """``run_eval_async`` in a new event loop (not callable from inside a running one)."""
    return asyncio.run(run_eval_async(database_url, pipeline, models, **options))


async def run_eval_async(
    database_url: str,
    pipeline: Pipeline,
    models: Sequence[str],
    *,
    judge: str | None = None,
    judge_against: str | None = None,
    few_shot: int | None = None,
    few_shot_select: Selection | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    run_id: str | None = None,
    client_factory: ClientFactory | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
    now: datetime | None = None,
) -> EvalResult:
    """Run (or continue) an evaluation of ``models`` on ``pipeline``'s test split.

    Options not given come from ``[pipelines.NAME.eval]``. ``base_url``/``api_key``: the
    OpenAI-compatible API the candidates and the judge answer on (default: the eval table's
    ``base_url`` and ``api_key_env``, else ``OPENAI_BASE_URL``/``OPENAI_API_KEY``).
    ``client_factory`` makes the client instead (Azure, tests); a plain ``openai`` client is
    wrapped to record into ``database_url``. ``run_id`` continues that run. ``judge_against``: what
    the judge compares each candidate with, ``"reference"`` (the default) or another candidate.
    """
    settings = pipeline.eval
    k = settings.few_shot if few_shot is None else few_shot
    if k < 0:
        raise UsageError(f"must be at least 0, got {k}", "--few-shot")
    width = settings.concurrency if concurrency is None else concurrency
    if width < 1:
        raise UsageError(f"must be at least 1, got {width}", "--concurrency")
    judge = settings.judge if judge is None else (judge or None)
    selection: Selection = few_shot_select or settings.few_shot_select
    with connect(database_url) as conn:
        candidates = candidates_for(models, k, _fine_tuned_models(conn, pipeline.name))
        opponent = judge_against or settings.judge_against
        if opponent != REFERENCE and opponent not in {candidate.name for candidate in candidates}:
            raise UsageError(
                f"{opponent!r} is not among the candidates: {', '.join(models)}", "--judge-against"
            )
        plan = {"few_shot_select": selection, "judge_against": opponent}
        run = _open_run(conn, pipeline, candidates, judge, plan, seed, run_id, step_time(now))
        split = export_by_id(conn, run.export_id)
        examples = list(examples_of(conn, split))
        conn.commit()
        result = EvalResult(
            run.id, pipeline.name, split.dataset_version, len(examples), [c.name for c in run.candidates]
        )
        result.resumed = run.resumed
        picker = _shot_picker(conn, split, run, selection)
        key = api_key or os.environ.get(settings.api_key_env)
        url = base_url or settings.base_url
        client = recording_client(database_url, client_factory, url, key, key_env=settings.api_key_env)
        try:
            client = client.with_options(max_retries=settings.max_retries, timeout=settings.timeout)
            asker = Asker(conn, run.id, run.candidates, result, picker, progress, now)
            await asker.drive(client, examples, width)
            link_calls(conn, run.id)
            if run.judge is not None:
                tally = await judge_run_async(
                    conn, client, run_id=run.id, judge_model=run.judge, examples=examples,
                    candidates=run.candidates, seed=run.seed, bias_fraction=settings.bias_sample,
                    opponent=run.opponent, concurrency=width, now=now,
                )  # fmt: skip
                result.judged = tally.as_dict()
            result.finished = result.failed == 0 and (result.judged is None or not result.judged["failed"])
            _close_run(conn, run.id, result.finished, step_time(now))
        finally:
            await client.close()
    return result


# --- the run row ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RunRow:
    id: str
    export_id: int
    candidates: list[Candidate]
    seed: int
    judge: str | None
    opponent: str
    """What the judge compares each candidate with: ``reference`` or another candidate."""
    resumed: bool


def _open_run(
    conn: Connection,
    pipeline: Pipeline,
    candidates: list[Candidate],
    judge: str | None,
    plan: dict[str, Any],
    seed: int | None,
    run_id: str | None,
    moment: datetime,
) -> _RunRow:
    """The run to continue (``run_id``, or the newest unfinished one with the same plan), else a new one."""
    r = eval_runs.c
    spec = [candidate.as_dict() for candidate in candidates]
    if run_id is not None:
        row = conn.execute(sa.select(eval_runs).where(r.id == run_id)).one_or_none()
        if row is None or row.pipeline != pipeline.name:
            raise UsageError(f"no eval run {run_id!r} for pipeline {pipeline.name!r}", "--run")
        stored = [Candidate.from_dict(item) for item in orjson.loads(row.candidates)]
        opponent = orjson.loads(row.settings).get("judge_against", REFERENCE)
        return _RunRow(row.id, row.export_id, stored, row.seed, row.judge, opponent, True)
    split = newest_export(conn, pipeline.dataset, pipeline=pipeline.name)
    for row in conn.execute(
        sa.select(eval_runs)
        .where(r.pipeline == pipeline.name, r.export_id == split.export_id, r.status != "finished")
        .order_by(r.created_at.desc())
    ):
        same = orjson.loads(row.candidates) == spec and row.judge == judge and seed in (None, row.seed)
        settings = orjson.loads(row.settings)
        if same and all(settings.get(key) == value for key, value in plan.items()):
            return _RunRow(row.id, row.export_id, candidates, row.seed, judge, plan["judge_against"], True)
    new_id = uuid.uuid4().hex
    chosen = secrets.randbelow(2**31) if seed is None else seed
    with write_transaction(conn):
        conn.execute(
            sa.insert(eval_runs).values(
                id=new_id, pipeline=pipeline.name, dataset_id=split.dataset_id,
                dataset_version=split.dataset_version, export_id=split.export_id, status="running",
                candidates=orjson.dumps(spec).decode(), judge=judge, seed=chosen,
                settings=orjson.dumps({**plan, "scorers": list(pipeline.eval.scorers)}).decode(),
                examples=len(split.test), created_at=moment, updated_at=moment,
            )
        )  # fmt: skip
    return _RunRow(new_id, split.export_id, candidates, chosen, judge, plan["judge_against"], False)


def _close_run(conn: Connection, run_id: str, finished: bool, moment: datetime) -> None:
    values: dict[str, Any] = {"updated_at": moment}
    if finished:
        values.update(status="finished", finished_at=moment, error=None)
    with write_transaction(conn):
        conn.execute(sa.update(eval_runs).where(eval_runs.c.id == run_id).values(**values))


def mark_failed(database_url: str, run_id: str, error: str) -> None:
    """Record why a run stopped (it stays resumable)."""
    with connect(database_url) as conn, write_transaction(conn):
        conn.execute(
            sa.update(eval_runs)
            .where(eval_runs.c.id == run_id, eval_runs.c.status != "finished")
            .values(status="failed", error=error, updated_at=step_time())
        )


def _fine_tuned_models(conn: Connection, pipeline: str) -> list[str]:
    j = fine_tune_jobs.c
    rows = conn.execute(
        sa.select(j.fine_tuned_model).where(j.pipeline == pipeline, j.fine_tuned_model.is_not(None))
    ).scalars()
    return [str(model) for model in rows]


def _shot_picker(conn: Connection, split: ExportedSplit, run: _RunRow, selection: Selection) -> ShotPicker:
    k = max((candidate.few_shot for candidate in run.candidates), default=0)
    if k <= 0:
        return ShotPicker([], 0, selection, run.seed)
    train = split.train
    if len(train) > FEW_SHOT_POOL:  # a deterministic sample: the same pool when the run resumes
        step = len(train) / FEW_SHOT_POOL
        train = tuple(train[int(i * step)] for i in range(FEW_SHOT_POOL))
    pool = list(examples_of(conn, split, train))
    conn.commit()
    return ShotPicker(pool, k, selection, run.seed)
