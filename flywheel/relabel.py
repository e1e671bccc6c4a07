"""``flywheel relabel``: ask a stronger (teacher) model to answer each entry's input again.

Each entry's recorded request (messages, tools, sampling settings) is sent to the teacher through
``sdk.AsyncOpenAI``, so every teacher call is itself recorded in ``calls`` and tagged
(``flywheel_relabel=<dataset>``, ``flywheel_version=<version>``, ``flywheel_entry=<entry id>``,
``flywheel_run=<run id>``), so a version's cost is a query away. The teacher's assistant message,
in the fine-tuning shape (``finetune_format.output_message``), becomes an ``entry_outputs`` row:
``source='relabel'``, ``model=<teacher>``, ``call_id`` the recorded call.

Versions and resuming:
- A run makes one dataset version (action ``relabel``). It is recorded when the run starts, with
  ``details.finished = false``, so the outputs written as they arrive belong to it; the run's end
  sets the counts and ``finished = true``. While a run goes on, its version is the newest and grows.
- An entry is to do when it has no output from this teacher yet (in any version) and no human
  edit (``source='human'``: a person outranks any teacher). Entries relabeled by another teacher
  are relabeled again; the newer output is the one ``export`` uses.
- A run that stops early (crash, Ctrl-C, a run-level error) leaves its version unfinished. The
  next run with the same teacher, while that version is still the dataset's newest, continues it;
  otherwise it makes a new version. Either way it only asks for the entries still to do.
- A run that finishes closes its version even if some entries failed; running again retries them in
  a new version. A version that ends up with no output is removed again (when still the newest and
  not exported): a step that changes nothing makes no version.

Invariants:
- An entry never gets two outputs from the same teacher: the insert skips entries that already
  have one, inside a write transaction that holds the dataset's row lock (PostgreSQL) or the write
  lock (SQLite), so even two runs at once cannot write twice (they only pay twice).
- Answers are committed in small batches (``batch_size``) as they arrive. A hard crash loses at
  most one batch of answers plus the requests in flight (they are asked again); Ctrl-C
  (``CancelledError``/``KeyboardInterrupt``) commits what has arrived before it propagates.
- Memory is bounded: entries are read in pages by id (no long-lived cursor), at most
  ``concurrency`` requests are in flight, and only the first ``MAX_FAILURES_LISTED`` failures are
  kept in the result (all are counted).

Retries are ``openai``'s own (``max_retries``): exponential backoff with jitter on connection
errors, timeouts, 408/409/429 and 5xx, honouring ``Retry-After``/``retry-after-ms``. Each attempt is
its own recorded call. An entry whose retries run out, or whose answer cannot be used (cut off,
filtered, not convertible), is reported as failed and the run goes on; 401/403/404 from the
teacher would fail every entry alike, so they stop the run with a ``RelabelError``.

The teacher call's id is found after ``sdk.flush()``: the one answered (2xx) call tagged with the
entry and this run's id. ``entry_outputs.call_id`` is NULL when the call was not recorded in this
store (recording disabled, another ``database_url``, store unreachable, flush timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import openai
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import sdk
from sdk.schema import call_tags, calls, dataset_entries, dataset_versions, datasets, entry_outputs, exports

from .datasets import TEACHER_TAG, entries_at, record_version, require_dataset, step_time, write_transaction
from .errors import FlywheelError, UsageError
from .finetune_format import UnconvertibleCallError, output_message
from .query import connect

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "TAG_DATASET",
    "TAG_ENTRY",
    "TAG_RUN",
    "TAG_VERSION",
    "RelabelError",
    "RelabelFailure",
    "RelabelProgress",
    "RelabelResult",
    "recording_client",
    "relabel_dataset",
    "relabel_dataset_async",
    "teacher_output",
    "teacher_request",
]

DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_BATCH_SIZE = 32
"""Answers per commit (also committed at least every ``COMMIT_INTERVAL_S``)."""
COMMIT_INTERVAL_S = 2.0
PAGE_ROWS = 256
"""Entries read from the store at a time."""
FLUSH_TIMEOUT_S = 10.0
MAX_FAILURES_LISTED = 100

TAG_DATASET = TEACHER_TAG
TAG_ENTRY = "flywheel_entry"
TAG_RUN = "flywheel_run"
TAG_VERSION = "flywheel_version"

NOT_SENT = frozenset(
    {"model", "stream", "stream_options", "n", "store", "metadata", "logprobs", "top_logprobs"}
)
"""Request fields not passed on to the teacher: the model is the teacher's, one non-streamed choice
is asked for, and nothing is stored at the provider on the app's behalf."""
UNUSABLE_FINISH = {"length": "cut off (finish_reason 'length')", "content_filter": "filtered by the provider"}
ClientFactory = Callable[[], openai.AsyncOpenAI]


class RelabelError(FlywheelError):
    """The teacher refused the run as a whole (bad key, no such model); nothing more was asked."""


@dataclass(frozen=True, slots=True)
class RelabelFailure:
    """An entry the teacher did not relabel, and why."""

    entry_id: int
    call_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "call_id": self.call_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RelabelProgress:
    """Passed to ``progress`` after each commit: counts so far in this run."""

    relabeled: int
    failed: int
    total: int
    """Entries this run set out to do."""


@dataclass(slots=True)
class RelabelResult:
    """What a run did. ``version`` is the dataset version its outputs belong to (``None``: none made)."""

    dataset: str
    model: str
    version: int | None
    relabeled: int = 0
    """Entries relabeled by this run."""
    skipped: int = 0
    """Entries that already had an output from this teacher."""
    kept_human: int = 0
    """Entries left alone because a person edited their output."""
    failed: int = 0
    failures: list[RelabelFailure] = field(default_factory=list)
    """The first ``MAX_FAILURES_LISTED`` failures."""
    resumed: bool = False
    """The run continued the unfinished version of an interrupted run."""
    teacher_calls: int = 0
    """Calls this run recorded for the teacher (each retry attempt is one)."""
    cost_usd: float | None = None
    """Their cost, where the price table knows the model."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "version": self.version,
            "relabeled": self.relabeled,
            "skipped": self.skipped,
            "kept_human": self.kept_human,
            "failed": self.failed,
            "failures": [failure.as_dict() for failure in self.failures],
            "resumed": self.resumed,
            "teacher_calls": self.teacher_calls,
            "cost_usd": self.cost_usd,
        }


# --- pure: what is sent, what is kept ---------------------------------------------------------------


def teacher_request(
    request: Mapping[str, Any], model: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The body to send the teacher for a recorded chat ``request``.

    Everything the app sent is kept (messages, tools, ``tool_choice``, ``response_format``, sampling
    settings) except ``NOT_SENT``; ``params`` then sets fields (a ``None`` value removes one).
    Raises ``UnconvertibleCallError`` when the request has no messages.
    """
    messages = request.get("messages") if isinstance(request, Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise UnconvertibleCallError("the recorded request has no messages", "request.messages")
    body = {key: value for key, value in request.items() if key not in NOT_SENT}
    for key, value in (params or {}).items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    body["model"] = model
    return body


def teacher_output(response: Mapping[str, Any]) -> dict[str, Any]:
    """The assistant message to store from the teacher's ``chat.completion``, fine-tuning shaped.

    Raises ``UnconvertibleCallError`` for an answer that is no training target: cut off, filtered,
    or not expressible in the fine-tuning format.
    """
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    finish = first.get("finish_reason") if isinstance(first, Mapping) else None
    if isinstance(finish, str) and finish in UNUSABLE_FINISH:
        raise UnconvertibleCallError(f"the teacher's answer was {UNUSABLE_FINISH[finish]}", "response")
    return output_message(response)


# --- the library functions the CLI calls ---------------------------------------------------------


def relabel_dataset(
    database_url: str,
    name: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout: float = DEFAULT_TIMEOUT_S,
    limit: int | None = None,
    temperature: float | None = None,
    params: Mapping[str, Any] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    client_factory: ClientFactory | None = None,
    progress: Callable[[RelabelProgress], None] | None = None,
    now: datetime | None = None,
) -> RelabelResult:
    """Relabel dataset ``name`` with teacher ``model``; see ``relabel_dataset_async`` (this runs it
    in a new event loop, so it cannot be called from inside a running one)."""
    return asyncio.run(
        relabel_dataset_async(
            database_url,
            name,
            model=model,
            base_url=base_url,
            api_key=api_key,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            limit=limit,
            temperature=temperature,
            params=params,
            extra_headers=extra_headers,
            batch_size=batch_size,
            client_factory=client_factory,
            progress=progress,
            now=now,
        )
    )


async def relabel_dataset_async(
    database_url: str,
    name: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout: float = DEFAULT_TIMEOUT_S,
    limit: int | None = None,
    temperature: float | None = None,
    params: Mapping[str, Any] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    client_factory: ClientFactory | None = None,
    progress: Callable[[RelabelProgress], None] | None = None,
    now: datetime | None = None,
) -> RelabelResult:
    """Relabel the entries of dataset ``name`` (newest version) that teacher ``model`` has not done.

    ``base_url``/``api_key``: the OpenAI-compatible API (default: ``OPENAI_BASE_URL``/``OPENAI_API_KEY``).
    ``concurrency`` bounds the requests in flight; ``max_retries`` and ``timeout`` (seconds per
    attempt) are the openai client's. ``limit``: at most this many entries in this run.
    ``temperature`` and ``params`` (request fields to set; ``None`` removes one) change what is sent.
    ``extra_headers`` go with every request. ``client_factory`` makes the client instead (Azure,
    tests); a plain ``openai`` client is wrapped to record into ``database_url``, and the run closes
    it at the end. ``progress`` is called after each commit. ``now`` dates the rows written.
    """
    if not model:
        raise UsageError("a teacher model is required", "--model")
    bounds = [
        (concurrency, "--concurrency", 1),
        (batch_size, "--batch-size", 1),
        (max_retries, "--max-retries", 0),
    ]
    for value, option, least in [*bounds, *([(limit, "--limit", 1)] if limit is not None else [])]:
        if value < least:
            raise UsageError(f"must be at least {least}, got {value}", option)
    sent = {**(params or {}), **({"temperature": temperature} if temperature is not None else {})}
    with connect(database_url) as conn:
        run = _Run(conn, name, model, sent, dict(extra_headers or {}), batch_size, progress, now)
        client = recording_client(database_url, client_factory, base_url, api_key)
        try:
            run.open(limit)
            if run.result.version is not None:
                finished = False
                try:
                    await run.drive(
                        client.with_options(max_retries=max_retries, timeout=timeout), concurrency
                    )
                    finished = True
                finally:
                    if finished:
                        run.close(finished=True)
                    else:  # the first error is the one to see; closing is best effort here
                        with contextlib.suppress(Exception):
                            run.close(finished=False)
        finally:
            await client.close()
    return run.result


# --- internals -------------------------------------------------------------------------------------


def recording_client(
    database_url: str,
    factory: ClientFactory | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    key_env: str = "OPENAI_API_KEY",
) -> openai.AsyncOpenAI:
    """The async client the flywheel's own calls go through (teacher, eval candidates, judge),
    recording into ``database_url``: ``factory()``'s client (wrapped if it is a plain ``openai``
    one), else an ``sdk.AsyncOpenAI``. A missing key is a ``UsageError`` naming ``key_env``."""
    if factory is not None:
        client = factory()
        if not getattr(type(client), "_flywheel_recording", False):
            sdk.wrap(client, database_url=database_url)
        return client
    try:
        return sdk.AsyncOpenAI(api_key=api_key, base_url=base_url, database_url=database_url)
    except openai.OpenAIError as exc:
        raise UsageError(str(exc), key_env) from None


@dataclass(frozen=True, slots=True)
class _Entry:
    id: int
    call_id: str
    request: str


@dataclass(frozen=True, slots=True)
class _Answer:
    entry: _Entry
    output: dict[str, Any]


class _Run:
    """One run's state: its dataset version, the answers waiting to be committed, the counts."""

    def __init__(
        self,
        conn: Connection,
        name: str,
        model: str,
        params: dict[str, Any],
        headers: dict[str, str],
        batch_size: int,
        progress: Callable[[RelabelProgress], None] | None,
        now: datetime | None,
    ) -> None:
        self.conn, self.name, self.model, self.params = conn, name, model, params
        self.headers, self.batch_size, self.progress, self.now = headers, batch_size, progress, now
        self.run_id = uuid.uuid4().hex
        self.result = RelabelResult(name, model, None)
        self.dataset_id = 0
        self.total = 0
        self.buffer: list[_Answer] = []
        self.last_commit = time.monotonic()

    # -- start and end ---------------------------------------------------------------------------

    def open(self, limit: int | None) -> None:
        """Count what there is to do; record the run's version, or continue an unfinished one."""
        conn, result = self.conn, self.result
        with write_transaction(conn):
            self.dataset_id = require_dataset(conn, self.name).id
            current = self._lock()
            details = self._details(current)
            resumed = details.get("model") == self.model and details.get("finished") is False
            done, human, todo = self._counts(current)
            result.skipped, result.kept_human = done, human
            self.total = todo if limit is None else min(limit, todo)
            if resumed:
                details["runs"] = int(details.get("runs", 1)) + 1
                self._set_details(current, details)
            elif self.total:
                started = {"model": self.model, "params": self.params, "finished": False, "runs": 1}
                record_version(conn, self.dataset_id, current + 1, "relabel", started, self._moment())
            else:
                return  # nothing to do: no version
            result.version = current if resumed else current + 1
            result.resumed = resumed

    def close(self, *, finished: bool) -> None:
        """Write the version's counts (``finished`` or not), or remove it if it holds no output."""
        version, conn = self.result.version, self.conn
        assert version is not None
        self._spent()
        with write_transaction(conn):
            newest = self._lock()
            o, e = entry_outputs.c, dataset_entries.c
            outputs = conn.execute(
                sa.select(sa.func.count())
                .select_from(entry_outputs.join(dataset_entries, e.id == o.entry_id))
                .where(e.dataset_id == self.dataset_id, o.version == version, o.source == "relabel")
            ).scalar_one()
            exported = conn.execute(
                sa.select(sa.func.count()).where(
                    exports.c.dataset_id == self.dataset_id, exports.c.version == version
                )
            ).scalar_one()
            if not outputs and newest == version and not exported:
                v = dataset_versions.c
                conn.execute(
                    sa.delete(dataset_versions).where(v.dataset_id == self.dataset_id, v.version == version)
                )
                conn.execute(
                    sa.update(datasets).where(datasets.c.id == self.dataset_id).values(version=version - 1)
                )
                self.result.version = None
                return
            details = self._details(version)
            details.update(finished=finished, relabeled=outputs, failed=self.result.failed)
            self._set_details(version, details)

    # -- the requests ----------------------------------------------------------------------------

    async def drive(self, client: openai.AsyncOpenAI, concurrency: int) -> None:
        """Ask for every entry still to do, at most ``concurrency`` at a time, committing as they come."""
        in_flight: set[asyncio.Task[_Answer | None]] = set()
        try:
            for entry in self._pending():
                while len(in_flight) >= concurrency:
                    in_flight = await self._collect(in_flight)
                in_flight.add(asyncio.create_task(self._ask(client, entry)))
            while in_flight:
                in_flight = await self._collect(in_flight)
            self._commit()
        finally:
            # Interrupted: keep the answers that arrived, then let the cancelled requests unwind.
            for task in in_flight:
                if task.done() and not task.cancelled() and task.exception() is None:
                    answer = task.result()
                    if answer is not None:
                        self.buffer.append(answer)
                else:
                    task.cancel()
            self._commit(report=False)
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _collect(
        self, in_flight: set[asyncio.Task[_Answer | None]]
    ) -> set[asyncio.Task[_Answer | None]]:
        done, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        error: BaseException | None = None
        for task in done:
            if task.exception() is not None:
                error = error or task.exception()
                continue
            answer = task.result()
            if answer is not None:
                self.buffer.append(answer)
        if error is not None:
            in_flight.clear()
            in_flight.update(pending)  # what the caller's finally cleans up
            raise error
        if len(self.buffer) >= self.batch_size or time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self._commit()
        return pending

    async def _ask(self, client: openai.AsyncOpenAI, entry: _Entry) -> _Answer | None:
        """The teacher's answer for ``entry``; ``None`` (failure recorded) if there is none to keep."""
        try:
            body = teacher_request(orjson.loads(entry.request), self.model, self.params)
        except (orjson.JSONDecodeError, UnconvertibleCallError) as exc:
            self._failed(entry, str(exc))
            return None
        messages = body.pop("messages")
        del body["model"]
        tags = {
            TAG_DATASET: self.name,
            TAG_VERSION: self.result.version,
            TAG_ENTRY: entry.id,
            TAG_RUN: self.run_id,
        }
        headers = {**self.headers, **sdk.tag_headers(tags)}
        try:
            completion = await client.chat.completions.create(
                model=self.model, messages=cast(Any, messages), extra_body=body or None, extra_headers=headers
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            where = "--model" if exc.status_code == 404 else "--api-key / OPENAI_API_KEY"
            raise RelabelError(f"the teacher refused: HTTP {exc.status_code}: {exc.message}", where) from None
        except openai.APIStatusError as exc:
            self._failed(entry, f"HTTP {exc.status_code}: {exc.message}")
            return None
        except openai.APIConnectionError as exc:
            self._failed(entry, f"{type(exc).__name__}: {exc}")
            return None
        try:
            return _Answer(entry, teacher_output(completion.to_dict()))
        except UnconvertibleCallError as exc:
            self._failed(entry, str(exc))
            return None

    def _failed(self, entry: _Entry, reason: str) -> None:
        self.result.failed += 1
        if len(self.result.failures) < MAX_FAILURES_LISTED:
            self.result.failures.append(RelabelFailure(entry.id, entry.call_id, reason))

    # -- the store -------------------------------------------------------------------------------

    def _pending(self) -> Iterator[_Entry]:
        """The entries to do, by id, a page at a time (no transaction stays open between pages)."""
        e, c = dataset_entries.c, calls.c
        version = self.result.version
        assert version is not None
        after, left = 0, self.total
        while left > 0:
            rows = self.conn.execute(
                sa.select(e.id, e.call_id, c.request)
                .select_from(dataset_entries.join(calls, c.id == e.call_id))
                .where(entries_at(self.dataset_id, version), e.id > after, *self._todo(version))
                .order_by(e.id)
                .limit(min(PAGE_ROWS, left))
            ).all()
            self.conn.commit()
            if not rows:
                return
            for row in rows:
                yield _Entry(row.id, row.call_id, row.request)
            after, left = rows[-1].id, left - len(rows)

    def _commit(self, *, report: bool = True) -> None:
        """Store the buffered answers (skipping entries this teacher has done meanwhile)."""
        answers, self.buffer = self.buffer, []
        self.last_commit = time.monotonic()
        if answers:
            teacher_calls = self._teacher_calls([answer.entry.id for answer in answers])
            moment = self._moment()
            with write_transaction(self.conn):
                self._lock()
                o = entry_outputs.c
                ids = [answer.entry.id for answer in answers]
                done = set(
                    self.conn.execute(
                        sa.select(o.entry_id).where(
                            o.entry_id.in_(ids), o.source == "relabel", o.model == self.model
                        )
                    ).scalars()
                )
                rows = [
                    {
                        "entry_id": answer.entry.id,
                        "version": self.result.version,
                        "source": "relabel",
                        "model": self.model,
                        "call_id": teacher_calls.get(answer.entry.id),
                        "output": orjson.dumps(answer.output).decode(),
                        "created_at": moment,
                    }
                    for answer in answers
                    if answer.entry.id not in done
                ]
                if rows:
                    self.conn.execute(sa.insert(entry_outputs), rows)
            self.result.relabeled += len(rows)
            self.result.skipped += len(answers) - len(rows)
        if report and self.progress is not None:
            self.progress(RelabelProgress(self.result.relabeled, self.result.failed, self.total))

    def _teacher_calls(self, entry_ids: list[int]) -> dict[int, str]:
        """entry id -> the answered teacher call recorded for it in this run (after a flush)."""
        if not sdk.flush(timeout=FLUSH_TIMEOUT_S):
            return {}
        entry_tag, run_tag = call_tags.alias("entry_tag"), call_tags.alias("run_tag")
        rows = self.conn.execute(
            sa.select(entry_tag.c.value, entry_tag.c.call_id)
            .select_from(
                entry_tag.join(run_tag, run_tag.c.call_id == entry_tag.c.call_id).join(
                    calls, calls.c.id == entry_tag.c.call_id
                )
            )
            .where(
                entry_tag.c.key == TAG_ENTRY,
                entry_tag.c.value.in_([str(entry_id) for entry_id in entry_ids]),
                run_tag.c.key == TAG_RUN,
                run_tag.c.value == self.run_id,
                calls.c.status_code.between(200, 299),
            )
        ).all()
        self.conn.commit()
        return {int(value): call_id for value, call_id in rows}

    def _spent(self) -> None:
        """Count this run's recorded teacher calls and their cost (after a flush)."""
        if not sdk.flush(timeout=FLUSH_TIMEOUT_S):
            return
        run_tag = call_tags.c
        count, cost = self.conn.execute(
            sa.select(sa.func.count(), sa.func.sum(calls.c.cost_usd))
            .select_from(calls.join(call_tags, run_tag.call_id == calls.c.id))
            .where(run_tag.key == TAG_RUN, run_tag.value == self.run_id)
        ).one()
        self.conn.commit()
        self.result.teacher_calls, self.result.cost_usd = int(count), cost

    def _todo(self, version: int) -> list[sa.ColumnElement[bool]]:
        """Conditions on ``dataset_entries``: no output from this teacher, no human edit."""
        o, e = entry_outputs.c, dataset_entries.c
        return [
            ~self._relabeled(),
            ~sa.exists().where(o.entry_id == e.id, o.source == "human", o.version <= version),
        ]

    def _relabeled(self) -> sa.Exists:
        o, e = entry_outputs.c, dataset_entries.c
        return sa.exists().where(o.entry_id == e.id, o.source == "relabel", o.model == self.model)

    def _counts(self, version: int) -> tuple[int, int, int]:
        """(done by this teacher, kept for a human edit, to do) among the entries at ``version``."""
        relabeled, todo = self._relabeled(), sa.and_(*self._todo(version))
        row = self.conn.execute(
            sa.select(
                sa.func.count().filter(relabeled),
                sa.func.count().filter(sa.and_(~relabeled, ~todo)),
                sa.func.count().filter(todo),
            ).where(entries_at(self.dataset_id, version))
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    def _lock(self) -> int:
        """Lock the dataset's row until the transaction ends (PostgreSQL); its newest version."""
        version: int = self.conn.execute(
            sa.select(datasets.c.version).where(datasets.c.id == self.dataset_id).with_for_update()
        ).scalar_one()
        return version

    def _details(self, version: int) -> dict[str, Any]:
        v = dataset_versions.c
        details = self.conn.execute(
            sa.select(v.action, v.details).where(v.dataset_id == self.dataset_id, v.version == version)
        ).one_or_none()
        if details is None or details.action != "relabel":
            return {}
        loaded = orjson.loads(details.details)
        return loaded if isinstance(loaded, dict) else {}

    def _set_details(self, version: int, details: Mapping[str, Any]) -> None:
        v = dataset_versions.c
        self.conn.execute(
            sa.update(dataset_versions)
            .where(v.dataset_id == self.dataset_id, v.version == version)
            .values(details=orjson.dumps(details).decode())
        )

    def _moment(self) -> datetime:
        return step_time(self.now)
